"""Errors that mean "the user asked for something wrong": the CLI shows one line and exits 2."""

import sys
from typing import Any, NoReturn


class UserError(Exception):
    """Bad input (spec, ID, GPU list, file, database URL): the message says what is wrong."""


class Interrupted(Exception):
    """Ctrl-C: the message says what was (not) done; the CLI shows one line and exits 130."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, for one-line reports (a database driver's own error
    when SQLAlchemy wraps one; MLflow's ``message``); the error's type when it has no message."""
    message = str(getattr(error, "orig", None) or getattr(error, "message", None) or error).strip()
    return (message.splitlines()[0] if message else type(error).__name__)[:limit]


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
