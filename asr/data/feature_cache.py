"""On-disk feature cache keyed by the audio's content and the feature configuration.

Layout under ``cache_dir``::

    hashes/ab/<key of (path, size, mtime)>     content hash of that file version (text)
    <config hash>/config.json                    the feature configuration, for humans
    <config hash>/ab/<content hash>.npy          features of one audio content
    <config hash>/locks/ab.lock                  256 lock stripes per configuration

* The key of an entry is ``blake2b(audio bytes)`` plus ``blake2b(canonical JSON of the
  configuration)``: renaming or copying a file keeps its features, changing one byte or one
  feature setting does not. The content hash of a file is remembered (in memory and under
  ``hashes/``) by ``(absolute path, size, mtime_ns)``, so a warm cache never re-reads audio.
* Writers compute under a file lock (one of 256 stripes per configuration, so lock files do
  not pile up), check again once they hold it, and publish through ``asr.files.atomic_path``
  (a temporary name, then ``os.replace``): a reader never sees half an entry and never needs
  the lock. Two processes filling one cache compute each entry once.
* An entry that does not load (truncated, garbage) is recomputed and replaced, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, cast

import numpy as np
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from asr.files import atomic_path, write_atomically

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # bump when the entry format or the meaning of a key changes
HASH_BYTES = 16
READ_CHUNK = 1 << 20

Compute = Callable[[Path], np.ndarray]


def canonical_config(features_config: Any) -> dict[str, Any]:
    """A dataclass, OmegaConf ``DictConfig`` or mapping as a plain, JSON-ready dict."""
    if features_config is None:
        return {}
    if is_dataclass(features_config) and not isinstance(features_config, type):
        return asdict(features_config)
    if isinstance(features_config, DictConfig):
        return OmegaConf.to_container(features_config, resolve=True)  # type: ignore[return-value]
    if isinstance(features_config, Mapping):
        return {str(key): value for key, value in features_config.items()}
    raise ValueError(f"features_config must be a dataclass, DictConfig or mapping, "
                     f"got {type(features_config).__name__}")


def config_hash(features_config: Any) -> str:
    """Hash of the configuration's canonical JSON (sorted keys, no spaces), with the format version."""
    document = {"cache_format": CACHE_FORMAT_VERSION, "features": canonical_config(features_config)}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).hexdigest()


def content_hash(path: str | Path) -> str:
    """blake2b of a file's bytes."""
    digest = hashlib.blake2b(digest_size=HASH_BYTES)
    with open(path, "rb") as stream:
        while chunk := stream.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class CacheStatistics:
    """What this ``FeatureCache`` object did (per process)."""

    hits: int = 0
    computed: int = 0
    corrupt_recomputed: int = 0


class FeatureCache:
    """Features of audio files on disk, keyed by content hash + feature configuration hash."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(os.path.abspath(cache_dir))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.statistics = CacheStatistics()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._configs: dict[str, str] = {}

    # keys -------------------------------------------------------------------------------------
    def audio_hash(self, path: str | Path, read: bool = True) -> Optional[str]:
        """Content hash of ``path``, remembered by (absolute path, size, mtime_ns).

        With ``read=False`` only what is remembered is returned (``None`` when the file
        would have to be read).
        """
        absolute = os.path.abspath(path)
        status = os.stat(absolute)
        version = (absolute, status.st_size, status.st_mtime_ns)
        if version in self._hashes:
            return self._hashes[version]
        index_key = hashlib.blake2b(repr(version).encode("utf-8"), digest_size=HASH_BYTES).hexdigest()
        index_file = self.cache_dir / "hashes" / index_key[:2] / index_key
        try:
            value = index_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            value = ""
        if len(value) != 2 * HASH_BYTES:
            if not read:
                return None
            value = content_hash(absolute)
            write_atomically(index_file, value)
        self._hashes[version] = value
        return value

    def _config_folder(self, features_config: Any) -> Path:
        text = json.dumps(canonical_config(features_config), sort_keys=True, default=str)
        if text not in self._configs:
            digest = config_hash(features_config)
            folder = self.cache_dir / digest
            description = folder / "config.json"
            if not description.exists():
                document = {"cache_format": CACHE_FORMAT_VERSION, "features": canonical_config(features_config)}
                write_atomically(description, json.dumps(document, sort_keys=True, indent=2, default=str))
            self._configs[text] = digest
        return self.cache_dir / self._configs[text]

    def entry_path(self, path: str | Path, features_config: Any) -> Path:
        """Where the features of ``path`` under ``features_config`` live (or will)."""
        digest = cast(str, self.audio_hash(path))  # read=True: always a hash
        return self._config_folder(features_config) / digest[:2] / f"{digest}.npy"

    # entries ----------------------------------------------------------------------------------
    @staticmethod
    def _load(entry: Path) -> Optional[np.ndarray]:
        """The entry's array; ``None`` when missing; raises ``ValueError`` when it is corrupt."""
        try:
            return np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(str(error) or type(error).__name__) from None

    def load(self, path: str | Path, features_config: Any) -> Optional[np.ndarray]:
        """Cached features of ``path``, or ``None`` when absent or corrupt (nothing is computed)."""
        try:
            return self._load(self.entry_path(path, features_config))
        except ValueError:
            return None

    def get_or_compute(self, path: str | Path, features_config: Any, compute: Compute) -> np.ndarray:
        """Features of ``path``: from the cache, or ``compute(path)`` stored for next time."""
        path = Path(path)
        entry = self.entry_path(path, features_config)
        try:
            cached = self._load(entry)
        except ValueError:
            cached = None  # corrupt: recomputed below, under the lock
        if cached is not None:
            self.statistics.hits += 1
            return cached
        locks = entry.parent.parent / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{entry.name[:2]}.lock")):
            try:
                cached = self._load(entry)  # another process may have filled it meanwhile
            except ValueError as error:
                logger.warning("feature cache: recomputing corrupt entry %s for %s (%s)", entry, path, error)
                self.statistics.corrupt_recomputed += 1
                cached = None
            if cached is not None:
                self.statistics.hits += 1
                return cached
            features = np.asarray(compute(path))
            if features.dtype == object:
                raise ValueError(f"compute({path}) returned an object array; the cache stores numeric arrays")
            with atomic_path(entry) as temporary, temporary.open("wb") as stream:
                np.save(stream, features, allow_pickle=False)
            self.statistics.computed += 1
            return features

    def extract_many(self, paths: Sequence[str | Path], features_config: Any, compute: Compute,
                     jobs: Optional[int] = None, progress: bool = True) -> list[np.ndarray]:
        """Features of every path, in order; misses are computed in ``jobs`` processes.

        Hits are loaded here; only misses go to the worker processes (started with
        ``forkserver``, so a parent running TensorFlow is never forked). ``compute`` must be
        picklable: a module-level function or a ``functools.partial`` of one.
        """
        results: list[Optional[np.ndarray]] = [None] * len(paths)
        missing: list[int] = []
        folder = self._config_folder(features_config)
        for index, path in enumerate(paths):
            digest = self.audio_hash(path, read=False)  # unknown files are hashed by the workers
            try:
                found = None if digest is None else self._load(folder / digest[:2] / f"{digest}.npy")
            except ValueError:
                found = None  # corrupt: the worker recomputes it
            if found is None:
                missing.append(index)
            else:
                results[index] = found
                self.statistics.hits += 1
        jobs = max(1, jobs or os.cpu_count() or 1)
        with _progress_bar(progress, len(paths)) as (bar, task):
            bar.advance(task, len(paths) - len(missing))
            if jobs == 1 or len(missing) < 2:
                for index in missing:
                    results[index] = self.get_or_compute(paths[index], features_config, compute)
                    bar.advance(task)
            else:
                plain = canonical_config(features_config)
                arguments = [(str(self.cache_dir), str(paths[index]), plain, compute) for index in missing]
                context = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn")
                chunk = max(1, min(16, len(missing) // (jobs * 4)))
                with ProcessPoolExecutor(max_workers=min(jobs, len(missing)), mp_context=context) as pool:
                    for index, (features, computed) in zip(missing, pool.map(_fill_one, arguments, chunksize=chunk)):
                        results[index] = features
                        self.statistics.computed += computed
                        self.statistics.hits += 1 - computed
                        bar.advance(task)
        return results  # type: ignore[return-value]

    def fill_in_background(self, paths: Sequence[str | Path], features_config: Any, compute: Compute,
                           jobs: Optional[int] = None, chunk: int = 8) -> BackgroundFill:
        """Start ``jobs`` processes filling the entries of ``paths``, in that order, and return at once.

        Meant to run ahead of a reader that calls ``get_or_compute`` in the same order (the first
        epoch of training on a cold cache): the reader finds entries ready, waits on the lock of
        one being computed, or computes one the workers have not reached (they then skip it).
        Errors surface from ``wait()``; ``close()`` (or leaving a ``with`` block) stops the workers.
        """
        plain = canonical_config(features_config)
        jobs = max(1, jobs or os.cpu_count() or 1)
        context = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn")
        executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
        names = [str(path) for path in paths]
        futures = [executor.submit(_fill_chunk, (str(self.cache_dir), names[start:start + chunk], plain, compute))
                   for start in range(0, len(names), max(1, chunk))]
        return BackgroundFill(executor, futures)


class BackgroundFill:
    """Worker processes filling a cache ahead of its reader; see ``FeatureCache.fill_in_background``."""

    def __init__(self, executor: ProcessPoolExecutor, futures: list[Future]) -> None:
        self._executor, self._futures = executor, futures

    def done(self) -> bool:
        return all(future.done() for future in self._futures)

    def wait(self) -> int:
        """Block until every entry is filled; return how many the workers computed (errors re-raised)."""
        try:
            return sum(future.result() for future in self._futures)
        finally:
            self._executor.shutdown(wait=True)

    def close(self) -> None:
        """Stop: pending chunks are dropped, chunks in progress finish (entries stay whole)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BackgroundFill":
        return self

    def __exit__(self, *exception: Any) -> None:
        self.close()


def _fill_chunk(arguments: tuple[str, list[str], dict[str, Any], Compute]) -> int:
    """Worker: fill the entries of a chunk of paths; return how many were computed here."""
    cache_dir, paths, features_config, compute = arguments
    cache = _worker_cache(cache_dir)
    before = cache.statistics.computed
    for path in paths:
        cache.get_or_compute(path, features_config, compute)
    return cache.statistics.computed - before


def _fill_one(arguments: tuple[str, str, dict[str, Any], Compute]) -> tuple[np.ndarray, int]:
    """Worker: get or compute one entry; say whether it was computed here."""
    cache_dir, path, features_config, compute = arguments
    cache = _worker_cache(cache_dir)
    before = cache.statistics.computed
    features = cache.get_or_compute(path, features_config, compute)
    return features, cache.statistics.computed - before


_WORKER_CACHES: dict[str, FeatureCache] = {}


def _worker_cache(cache_dir: str) -> FeatureCache:
    if cache_dir not in _WORKER_CACHES:
        _WORKER_CACHES[cache_dir] = FeatureCache(cache_dir)
    return _WORKER_CACHES[cache_dir]


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[tuple[Any, Any]]:
    """A transient rich progress bar on stderr (a silent one when ``enabled`` is false)."""
    bar = Progress(TextColumn("features"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled)
    with bar:
        yield bar, bar.add_task("features", total=total)
