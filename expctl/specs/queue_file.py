"""Queue files: one experiment per line, ``base.yaml|k=v|k2="v 2"``.

``#`` starts a comment line; blank lines are ignored; ``|`` inside quotes belongs to the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expctl.errors import UserError


@dataclass(frozen=True)
class QueueLine:
    """One experiment line: where it was, its base config and overrides."""

    number: int
    base: str
    overrides: tuple[str, ...]


def split_line(line: str) -> list[str]:
    """Split on ``|`` outside single or double quotes; a dangling quote is an error."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for character in line:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\" and quote:
            current.append(character)
            escaped = True
        elif quote:
            current.append(character)
            if character == quote:
                quote = ""
        elif character in "\"'":
            current.append(character)
            quote = character
        elif character == "|":
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(character)
    if quote:
        raise ValueError(f"unclosed {quote} quote")
    parts.append("".join(current).strip())
    return parts


def parse_text(text: str, source: str = "<text>") -> list[QueueLine]:
    """Every experiment line of a queue file's text; errors name the line."""
    entries: list[QueueLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parts = split_line(line)
        except ValueError as error:
            raise UserError(f"{source}, line {number}: {error}") from None
        base, overrides = parts[0], tuple(parts[1:])
        if not base:
            raise UserError(f"{source}, line {number}: no base config before the first '|'")
        if any(not override for override in overrides):
            raise UserError(f"{source}, line {number}: empty override (two '|' in a row?)")
        entries.append(QueueLine(number=number, base=base, overrides=overrides))
    if not entries:
        raise UserError(f"{source}: no experiments (only comments or blank lines)")
    return entries


def read(path: str | Path) -> list[QueueLine]:
    """Parse the queue file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"queue file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise UserError(f"queue file {str(path)!r} is a folder") from None
    except PermissionError:
        raise UserError(f"queue file {str(path)!r} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise UserError(f"queue file {str(path)!r} is not UTF-8 text") from None
    except OSError as error:
        raise UserError(f"cannot read queue file {str(path)!r}: {error.strerror}") from None
    return parse_text(text, str(path))
