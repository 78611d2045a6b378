"""Errors that mean "the user asked for something wrong": shown as one line, exit code 2."""

import sys
from typing import Any, NoReturn


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


def run_cli(app: Any, name: str) -> NoReturn:
    """Run a Typer ``app`` as a console script, a usage mistake (unknown option, bad value, missing
    argument) as one ``error:`` line naming the help to read, exit status 2, where Typer draws a box."""
    try:
        result = app(standalone_mode=False, prog_name=name)
    except Exception as error:  # Typer vendors click: its exceptions are known by what they carry
        if type(error).__name__ == "Abort":  # end of input at a prompt
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
            raise
        context = getattr(error, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        message = " ".join(str(error.format_message()).split())
        print(f"error: {message}{hint}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(result if isinstance(result, int) else 0)  # an exit code (typer.Exit, --help), or a command's None
