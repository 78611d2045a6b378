"""Writing files so that a reader (or a kill mid-write) never sees half of one.

Every file ``asr`` writes for others to read (bundles, manifests, reports, LMs, cache entries,
checkpointed weights) goes through :func:`atomic_path`: the content is written to a temporary
name in the same folder, then ``os.replace`` puts it in place in one step.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path``, on error it is removed.

    ``suffix`` keeps an extension that a writer insists on (Keras' ``.weights.h5``, zip's ``.bin``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a unique name, created by the writer itself so that the file gets the usual permissions
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: str | Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        else:
            temporary.write_text(content, encoding="utf-8")
