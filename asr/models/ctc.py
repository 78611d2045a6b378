"""CTC loss with real per-utterance lengths; blank is label 0, logits are batch-major."""

from __future__ import annotations

import tensorflow as tf


def ctc_loss(labels: tf.Tensor, logits: tf.Tensor, label_lengths: tf.Tensor, logit_lengths: tf.Tensor) -> tf.Tensor:
    """Per-utterance negative log-likelihood ``[B]`` (float32).

    ``labels`` ``[B, L]`` int32 (1-based symbols, padding ignored), ``logits`` ``[B, T, V]``,
    ``label_lengths`` and ``logit_lengths`` ``[B]`` the true lengths (logit lengths after the
    model's striding, see ``asr.models.architectures.output_lengths``).
    """
    return tf.nn.ctc_loss(
        labels=tf.cast(labels, tf.int32),
        logits=tf.cast(logits, tf.float32),
        label_length=tf.cast(label_lengths, tf.int32),
        logit_length=tf.cast(logit_lengths, tf.int32),
        logits_time_major=False,
        blank_index=0,
    )


def minimum_frames(labels: list[int]) -> int:
    """Fewest logit frames CTC needs for ``labels``: one per label plus a blank between repeats."""
    repeats = sum(1 for previous, current in zip(labels, labels[1:]) if previous == current)
    return len(labels) + repeats
