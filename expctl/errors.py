"""Errors that mean "the user asked for something wrong": the CLI shows one line and exits 2."""


class UserError(Exception):
    """Bad input (spec, ID, GPU list, file, database URL): the message says what is wrong."""


class Interrupted(Exception):
    """Ctrl-C: the message says what was (not) done; the CLI shows one line and exits 130."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, for one-line reports (a database driver's own error
    when SQLAlchemy wraps one; MLflow's ``message``); the error's type when it has no message."""
    message = str(getattr(error, "orig", None) or getattr(error, "message", None) or error).strip()
    return (message.splitlines()[0] if message else type(error).__name__)[:limit]
