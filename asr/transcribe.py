"""``asr transcribe FILES… --model M [--decoder greedy|beam|beam_lm] [--json]``.

Prints one line per file (``path<TAB>text``) or one JSON object per file, in input order; the
work is :func:`asr.inference.transcribe_files`. Unreadable files are reported after the others.

The arguments (files, model name) are checked before TensorFlow is imported (about 5 s, and lines of
its own on stderr): a mistake answers at once, in one line. Hence the imports inside :func:`main`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from asr.errors import UserError
from asr.pretrained.registry import resolve_model_path


def main(files: Sequence[Path], model: str, decoder: Optional[str] = None, as_json: bool = False) -> None:
    """``asr transcribe``."""
    if not files:
        raise UserError("no audio files given")
    missing = [str(path) for path in files if not Path(path).is_file()]
    if len(missing) == len(files):  # nothing to transcribe: say so before the model loads
        raise UserError(f"audio file not found: {', '.join(missing)}")
    bundle = resolve_model_path(model)
    from asr.inference import transcribe_files  # TensorFlow: see the module docstring
    from asr.pipeline import load_model

    pipeline = load_model(bundle)
    failures: list[tuple[int, str]] = []
    with pipeline.decoder(decoder) as chosen:
        # the readable files are transcribed and printed; the others are reported after them
        for transcript in transcribe_files(pipeline.model, pipeline.configuration, files, chosen, failures=failures):
            if as_json:
                print(json.dumps(transcript.to_dict(), ensure_ascii=False))
            else:
                print(f"{transcript.path}\t{transcript.text}")
    sys.stdout.flush()
    if len(failures) == 1:
        raise UserError(failures[0][1])
    if failures:
        reasons = "; ".join(reason for _index, reason in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        raise UserError(f"{len(failures)} of {len(files)} files could not be transcribed: {reasons}{more}")
