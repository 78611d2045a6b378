"""Transcribe the demo's samples with a packaged model, each beside its reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asr import load_model
from asr.metrics import wer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest", type=Path, help="JSON lines with audio_filepath, text (and voice)")
    parser.add_argument("--model", default="en")
    arguments = parser.parse_args()
    records = [json.loads(line) for line in arguments.manifest.read_text(encoding="utf-8").splitlines() if line]
    files = [str(arguments.manifest.parent / record["audio_filepath"]) for record in records]
    pipeline = load_model(arguments.model)
    sentences = pipeline(files)
    table = Table(title=f"model {escape(arguments.model)!s}, decoder {pipeline.configuration.config.decoder.name}: "
                        "voices and sentences it never heard")
    for column in ("voice", "reference", "transcript"):
        table.add_column(column)
    for record, sentence in zip(records, sentences):
        table.add_row(escape(record.get("voice", "?")), escape(record["text"]), escape(sentence))
    Console().print(table)
    print(f"WER {wer([record['text'] for record in records], sentences):.3f} on {len(records)} utterances")


if __name__ == "__main__":
    main()
