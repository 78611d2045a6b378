"""Benchmark of the beam search's width: WER, CER and decoding speed of beam+LM per beam width.

The acoustic model runs once over a manifest (a dev split: choosing a width is model selection, so
never a test set or a held-out voice); each width then decodes the same logits in one process, with
the bundle's LM and tuned weights. RTF = decoding seconds / audio seconds (add the acoustic model's,
printed once, for the whole path). Run:
``.venv/bin/python bench/beam_width.py --model en --manifest data/en/dev.jsonl --count 400 --widths 16,32,64,128``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from asr.decoding.decoders import make_decoder
from asr.evaluate import read_references
from asr.inference import decode_logits, logits_of_files
from asr.metrics import cer, wer
from asr.pipeline import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="en", help="model name or bundle path")
    parser.add_argument("--manifest", type=Path, required=True, help="a dev manifest (never test data)")
    parser.add_argument("--count", type=int, default=400, help="first N utterances of the manifest")
    parser.add_argument("--widths", default="16,32,64,128", help="comma-separated beam widths")
    arguments = parser.parse_args()
    widths = [int(width) for width in arguments.widths.split(",")]

    files, references, _ = read_references(arguments.manifest)
    files, references = files[: arguments.count], references[: arguments.count]
    pipeline = load_model(arguments.model)
    started = time.perf_counter()
    logits, durations = logits_of_files(pipeline.model, pipeline.configuration, files)
    audio_seconds = sum(durations)
    config = pipeline.configuration.decoder
    print(f"{len(files)} utterances, {audio_seconds:.0f} s of audio from {arguments.manifest}; features and acoustic "
          f"model RTF {(time.perf_counter() - started) / audio_seconds:.4f}; alpha {config.alpha}, beta {config.beta}")
    print(f"{'width':>5}  {'WER':>7}  {'CER':>7}  {'decode RTF':>10}")
    for width in widths:
        settings = {**dict(config), "name": "beam_lm", "beam_width": width}
        with make_decoder(settings, pipeline.alphabet, lm_path=pipeline.language_model, workers=1) as decoder:
            decode_logits(decoder, logits[:2])  # the LM's first use is not the width's cost
            started = time.perf_counter()
            hypotheses = decode_logits(decoder, logits)
            seconds = time.perf_counter() - started
        print(f"{width:>5}  {wer(references, hypotheses):>7.2%}  {cer(references, hypotheses):>7.2%}  "
              f"{seconds / audio_seconds:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
