"""Writing files so that a reader (or a kill mid-write) never sees half of one: expctl's one helper.

The daemon's job files (``config.yaml``, the exit record, the ``experiments/<id>`` link) are made
under a temporary name in the same folder, then ``os.replace`` puts them in place in one step.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to create; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()


def write_atomically(path: str | bytes | Path, content: str | bytes, durable: bool = False) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` under a temporary name, then rename it into place;
    ``durable``: fsync first, so that the file survives a crash of the machine (the exit record).

    Plain system calls only: the daemon's shepherd calls this in a process forked from a threaded one.
    """
    target = os.fsencode(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = target + b"." + str(os.getpid()).encode() + b".tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
