"""CTC decoders: greedy (argmax), beam search, and beam search with a KenLM language model.

All decoders take the raw model output ``logits`` of shape ``[B, T, V]`` with
``V = len(alphabet) + 1`` and the CTC blank at index 0 (label ``i`` is
``alphabet.symbols[i - 1]``), plus optional true frame counts ``lengths``; frames
past a row's length are ignored. Beam search is pyctcdecode's; this module only
chooses its labels (``["", *alphabet.symbols]``), loads and checks the language
model, and spreads a batch over a fork-context process pool when that pays.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import multiprocessing
import os
import sys
import weakref
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import kenlm
import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pyctcdecode import BeamSearchDecoderCTC, LanguageModel
from pyctcdecode.alphabet import Alphabet as CTCAlphabet

from asr.configuration import DecoderConfig
from asr.errors import UserError, first_line

DEFAULTS = DecoderConfig()  # the schema holds the decoder defaults; BeamSearchDecoder's follow them
SENTENCE_MARKERS = frozenset({"<s>", "</s>", "<unk>"})
KENLM_BINARY_MAGIC = b"mmap lm "
# A pool costs a fork per worker and pickling of every utterance's log-probabilities;
# below this many frames in a batch a single process is faster (see bench/inference.py).
POOL_MIN_FRAMES = 2000

logger = logging.getLogger(__name__)


class _QuietSmallLMWarnings(logging.Filter):
    """pyctcdecode warns about small vocabularies and ARPA loading; both are expected here."""

    NOISE = ("Only %s unigrams passed", "Using arpa instead of binary")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(str(record.msg).startswith(noise) for noise in self.NOISE)


for _name in ("pyctcdecode.language_model", "pyctcdecode.decoder"):
    logging.getLogger(_name).addFilter(_QuietSmallLMWarnings())


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _as_batch(logits: Any, alphabet: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes; return logits as float32 ``[B, T, V]`` and lengths as int ``[B]``."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, time, labels], got shape {logits.shape}")
    expected = len(alphabet) + 1
    if logits.shape[-1] != expected:
        raise ValueError(
            f"logits have {logits.shape[-1]} labels per frame but the alphabet has {len(alphabet)} symbols "
            f"+ 1 blank = {expected}: the model and alphabet do not belong together"
        )
    if lengths is None:
        lengths = np.full(logits.shape[0], logits.shape[1], dtype=np.int64)
    else:
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if lengths.shape[0] != logits.shape[0]:
            raise ValueError(f"{lengths.shape[0]} lengths for a batch of {logits.shape[0]}")
        if (lengths < 0).any():
            raise ValueError("lengths must not be negative")
        lengths = np.minimum(lengths, logits.shape[1])
    return logits, lengths


def greedy_decode(logits: Any, alphabet: Any, lengths: Any = None) -> list[str]:
    """Best path decoding: argmax per frame, merge repeats, drop blanks (index 0)."""
    logits, lengths = _as_batch(logits, alphabet, lengths)
    best = logits.argmax(axis=-1)  # [B, T]
    frames = np.arange(best.shape[1])[None, :]
    best[frames >= lengths[:, None]] = 0  # padded frames decode to blank
    previous = np.concatenate([np.zeros_like(best[:, :1]), best[:, :-1]], axis=1)
    keep = (best != previous) & (best != 0)
    table = np.array(["", *alphabet.symbols], dtype=object)
    return ["".join(table[row[mask]]) for row, mask in zip(best, keep)]


class Decoder(abc.ABC):
    """Turns a batch of model logits into transcripts."""

    name: str = ""

    @abc.abstractmethod
    def decode(self, logits: Any, lengths: Any = None) -> list[str]:
        """Decode ``logits`` ``[B, T, V]`` (frames past ``lengths[i]`` ignored)."""

    def close(self) -> None:
        """Release worker processes, if any."""

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class GreedyDecoder(Decoder):
    name = "greedy"

    def __init__(self, alphabet: Any) -> None:
        self.alphabet = alphabet

    def decode(self, logits: Any, lengths: Any = None) -> list[str]:
        return greedy_decode(logits, self.alphabet, lengths)


@dataclass
class LanguageModelInfo:
    """A checked KenLM model: where it is, its words, and its order."""

    path: Path
    unigrams: Optional[list[str]] = None
    order: int = 0
    words_in_alphabet: int = 0
    extra: dict = field(default_factory=dict)


def is_kenlm_binary(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def read_arpa_unigrams(path: Path) -> list[str]:
    """The words of an ARPA file's ``\\1-grams:`` section (sentence markers left out)."""
    words: list[str] = []
    section = None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("\\"):
                section = line
                if section == "\\2-grams:" or section == "\\end\\":
                    break
                continue
            if section == "\\1-grams:" and line:
                parts = line.split()
                if len(parts) >= 2 and parts[1] not in SENTENCE_MARKERS:
                    words.append(parts[1])
    return words


def read_unigram_file(path: str | Path) -> list[str]:
    """One word per line; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"unigram file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_language_model(path: str | Path, alphabet: Any, unigrams: Optional[Iterable[str]] = None):
    """Open a KenLM ARPA or binary file; return ``(kenlm.Model, LanguageModelInfo)``.

    Raises ``UserError`` for a missing or unreadable file and for a vocabulary that
    the alphabet cannot spell at all (a wrong-language or wrong-case LM).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"language model not found: {path}")
    binary = is_kenlm_binary(path)
    if not binary:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096).lstrip()
        if not head.startswith("\\data\\"):
            raise UserError(f"{path} is neither an ARPA file (no \\data\\ header) nor a KenLM binary")
    config = kenlm.Config()
    config.show_progress = False
    try:
        with _native_stderr_silenced():  # KenLM's C++ prints "faster if you build a binary file"
            model = kenlm.Model(str(path), config)
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(f"cannot load language model {path}: {first_line(error)}") from None
    if unigrams is not None:
        words = [word for word in unigrams if word not in SENTENCE_MARKERS]
    elif not binary:
        words = read_arpa_unigrams(path)
    else:
        words = None
        logger.warning("binary LM %s without a unigram list: partial words are not scored", path)
    info = LanguageModelInfo(path=path, unigrams=words, order=model.order)
    if words is not None:
        letters = set(alphabet.symbols) - {" "}
        info.words_in_alphabet = sum(1 for word in words if word and set(word) <= letters)
        if info.words_in_alphabet == 0:
            sample = ", ".join(words[:5])
            raise UserError(
                f"language model {path} shares no words with the alphabet "
                f"({len(words)} words such as {sample!r} use symbols outside {''.join(sorted(letters))!r})"
            )
    return model, info


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (C++ libraries write there directly)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def drop_repeated_blank_frames(log_probs: np.ndarray, token_min_logp: float) -> np.ndarray:
    """Remove frames that repeat a "blank only" frame (blank is the argmax and no other label
    reaches ``token_min_logp``, so beam search extends every beam by a blank there).

    After one such frame every beam ends in a blank; each further one only adds the same
    constant to every beam's score, so dropping it changes no ranking and no text, only the
    work. A well-trained CTC model emits mostly blanks, so this often halves the frames.
    """
    if len(log_probs) < 2:
        return log_probs
    blank_only = (log_probs[:, 1:].max(axis=1) < token_min_logp) & (log_probs.argmax(axis=1) == 0)
    repeated = blank_only & np.concatenate([[False], blank_only[:-1]])
    return log_probs[~repeated]


def _decode_one(decoder: Any, log_probs: np.ndarray, options: dict) -> str:
    """Top beam of one utterance (module level so a pool can call it)."""
    if log_probs.shape[0] == 0:
        return ""
    return decoder.decode(log_probs, **options)


class BeamSearchDecoder(Decoder):
    """pyctcdecode beam search, optionally with a KenLM model and hotwords.

    ``workers``: processes for a batch; ``None`` picks the CPUs this process may use,
    ``1`` never forks. A pool (fork context, created at first need and kept) is used
    only when a batch holds at least two utterances and ``POOL_MIN_FRAMES`` frames and,
    with ``workers=None``, only while a CPU is idle: on a saturated machine the pool was
    measured 20-25% slower than one process (bench/inference.py).
    """

    def __init__(
        self,
        alphabet: Any,
        beam_width: int = DEFAULTS.beam_width,
        language_model_path: Optional[str | Path] = None,
        alpha: float = DEFAULTS.alpha,
        beta: float = DEFAULTS.beta,
        unigrams: Optional[Iterable[str]] = None,
        hotwords: Sequence[str] = (),
        hotword_weight: float = DEFAULTS.hotword_weight,
        workers: Optional[int] = None,
        beam_prune_logp: float = -10.0,
        token_min_logp: float = -5.0,
    ) -> None:
        if beam_width < 1:
            raise UserError(f"beam_width must be at least 1, got {beam_width}")
        self.alphabet = alphabet
        self.labels = ["", *alphabet.symbols]
        self.beam_width = int(beam_width)
        self.options = {
            "beam_width": self.beam_width,
            "beam_prune_logp": beam_prune_logp,
            "token_min_logp": token_min_logp,
            "hotwords": list(hotwords) or None,
            "hotword_weight": float(hotword_weight),
        }
        self.language_model_info: Optional[LanguageModelInfo] = None
        language_model = None
        if language_model_path is not None:
            kenlm_model, self.language_model_info = check_language_model(language_model_path, alphabet, unigrams)
            language_model = LanguageModel(
                kenlm_model, self.language_model_info.unigrams, alpha=float(alpha), beta=float(beta)
            )
        # labels are given exactly; pyctcdecode's build_alphabet would rename "_" or "|"
        self.decoder = BeamSearchDecoderCTC(CTCAlphabet(self.labels, is_bpe=False), language_model)
        self.name = "beam_lm" if language_model is not None else "beam"
        self.auto_workers = workers is None
        self.workers = max(1, int(workers if workers is not None else available_cpus()))
        self._pool: Optional[Pool] = None
        self._finalizer = weakref.finalize(self, _release, self.decoder, [None])

    def set_weights(self, alpha: float, beta: float) -> None:
        """Change the LM weight and word bonus (workers are restarted to see them)."""
        self.decoder.reset_params(alpha=float(alpha), beta=float(beta))
        self._close_pool()

    def _get_pool(self) -> Pool:
        if self._pool is None:
            # fork: workers inherit the loaded KenLM model, which pyctcdecode keeps in a class attribute
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _release, self.decoder, [self._pool])
        return self._pool

    def decode(self, logits: Any, lengths: Any = None) -> list[str]:
        logits, lengths = _as_batch(logits, self.alphabet, lengths)
        log_probs = log_softmax(logits)
        minimum = self.options["token_min_logp"]
        rows = [drop_repeated_blank_frames(log_probs[index, : lengths[index]], minimum) for index in range(len(lengths))]
        lengths = np.array([len(row) for row in rows])
        order = np.argsort(-lengths, kind="stable")  # longest first: the pool balances better
        use_pool = (self.workers > 1 and len(rows) >= 2 and int(lengths.sum()) >= POOL_MIN_FRAMES
                    and (not self.auto_workers or idle_cpus() >= 1))
        if use_pool:
            tasks = [(self.decoder, rows[index], self.options) for index in order]
            texts = self._get_pool().starmap(_decode_one, tasks, chunksize=1)
        else:
            texts = [_decode_one(self.decoder, rows[index], self.options) for index in order]
        results = [""] * len(rows)
        for index, text in zip(order, texts):
            results[index] = text
        return results

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def close(self) -> None:
        """Stop the worker processes (the decoder stays usable; the LM is freed with the object)."""
        self._close_pool()


def _release(decoder: Any, pools: list) -> None:
    for pool in pools:
        if pool is not None:
            pool.terminate()
    decoder.cleanup()  # drop the KenLM model from pyctcdecode's class-level registry


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cpus() -> float:
    """CPUs not busy over the last minute (usable CPUs minus the load average)."""
    try:
        return available_cpus() - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return float(available_cpus())


def make_decoder(config: Any, alphabet: Any, name: Optional[str] = None, lm_path: Optional[str | Path] = None,
                 workers: Optional[int] = None) -> Decoder:
    """The one decoder factory: the decoder ``config`` describes (a ``DecoderConfig``, or a mapping of some of
    its fields: the schema fills in the rest), or the one called ``name`` with ``config``'s settings.

    ``lm_path`` (e.g. the LM unpacked from a model bundle) takes precedence over ``config.lm_path``;
    only ``beam_lm`` uses a language model. ``workers``: see :class:`BeamSearchDecoder`.
    """
    try:
        settings = OmegaConf.merge(OmegaConf.structured(DecoderConfig), config if config is not None else {})
    except OmegaConfBaseException as error:
        where = f"decoder.{error.full_key}" if getattr(error, "full_key", None) else "decoder"
        raise UserError(f"{where}: {first_line(error)}") from None
    chosen = name if name is not None else settings.name
    match getattr(chosen, "value", chosen):  # an Enum choice or its string
        case "greedy":
            return GreedyDecoder(alphabet)
        case "beam":
            return BeamSearchDecoder(alphabet, beam_width=settings.beam_width, hotwords=list(settings.hotwords),
                                     hotword_weight=settings.hotword_weight, workers=workers)
        case "beam_lm":
            path = lm_path if lm_path is not None else settings.lm_path
            if path is None:
                raise UserError("decoder beam_lm needs a language model, and none is bundled or set in decoder.lm_path: "
                                "build one (asr lm build) and add it to the bundle (asr lm tune --lm FILE)")
            return BeamSearchDecoder(
                alphabet, beam_width=settings.beam_width, language_model_path=path, alpha=settings.alpha,
                beta=settings.beta, unigrams=read_unigram_file(settings.unigrams) if settings.unigrams else None,
                hotwords=list(settings.hotwords), hotword_weight=settings.hotword_weight, workers=workers)
        case _:
            raise UserError(f"unknown decoder {chosen!r}: choose greedy, beam or beam_lm")
