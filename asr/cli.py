"""The ``asr`` command line: corpora, language models, transcription and evaluation.

Each command imports its module inside its function: those modules load TensorFlow (about 5 s),
and ``asr --help`` or a typo must answer at once. These are the only function-level imports here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer

from asr.errors import UserError, run_cli

app = typer.Typer(help="Speech recognition on Keras.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Corpora: synthesise or import, write manifests.", no_args_is_help=True)
import_app = typer.Typer(help="Turn a corpus folder into JSON-lines manifests.", no_args_is_help=True)
lm_app = typer.Typer(help="N-gram language models for beam search.", no_args_is_help=True)
models_app = typer.Typer(help="Models by name: shipped in the package, in ~/.cache/asr/models or $ASR_MODELS_DIR.",
                         no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
app.add_typer(lm_app, name="lm")
app.add_typer(models_app, name="models")

MODEL_HELP = "Model name (en; see asr models list) or bundle path (.bin)."

Result = TypeVar("Result")


def _run(action: Callable[[], Result]) -> Result:
    """Run a command body; a user mistake becomes one ``error:`` line and exit code 2."""
    try:
        return action()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="Folder for wavs/ and the manifests."),
    count: int = typer.Option(400, help="Number of utterances."),
    seed: int = typer.Option(0, help="Same seed, same corpus."),
    jobs: int = typer.Option(2, help="Worker processes."),
    engines: str = typer.Option("espeak", help="Comma-separated synthesizers: espeak, flite, dectalk, mbrola, pico (all but espeak: make voices)."),
    text: str = typer.Option("generator", help="Comma-separated text sources: generator, fortunes, wordnet (Debian fortunes, wordnet-base)."),
    room: float = typer.Option(0.0, help="Share of utterances given a simulated room, band limit or noise (0..1)."),
    room_effects: str = typer.Option("reverb,band,noise", help="Which of the room's effects to keep (comma-separated)."),
    splits: str = typer.Option("train=0.8,dev=0.1,test=0.1", help="Split shares, name=fraction,..."),
) -> None:
    """Synthesise an offline English corpus (16 kHz WAVs + manifests), reproducible from its seed."""
    from asr.data import synth

    _run(lambda: synth.main(out=out, count=count, seed=seed, jobs=jobs, engines=engines, text=text, room=room,
                               splits=splits, room_effects=room_effects))


@import_app.command("librispeech")
def import_librispeech(
    folder: Path = typer.Argument(..., help="A LibriSpeech split folder (speaker/chapter/*.flac)."),
    out: Path = typer.Option(..., help="Manifest to write (JSON lines)."),
    max_duration: float = typer.Option(20.0, help="Skip longer clips (seconds)."),
) -> None:
    """Import LibriSpeech (FLAC + *.trans.txt)."""
    from asr.data import importers

    _run(lambda: importers.import_librispeech(folder, out, max_duration=max_duration))


@import_app.command("commonvoice")
def import_commonvoice(
    folder: Path = typer.Argument(..., help="A Common Voice folder (*.tsv + clips/)."),
    out: Path = typer.Option(..., help="Manifest to write (JSON lines)."),
    split: str = typer.Option("train", help="Which TSV to read (train, dev, test, validated)."),
    max_duration: float = typer.Option(20.0, help="Skip longer clips (seconds)."),
) -> None:
    """Import Common Voice (TSV + MP3 clips)."""
    from asr.data import importers

    _run(lambda: importers.import_commonvoice(folder, out, split=split, max_duration=max_duration))


@lm_app.command("build")
def lm_build(
    text: Path = typer.Option(..., help="Training text, one sentence per line."),
    out: Path = typer.Option(..., help="ARPA file to write."),
    order: int = typer.Option(3, help="N-gram order."),
) -> None:
    """Build an n-gram language model (ARPA) from a text corpus."""
    from asr.decoding import lm

    _run(lambda: lm.build_main(text=text, out=out, order=order))


@lm_app.command("tune")
def lm_tune(
    model: str = typer.Option(..., help="Model bundle (.bin)."),
    manifest: Path = typer.Option(..., help="Dev manifest to tune on."),
    lm_path: Optional[Path] = typer.Option(None, "--lm", help="LM to use (default: the bundle's)."),
    trials: int = typer.Option(20, help="Random-search trials (0: a 5x5 grid)."),
    write: bool = typer.Option(True, help="Write the best alpha/beta into the bundle."),
) -> None:
    """Search the LM weight alpha and word bonus beta on a dev manifest."""
    from asr import evaluate as evaluate_module

    _run(lambda: evaluate_module.tune_main(model=model, manifest=manifest, lm_path=lm_path, trials=trials, write=write))


@app.command("transcribe")
def transcribe(
    files: List[Path] = typer.Argument(..., help="Audio files."),
    model: str = typer.Option(..., help=MODEL_HELP),
    decoder: Optional[str] = typer.Option(None, help="greedy, beam or beam_lm (default: the bundle's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file."),
) -> None:
    """Transcribe audio files."""
    from asr import transcribe as transcribe_module

    _run(lambda: transcribe_module.main(files=files, model=model, decoder=decoder, as_json=as_json))


@app.command("evaluate")
def evaluate(
    model: str = typer.Option(..., help=MODEL_HELP),
    manifest: Path = typer.Option(..., help="Manifest with reference transcripts."),
    decoder: Optional[str] = typer.Option(None, help="greedy, beam or beam_lm (default: the bundle's)."),
    report: Optional[Path] = typer.Option(None, help="Write a JSON report here."),
    worst: int = typer.Option(10, help="How many worst utterances to show."),
    record: bool = typer.Option(False, "--record", help="Write the figures into the bundle as its test figures "
                                                       "(shown by asr models list)."),
) -> None:
    """WER and CER of a model on a manifest, with a per-utterance table."""
    from asr import evaluate as evaluate_module

    _run(lambda: evaluate_module.main(model=model, manifest=manifest, decoder=decoder, report=report, worst=worst,
                                      record=record))


@app.command("export")
def export(
    model: str = typer.Option(..., help=MODEL_HELP + " Or models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model."),
    fmt: str = typer.Option(..., "--format", help="saved_model, tflite, or onnx (needs: pip install tf2onnx onnx)."),
    out: Path = typer.Option(..., help="Folder to create (new or empty)."),
    quantize: str = typer.Option("none", help="none, or dynamic (tflite: int8 weights, float activations)."),
) -> None:
    """Export a model for deployment: SavedModel, TFLite or ONNX; raw 16 kHz audio in, CTC logits out."""
    from asr.serving import export as export_module

    def run() -> None:
        path = export_module.export(model, fmt, out, quantize=quantize)
        typer.echo(f"wrote {path} ({export_module.describe(path)})")

    _run(run)


@models_app.command("list")
def models_list(
    as_json: bool = typer.Option(False, "--json", help="One JSON document: the folders searched and the models."),
) -> None:
    """Installed models: name, where, size, parameters, test WER/CER and decoder from each bundle's metadata."""
    from asr.pretrained import registry as models_registry

    _run(lambda: models_registry.list_main(as_json=as_json))


def main() -> None:
    run_cli(app, "asr")


if __name__ == "__main__":
    main()
