"""The one inference path (asr.inference): batches of similar length give what one file at a time gives.

The packaged model `en` and its Festival samples (recipes/en/samples) make the logits those of
real speech; each sample is also cut short, so that the files differ in length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr import load_model
from asr.inference import (
    MAX_BATCH_SIZE,
    decode_logits,
    features_of_files,
    forward,
    length_buckets,
    logits_of_features,
    pad_logits,
    transcribe_features,
)
from asr.models.architectures import output_lengths

SAMPLES = Path(__file__).resolve().parents[1] / "recipes" / "en" / "samples"


@pytest.fixture(scope="module")
def pipeline():
    return load_model("en")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The six samples, then each one's first half and first third: 18 files of different lengths, mixed."""
    folder = tmp_path_factory.mktemp("inference")
    records = [json.loads(line) for line in (SAMPLES / "festival.jsonl").read_text().splitlines()]
    originals = [SAMPLES / record["audio_filepath"] for record in records]
    made = []
    for index, original in enumerate(originals):
        signal, rate = soundfile.read(original, dtype="float32")
        for share in (2, 3):
            cut = folder / f"{index}-{share}.wav"
            soundfile.write(cut, signal[: len(signal) // share], rate)
            made.append(cut)
    return [path for pair in zip(originals, made[::2], made[1::2]) for path in pair]


def test_many_files_of_different_lengths_give_what_one_file_at_a_time_gives(pipeline, files) -> None:
    together = pipeline(files)
    assert len(together) == len(files) and any(together)
    assert together == [pipeline([path])[0] for path in files]


def test_full_returns_the_padded_features_logits_and_sentences(pipeline, files) -> None:
    X, y_hat, sentences = pipeline(files[:4], full=True)
    features = features_of_files(files[:4], pipeline.configuration.features)
    lengths = [len(item) for item in features]
    assert X.shape == (4, max(lengths), pipeline.configuration.features.num_features)
    assert y_hat.shape == (4, int(output_lengths(max(lengths), pipeline.configuration.model)), len(pipeline.alphabet) + 1)
    shortest = int(np.argmin(lengths))
    padded = y_hat[shortest, int(output_lengths(lengths[shortest], pipeline.configuration.model)):]
    assert len(padded) and (padded.argmax(axis=-1) == 0).all()  # a confident blank, as the model writes it
    np.testing.assert_allclose(y_hat, forward(pipeline.model, X), atol=1e-3)  # one padded batch: the same
    assert pipeline.decode(y_hat) == sentences == pipeline(files[:4])


def test_logits_lose_each_utterances_padding_whatever_its_batch(pipeline, files) -> None:
    features = features_of_files(files, pipeline.configuration.features) * 3  # 54: more than one batch
    assert len(length_buckets([len(item) for item in features])) > 1
    logits = logits_of_features(pipeline.model, pipeline.configuration.model, features)
    for item, logit in zip(features[:len(files)], logits):
        alone = forward(pipeline.model, item[None])[0]
        assert logit.shape == alone.shape
        np.testing.assert_allclose(logit, alone, atol=1e-3)
    with pipeline.decoder("greedy") as greedy:
        assert transcribe_features(pipeline.model, pipeline.configuration.model, features, greedy) == (
            decode_logits(greedy, logits))


def test_batches_hold_similar_lengths_within_their_limits() -> None:
    lengths = [50, 10, 400, 30, 20, 400, 5] + [7] * 40
    batches = length_buckets(lengths, max_frames=800, max_size=MAX_BATCH_SIZE)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= MAX_BATCH_SIZE
        assert len(batch) == 1 or max(lengths[index] for index in batch) * len(batch) <= 800
    flattened = [lengths[index] for batch in batches for index in batch]
    assert flattened == sorted(lengths)  # shortest first, so a batch holds neighbours in length
    assert length_buckets([5000], max_frames=800, max_size=4) == [[0]]  # too long alone: still transcribed


def test_padded_logits_are_a_confident_blank() -> None:
    batch = pad_logits([np.ones((3, 4), np.float32), np.ones((1, 4), np.float32)])
    assert batch.shape == (2, 3, 4)
    np.testing.assert_array_equal(batch[1, 1:].argmax(axis=-1), [0, 0])
    assert (batch[1, 1:, 1:] < -1000).all()
