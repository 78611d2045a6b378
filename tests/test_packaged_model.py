"""The packaged English model `en`: loads by name from anywhere, and recognises voices it never heard.

No test trains it (recipes/en does, through the queue); these load it. The samples are six
sentences of its test split spoken by Festival voices, which never enter training or model
selection (recipes/en/samples).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr import load_model
from asr.decoding.decoders import make_decoder
from asr.metrics import cer, wer
from asr.pretrained.registry import PACKAGE_FOLDER

REPOSITORY = Path(__file__).resolve().parents[1]
SAMPLES = REPOSITORY / "recipes" / "en" / "samples"
BUNDLE = PACKAGE_FOLDER / "en.bin"
# Measured with the shipped bundle: CER 0.248 greedy, 0.180 beam+LM (WER 0.77, 0.49); the bounds
# leave room for numeric differences between machines only.
MAX_FESTIVAL_CER = {"greedy": 0.30, "beam_lm": 0.22}


def samples() -> tuple[list[str], list[str]]:
    records = [json.loads(line) for line in (SAMPLES / "festival.jsonl").read_text().splitlines()]
    return [str(SAMPLES / record["audio_filepath"]) for record in records], [record["text"] for record in records]


@pytest.fixture(scope="module")
def pipeline():
    return load_model("en")


def test_the_bundle_ships_in_the_package_within_its_size_limit() -> None:
    assert BUNDLE.is_file(), "asr/pretrained/en.bin is missing: run recipes/en/package.sh"
    assert BUNDLE.stat().st_size <= 25 * 1024 * 1024


def test_default_decoder_is_beam_search_with_the_bundled_language_model(pipeline) -> None:
    assert pipeline.configuration.config.decoder.name == "beam_lm"
    assert pipeline.language_model is not None


@pytest.mark.parametrize("decoder", ["greedy", "beam_lm"])
def test_festival_voices_it_never_heard_are_recognised(pipeline, decoder: str) -> None:
    files, references = samples()
    _, y_hat, hypotheses = pipeline(files, full=True)  # the bundle's own decoder: beam_lm
    if decoder == "greedy":
        _, lengths = pipeline.get_features(files, return_lengths=True)
        hypotheses = make_decoder({"name": "greedy"}, pipeline.alphabet).decode(
            np.asarray(y_hat), pipeline.output_lengths(lengths))
    assert cer(references, hypotheses) <= MAX_FESTIVAL_CER[decoder], list(zip(references, hypotheses))
    assert wer(references, hypotheses) < 1.0


def test_transcribe_by_name_from_any_folder(tmp_path: Path) -> None:
    files, references = samples()
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run([sys.executable, "-m", "asr.cli", "transcribe", "--model", "en", "--decoder", "greedy",
                                "--json", *files[:2]], cwd=tmp_path, env=environment, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(line["text"] for line in lines)


def test_models_list_shows_en_with_its_figures(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "asr.cli", "models", "list", "--json"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    models = {model["name"]: model for model in json.loads(completed.stdout)["models"]}
    assert models["en"]["where"] == "package"
    assert models["en"]["parameters"] > 1_000_000
