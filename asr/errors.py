"""Errors that mean "the user asked for something wrong": shown as one line, exit code 2."""


class UserError(Exception):
    """Bad input (configuration, data, file, argument): the message says what and how to fix it."""


class NaNLossError(RuntimeError):
    """Training produced a non-finite loss; the message names the batch's files."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message (its type's name when it has none), at most ``limit`` characters:
    what a one-line ``UserError`` quotes of a library's multi-line message."""
    message = str(error).strip()
    line = message.splitlines()[0] if message else type(error).__name__
    return line if limit is None else line[:limit]
