"""Errors that mean "the user asked for something wrong": shown as one line, exit code 2."""


class UserError(Exception):
    """Bad input (configuration, data, file, argument): the message says what and how to fix it."""


class NaNLossError(RuntimeError):
    """Training produced a non-finite loss; the message names the batch's files."""
