"""Model quality on sentences and voices the model never heard, next to CMU PocketSphinx.

    python bench/quality.py --model MODEL --sentences FILE [--count 100] [--out report.json]
                            [--work-dir /tmp/asr-bench-quality] [--sets training,festival,real]

MODEL is a model bundle (``.bin``) or a name that ``asr.load_model`` resolves. FILE holds the
natural sentences the model never saw in training: a JSON-lines manifest (its ``"text"``
fields) or plain text, one sentence per line. Each sentence is normalised to the model's
alphabet (``asr.text.normalize_transcript``, dashes and slashes become spaces, other
punctuation is dropped); a sentence holding a digit or a letter the alphabet lacks is left out,
because the audio would say a word that the reference cannot write. The first ``--count``
distinct sentences that remain are spoken by every voice of three test sets:

* ``training voices, unseen sentences``: espeak-ng, DECtalk, MBROLA and SVOX Pico (``asr.data.synth``:
  voice, speed, pitch and level drawn per sentence as in training, from a seed of this bench) and the flite
  voices kal, kal16, awb, rms and slt (the ``flite`` binary, default speed and pitch);
* ``Festival voices (never trained on)``: kal_diphone, ked_diphone and cmu_us_slt_arctic_hts
  (``text2wave``). Festival is kept out of training and model selection, so this set is an
  honest test of voices the model never heard;
* ``real speech``: the recordings of Debian's pocketsphinx-testdata that come with transcripts
  (five sentences of a LibriVox audiobook, five short card names), with their own
  references, not FILE's sentences.

All audio is 16 kHz mono 16-bit (resampled with soxr where an engine writes another rate) and
cached in the work folder under a hash of engine, voice, settings and text, so a rerun only
decodes. The same WAVs are transcribed by

* this library: features → Keras model → greedy decoding, and → the bundle's beam search with
  its language model (``beam_lm``; a bundle without an LM gets plain ``beam``, named so);
* PocketSphinx 5 (pip ``pocketsphinx``) with the en-US acoustic model, dictionary and LM it ships.

The table has one row per voice and one summary row per set; for each system it gives the
corpus WER and CER (``asr.metrics``: total edits over total reference length) and the real-time
factor RTF = wall seconds ÷ audio seconds, in this one process, reading and features included
(our model: features + acoustic model + that decoder; the model and decoders are warmed up
first on a few utterances, not timed). ``--out`` writes every figure and every transcript as
JSON. Missing tools: ``make voices`` installs flite, MBROLA, Pico, Festival and its voices,
pocketsphinx-testdata (apt), PocketSphinx and DECtalk (pip extras ``bench``, ``voices``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from asr.data.synth import check_engines, spoken_form
from asr.errors import UserError
from asr.inference import Timings, decode_logits, logits_of_files

SAMPLE_RATE = 16_000
ESPEAK_SEED = 8_675_309  # the bench's own draw of the DRAWN_ENGINES' voices, speeds and pitches per sentence
# bench voice -> asr.data.synth engine (a voice drawn per sentence)
DRAWN_ENGINES = {"espeak-ng": "espeak", "dectalk": "dectalk", "mbrola": "mbrola", "pico": "pico"}
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
# pocketsphinx-testdata folders of 16 kHz WAVs with a Sphinx transcription file (``<s> text </s> (id)``)
REAL_SPEECH = {"librivox": "librivox/transcription", "cards": "cards/cards.transcription"}
TRAINING, FESTIVAL, REAL = "training", "festival", "real"
SET_TITLES = {TRAINING: "training voices, unseen sentences", FESTIVAL: "Festival voices (never trained on)",
              REAL: "real speech"}
INSTALL_HINT = "run `make voices`"
CACHE_VERSION = "1"  # bump to resynthesise everything
WARMUP_UTTERANCES = 4

_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]+")
_EDGE_QUOTES = re.compile(r"(?<![^\s])'+|'+(?![^\s])")  # apostrophes that open or close a word: quotes
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?(?P<text>.*?)(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


class BenchError(Exception):
    """A user mistake or a missing tool: printed as one line, exit code 2."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- text


def normalise(text: str, symbols: Sequence[str], strict: bool = True) -> Optional[str]:
    """``text`` in the alphabet ``symbols``, or None when it cannot be written honestly there.

    Dashes, slashes and underscores become spaces, other punctuation and quotes are dropped.
    With ``strict`` a digit or letter outside the alphabet makes the sentence unusable (None);
    without, such characters are dropped too (for references and hypotheses that exist anyway).
    """
    from asr.text import normalize_transcript

    allowed = set(symbols)
    text = _EDGE_QUOTES.sub("", normalize_transcript(_SEPARATORS.sub(" ", text)))
    kept = []
    for char in text:
        if char in allowed or char == " ":
            kept.append(char)
        elif char.isalnum() and strict:
            return None
    result = " ".join("".join(kept).split())
    return result or None


def read_sentences(path: Path) -> list[str]:
    """The raw sentences of a JSON-lines manifest (``"text"`` fields) or a plain text file."""
    if not path.is_file():
        raise BenchError(f"sentences file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BenchError(f"{path}: not UTF-8 text") from None
    first = next((line for line in lines if line.strip()), "")
    if not first.lstrip().startswith("{"):
        return [line.strip() for line in lines if line.strip()]
    sentences = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BenchError(f"{path}:{number}: a manifest line needs a \"text\" string")
        sentences.append(record["text"])
    return sentences


def choose_sentences(raw: Sequence[str], symbols: Sequence[str], count: int) -> tuple[list[str], int]:
    """The first ``count`` distinct sentences that normalise into the alphabet; and how many were left out."""
    chosen: dict[str, None] = {}
    left_out = 0
    for sentence in raw:
        if len(chosen) == count:
            break
        text = normalise(sentence, symbols)
        if text is None:
            left_out += 1
        else:
            chosen.setdefault(text)
    return list(chosen), left_out


def parse_sphinx_transcription(text: str) -> dict[str, str]:
    """``{utterance id: transcript}`` of a Sphinx transcription file (``<s> words </s> (id)`` per line)."""
    transcripts = {}
    for line in text.splitlines():
        match = _SPHINX_LINE.match(line)
        if match:
            transcripts[match["id"].strip()] = match["text"].strip()
    return transcripts


# --------------------------------------------------------------------------- audio


@dataclass
class Utterance:
    """One test WAV: which set and voice, its reference, and what each system heard."""

    set: str
    voice: str
    audio: Path
    reference: str
    duration: float
    hypotheses: dict[str, str] = field(default_factory=dict)


def write_wav(samples: np.ndarray, rate: int, path: Path) -> None:
    """Write ``samples`` (int16 or float, mono or [frames, channels]) as 16 kHz mono PCM_16, atomically."""
    import soundfile
    import soxr

    samples = np.asarray(samples)
    samples = samples / 32768.0 if samples.dtype.kind == "i" else samples
    samples = samples.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    soundfile.write(partial, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(partial, path)


def convert_file(source: Path, target: Path) -> None:
    """A WAV written by an engine (any rate) rewritten as 16 kHz mono."""
    import soundfile

    samples, rate = soundfile.read(str(source), dtype="float32")
    if samples.size == 0:
        raise RuntimeError(f"{source} holds no audio")
    write_wav(samples, rate, target)


@dataclass(frozen=True)
class Voice:
    engine: str  # espeak-ng, dectalk, mbrola, pico, flite or festival
    name: str  # the engine's voice; "drawn" for the engines of DRAWN_ENGINES, whose voice is drawn per sentence

    @property
    def label(self) -> str:
        return self.engine if self.name == "drawn" else f"{self.engine} {self.name}"


def set_voices(set_name: str) -> list[Voice]:
    if set_name == TRAINING:
        return [*(Voice(engine, "drawn") for engine in DRAWN_ENGINES), *(Voice("flite", name) for name in FLITE_VOICES)]
    return [Voice("festival", name) for name in FESTIVAL_VOICES]


def cached_path(work: Path, voice: Voice, spoken: str, settings: Any = None) -> Path:
    """Where the WAV of ``spoken`` by ``voice`` (with ``settings``) lives in the cache."""
    key = json.dumps([CACHE_VERSION, voice.engine, voice.name, spoken, repr(settings)], ensure_ascii=False)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return work / "audio" / voice.label.replace(" ", "-") / f"{digest}.wav"


def run_tool(command: list[str], what: str, output: Path) -> None:
    """Run a synthesiser; RuntimeError with its last error line when it fails or writes nothing."""
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0 or "ERROR" in result.stderr or not output.is_file():
        lines = result.stderr.strip().splitlines()
        raise RuntimeError(f"{what} failed: {lines[-1] if lines else f'exit code {result.returncode}, no audio'}")


def speak_tool(voice: Voice, spoken: str, target: Path) -> None:
    """``spoken`` by the flite or Festival ``voice`` into ``target`` (16 kHz mono)."""
    with tempfile.TemporaryDirectory(prefix="asr-quality-") as folder:
        raw = Path(folder) / "out.wav"
        if voice.engine == "flite":
            run_tool(["flite", "-voice", voice.name, "-t", spoken, "-o", str(raw)], f"flite -voice {voice.name}", raw)
        else:
            text = Path(folder) / "text.txt"
            text.write_text(spoken + "\n", encoding="utf-8")
            run_tool(["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(raw), str(text)],
                     f"text2wave voice_{voice.name}", raw)
        convert_file(raw, target)


@functools.lru_cache(maxsize=1)
def espeak() -> tuple[Callable, Callable, tuple[str, ...]]:
    """asr.data.synth's ``synthesize``, ``utterance_settings`` and the installed voice variants."""
    from asr.data.synth import available_variants, synthesize, utterance_settings

    return synthesize, utterance_settings, available_variants()


def synthesise(voice: Voice, index: int, sentence: str, work: Path) -> tuple[Path, bool]:
    """The cached WAV of sentence ``index`` spoken by ``voice``, and whether it was made just now."""
    if voice.name == "drawn":
        synthesize, utterance_settings, variants = espeak()
        settings = utterance_settings(ESPEAK_SEED, index, variants, (DRAWN_ENGINES[voice.engine],))
        target = cached_path(work, voice, sentence, settings)
        if target.is_file():
            return target, False
        write_wav(synthesize(sentence, settings), SAMPLE_RATE, target)  # int16 at 16 kHz
        return target, True
    spoken = spoken_form(sentence)
    target = cached_path(work, voice, spoken)
    if target.is_file():
        return target, False
    try:
        speak_tool(voice, spoken, target)
    except RuntimeError as error:
        raise BenchError(f"{error} ({INSTALL_HINT} installs the voices)") from None
    return target, True


def synthesise_set(set_name: str, sentences: Sequence[str], work: Path) -> list[Utterance]:
    """Every voice of a test set speaking every sentence (cached WAVs are reused)."""
    import soundfile

    utterances = []
    for voice in set_voices(set_name):
        started, made = time.perf_counter(), 0
        for index, sentence in enumerate(sentences):
            path, new = synthesise(voice, index, sentence, work)
            made += new
            utterances.append(Utterance(set_name, voice.label, path, sentence, soundfile.info(str(path)).duration))
        log(f"{voice.label}: {len(sentences)} utterances ({made} synthesised, {len(sentences) - made} cached) "
            f"in {time.perf_counter() - started:.1f}s")
    return utterances


def real_speech(symbols: Sequence[str], work: Path, data: Path = POCKETSPHINX_DATA) -> list[Utterance]:
    """The pocketsphinx-testdata recordings that have transcripts, references in the model's alphabet."""
    import soundfile

    utterances = []
    for source, transcription in REAL_SPEECH.items():
        path = data / transcription
        if not path.is_file():
            raise BenchError(f"{path} not found: pocketsphinx-testdata is not installed ({INSTALL_HINT})")
        for utterance_id, text in parse_sphinx_transcription(path.read_text(encoding="utf-8")).items():
            audio = path.parent / f"{utterance_id}.wav"
            info = soundfile.info(str(audio))
            if info.samplerate != SAMPLE_RATE or info.channels != 1:
                converted = cached_path(work, Voice("real", source), utterance_id)
                if not converted.is_file():
                    convert_file(audio, converted)
                audio = converted
            reference = normalise(text, symbols, strict=False) or ""
            utterances.append(Utterance(REAL, source, audio, reference, soundfile.info(str(audio)).duration))
    return utterances


# --------------------------------------------------------------------------- recognisers


def check_tools(sets: Sequence[str]) -> None:
    """Fail early, in one line naming the make target, when a tool a set needs is missing."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        raise BenchError(f"PocketSphinx is not installed in this Python ({INSTALL_HINT}, "
                         f"or pip install '.[bench]')") from None
    if TRAINING in sets:
        if shutil.which("flite") is None:
            raise BenchError(f"flite not found ({INSTALL_HINT})")
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        missing = [voice for voice in FLITE_VOICES if voice not in listed]
        if missing:  # flite falls back to kal silently for an unknown voice
            raise BenchError(f"flite lacks the voices {', '.join(missing)} ({INSTALL_HINT})")
        try:
            check_engines(["dectalk", "mbrola", "pico"])
        except UserError as error:
            raise BenchError(str(error)) from None
    if FESTIVAL in sets and shutil.which("text2wave") is None:
        raise BenchError(f"Festival's text2wave not found ({INSTALL_HINT})")
    if REAL in sets and not POCKETSPHINX_DATA.is_dir():
        raise BenchError(f"{POCKETSPHINX_DATA} not found: pocketsphinx-testdata is not installed ({INSTALL_HINT})")


def run_pocketsphinx(utterances: Sequence[Utterance]) -> list[float]:
    """Transcribe with PocketSphinx's en-US defaults; wall seconds of each utterance (read + decode).

    PocketSphinx adapts to the speaker from one utterance to the next (its cepstral mean); each
    voice gets a fresh decoder (loaded before the clock starts), so a voice's figures do not
    depend on which voices went before.
    """
    import soundfile
    from pocketsphinx import Decoder

    seconds, voice, decoder = [], None, None
    for utterance in utterances:
        if utterance.voice != voice:
            voice, decoder = utterance.voice, Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        started = time.perf_counter()
        samples, _ = soundfile.read(str(utterance.audio), dtype="int16")
        decoder.start_utt()
        decoder.process_raw(samples.tobytes(), full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        utterance.hypotheses["pocketsphinx"] = hypothesis.hypstr if hypothesis is not None else ""
        seconds.append(time.perf_counter() - started)
    return seconds


def model_decoders(pipeline: Any) -> dict[str, Any]:
    """Greedy, and beam search with the bundle's LM (``beam_lm``; plain ``beam`` without one), in this process."""
    beam = "beam_lm" if pipeline.language_model or pipeline.configuration.decoder.lm_path else "beam"
    return {"greedy": pipeline.decoder("greedy"), beam: pipeline.decoder(beam, workers=1)}


def run_model(pipeline: Any, decoders: dict[str, Any], utterances: Sequence[Utterance]) -> dict[str, float]:
    """Transcribe ``utterances`` (one voice) with each decoder; wall seconds of each, features and model included."""
    front = Timings()
    logits, _ = logits_of_files(pipeline.model, pipeline.configuration, [u.audio for u in utterances], front, jobs=1)
    seconds = {}
    for name, decoder in decoders.items():
        timings = Timings()
        for utterance, text in zip(utterances, decode_logits(decoder, logits, timings)):
            utterance.hypotheses[name] = text
        seconds[name] = front.features + front.acoustic_model + timings.decoding
    return seconds


def warm_up(pipeline: Any, decoders: dict[str, Any], utterances: Sequence[Utterance]) -> None:
    """Trace the model on a few batch shapes and load the decoders, so that timings leave them out."""
    files = [u.audio for u in utterances[:WARMUP_UTTERANCES]]
    for part in (files[:1], files[1:3], files):
        if part:
            logits, _ = logits_of_files(pipeline.model, pipeline.configuration, part, jobs=1)
    for decoder in decoders.values():
        decode_logits(decoder, logits)


# --------------------------------------------------------------------------- figures


def score(utterances: Sequence[Utterance], system: str, seconds: float, symbols: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER of ``system`` on ``utterances``, and its RTF."""
    from asr.metrics import cer, wer

    references = [u.reference for u in utterances]
    hypotheses = [normalise(u.hypotheses[system], symbols, strict=False) or "" for u in utterances]
    audio = sum(u.duration for u in utterances)
    return {"wer": wer(references, hypotheses), "cer": cer(references, hypotheses),
            "rtf": seconds / audio if audio else float("nan"), "seconds": seconds}


def build_report(utterances: Sequence[Utterance], seconds: dict[str, dict[str, float]],
                 systems: Sequence[str], symbols: Sequence[str], meta: dict) -> dict:
    """All figures: per voice and per set, for each system; and every transcript.

    ``seconds[voice][system]`` is the wall time of ``system`` on that voice's utterances.
    """
    sets = []
    for set_name in dict.fromkeys(u.set for u in utterances):
        in_set = [u for u in utterances if u.set == set_name]
        voices = []
        for voice in dict.fromkeys(u.voice for u in in_set):
            group = [u for u in in_set if u.voice == voice]
            voices.append({"voice": voice, "utterances": len(group), "audio_seconds": sum(u.duration for u in group),
                           "systems": {system: score(group, system, seconds[voice][system], symbols)
                                       for system in systems}})
        summary = {"voice": "all", "utterances": len(in_set), "audio_seconds": sum(u.duration for u in in_set),
                   "systems": {system: score(in_set, system, sum(seconds[v["voice"]][system] for v in voices),
                                             symbols) for system in systems}}
        sets.append({"set": set_name, "title": SET_TITLES[set_name], "voices": voices, "summary": summary})
    return {**meta, "systems": list(systems), "sets": sets,
            "transcripts": [{"set": u.set, "voice": u.voice, "audio": str(u.audio), "duration": round(u.duration, 3),
                             "reference": u.reference, "hypotheses": u.hypotheses} for u in utterances]}


def format_table(report: dict) -> str:
    """The report as one text table: a row per voice, a summary row per set."""
    systems = report["systems"]
    lines = [f"{'':53}" + "".join(f" | {system:^22}" for system in systems),
             f"{'set / voice':38} {'utts':>5} {'audio s':>8}" + " | {:>6} {:>6} {:>6}".format("WER", "CER", "RTF")
             * len(systems)]
    lines.append("-" * len(lines[-1]))

    def row(label: str, figures: dict) -> str:
        cells = "".join(" | {wer:6.1%} {cer:6.1%} {rtf:6.3f}".format(**figures["systems"][system])
                        for system in systems)
        return f"{label:38} {figures['utterances']:5d} {figures['audio_seconds']:8.1f}{cells}"

    for test_set in report["sets"]:
        lines.append(test_set["title"])
        lines += [row(f"  {voice['voice']}", voice) for voice in test_set["voices"]]
        lines.append(row("  all voices", test_set["summary"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_arguments(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model bundle (.bin) or a name asr.load_model resolves")
    parser.add_argument("--sentences", required=True, type=Path,
                        help="unseen sentences: a JSON-lines manifest (text fields) or one sentence per line")
    parser.add_argument("--count", type=int, default=100, help="sentences per voice (default 100)")
    parser.add_argument("--out", type=Path, help="write all figures and transcripts here (JSON)")
    parser.add_argument("--work-dir", "--work", type=Path, default=Path(tempfile.gettempdir()) / "asr-bench-quality",
                        help="audio cache (default: %(default)s)")
    parser.add_argument("--sets", default=",".join(SET_TITLES),
                        help=f"comma-separated test sets among {', '.join(SET_TITLES)} (default: all)")
    arguments = parser.parse_args(argv)
    arguments.sets = [name.strip() for name in arguments.sets.split(",") if name.strip()]
    unknown = [name for name in arguments.sets if name not in SET_TITLES]
    if unknown or not arguments.sets:
        parser.error(f"--sets takes {', '.join(SET_TITLES)}; got {arguments.sets}")
    if arguments.count < 1:
        parser.error(f"--count must be at least 1, not {arguments.count}")
    return arguments


def main(argv: Optional[Sequence[str]] = None) -> dict:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from asr import load_model
    from asr.errors import UserError

    check_tools(arguments.sets)
    raw = read_sentences(arguments.sentences) if {TRAINING, FESTIVAL} & set(arguments.sets) else []
    try:
        pipeline = load_model(arguments.model)
    except UserError as error:
        raise BenchError(str(error)) from None
    symbols = pipeline.alphabet.symbols
    sentences, left_out = choose_sentences(raw, symbols, arguments.count)
    if raw and not sentences:
        raise BenchError(f"{arguments.sentences}: no sentence fits the model's alphabet {''.join(symbols)!r}")
    if raw:
        log(f"{len(sentences)} sentences from {arguments.sentences} ({left_out} left out: digits or letters "
            f"outside the alphabet)")
    work = arguments.work_dir
    utterances: list[Utterance] = []
    for name in arguments.sets:
        utterances += real_speech(symbols, work) if name == REAL else synthesise_set(name, sentences, work)

    sphinx_seconds = run_pocketsphinx(utterances)
    log(f"pocketsphinx: {sum(sphinx_seconds):.1f}s for {len(utterances)} utterances")
    decoders = model_decoders(pipeline)
    warm_up(pipeline, decoders, utterances)
    seconds: dict[str, dict[str, float]] = {}
    for voice in dict.fromkeys(u.voice for u in utterances):
        indices = [index for index, u in enumerate(utterances) if u.voice == voice]
        seconds[voice] = run_model(pipeline, decoders, [utterances[index] for index in indices])
        seconds[voice]["pocketsphinx"] = sum(sphinx_seconds[index] for index in indices)
        log(f"{voice}: " + ", ".join(f"{name} {value:.1f}s" for name, value in seconds[voice].items()))
    for decoder in decoders.values():
        decoder.close()

    systems = [*decoders, "pocketsphinx"]
    meta = {"model": str(arguments.model), "sentences_file": str(arguments.sentences),
            "sentences": len(sentences), "sentences_left_out": left_out, "espeak_seed": ESPEAK_SEED,
            "decoder": {name: getattr(decoder, "name", name) for name, decoder in decoders.items()},
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "python": platform.python_version(),
                        "platform": platform.platform()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report = build_report(utterances, seconds, systems, symbols, meta)
    print(f"model {arguments.model}; {len(sentences)} unseen sentences per voice; RTF = wall s / audio s, one process, "
          f"{os.cpu_count()} CPUs, load average {meta['machine']['load_average']:.1f}")
    print(format_table(report))
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        log(f"report written to {arguments.out}")
    return report


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
