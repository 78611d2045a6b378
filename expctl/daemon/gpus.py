"""GPU specs (``0-7``, ``0,2,5``, ``all``, ``none``) and one file lock per GPU for a daemon's lifetime."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from filelock import FileLock, Timeout

from expctl.errors import UserError

DEFAULT_LOCK_DIR = "/tmp/expctl-locks"
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
# Bounds checked before a range is expanded (``0-99999999`` would build a list of 10^8 ints), and
# so that the CUDA_VISIBLE_DEVICES text fits the 200-character gpus columns of the queue database.
MAX_GPU_INDEX = 4095
MAX_GPUS = 32


def lock_dir() -> Path:
    """Where the GPU lock files live: ``EXPCTL_LOCK_DIR`` or /tmp/expctl-locks."""
    return Path(os.environ.get("EXPCTL_LOCK_DIR") or DEFAULT_LOCK_DIR)


def detect_gpus() -> list[int]:
    """Indices of the machine's NVIDIA GPUs (PCI bus order), via nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        raise UserError("--gpus all: nvidia-smi not found, so no GPUs can be listed (use --gpus none for CPU)")
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as error:
        raise UserError(f"--gpus all: nvidia-smi failed: {error}") from None
    indices = sorted(int(line) for line in listing.split() if line.strip().isdigit() and len(line) <= 6)
    if len(indices) > MAX_GPUS or any(index > MAX_GPU_INDEX for index in indices):
        raise UserError(f"--gpus all: nvidia-smi lists {len(indices)} GPUs; name at most {MAX_GPUS} "
                        f"(indices up to {MAX_GPU_INDEX}), e.g. --gpus 0-7")
    if not indices:
        raise UserError("--gpus all: nvidia-smi lists no GPUs (use --gpus none for CPU)")
    return indices


def parse_gpu_spec(spec: str) -> list[int]:
    """GPU indices named by ``spec``: ``none``, ``all``, or ranges/lists such as ``0-3,6``."""
    text = spec.strip().lower()
    if text in ("none", ""):
        if text == "":
            raise UserError("bad GPU spec '': use e.g. 0-7, 0,2,5, all or none")
        return []
    if text == "all":
        return detect_gpus()
    shown = spec if len(spec) <= 60 else spec[:57] + "..."
    indices: list[int] = []
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise UserError(f"bad GPU spec {shown!r}: {part.strip()[:40]!r} is not an index or a range like 0-7")
        for number in match.groups():
            # compare the digits' length first: int() of thousands of digits is slow or refused
            if number is not None and (len(number) > 6 or int(number) > MAX_GPU_INDEX):
                raise UserError(f"bad GPU spec {shown!r}: GPU index {number[:12]} is over {MAX_GPU_INDEX}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise UserError(f"bad GPU spec {shown!r}: range {part.strip()!r} runs backwards")
        indices.extend(range(first, last + 1))
        if len(indices) > MAX_GPUS:
            raise UserError(f"bad GPU spec {shown!r}: more than {MAX_GPUS} GPUs for one daemon")
    if len(set(indices)) != len(indices):
        raise UserError(f"bad GPU spec {shown!r}: a GPU is named twice")
    return sorted(indices)


def format_gpus(indices: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` form: ``0,1,2`` (empty for CPU only)."""
    return ",".join(str(index) for index in indices)


class GpuLocks:
    """Exclusive file locks on a daemon's GPUs (none for a CPU daemon, so several may run)."""

    def __init__(self, indices: list[int], directory: Path | None = None) -> None:
        self.indices = list(indices)
        self.directory = directory or lock_dir()
        self._locks: list[FileLock] = []

    def acquire(self) -> None:
        """Take every lock now or none: a GPU held by another daemon is a UserError."""
        if not self.indices:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the GPU lock folder {self.directory}: {error.strerror}") from None
        for index in self.indices:
            path = self.directory / f"gpu-{index}.lock"
            lock = FileLock(str(path), timeout=0, mode=0o666)
            try:
                lock.acquire()
            except Timeout:
                self.release()
                raise UserError(f"GPU {index} is in use by another expctl daemon (lock {path})") from None
            except OSError as error:
                self.release()
                raise UserError(f"cannot lock GPU {index} ({path}): {error.strerror}") from None
            self._locks.append(lock)

    def release(self) -> None:
        """Give every held lock back."""
        while self._locks:
            self._locks.pop().release()

    def __enter__(self) -> "GpuLocks":
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
