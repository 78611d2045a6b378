"""Errors that mean "the user asked for something wrong": the CLI shows one line and exits 2."""


class UserError(Exception):
    """Bad input (spec, ID, GPU list, file, database URL): the message says what is wrong."""


class Interrupted(Exception):
    """Ctrl-C: the message says what was (not) done; the CLI shows one line and exits 130."""
