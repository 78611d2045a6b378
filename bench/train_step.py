"""Training-step throughput of the default model on CPU: thread settings.

    .venv/bin/python bench/train_step.py            # each variant in a fresh process, batches of 16 and 32

Random features of 2.7 s utterances (270 frames x 26 MFCCs), 40-symbol transcripts, the trainer's
CTC loss and Adam; prints milliseconds per step and audio-seconds per second. Variants: TensorFlow's
default threads vs one thread per op (``trainer.intra_op_threads``). (``ProjectedGRU``, a GRU with the
input projection outside Keras' loop, was measured here too; its speed-up did not reproduce, +-1 %.)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import os
import subprocess
import time

FRAMES, LABELS, STEPS = 270, 40, 8
VARIANTS = [("TF default threads", 0), ("1 thread per op (the CPU default)", 1)]


def measure(intra_op: int, batch: int) -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf  # here, after TF_CPP_MIN_LOG_LEVEL is set, in the variant's own process

    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    import keras
    from omegaconf import OmegaConf

    from asr.models import architectures as models
    from asr.configuration import ModelConfig
    from asr.models.ctc import ctc_loss

    config = OmegaConf.structured(ModelConfig())
    model, optimizer = models.build_model(config, 26, 29), keras.optimizers.Adam(1e-3)
    features = tf.random.normal([batch, FRAMES, 26])
    labels = tf.random.uniform([batch, LABELS], 1, 28, dtype=tf.int32)
    logit_lengths = models.output_lengths(tf.fill([batch], FRAMES), config)

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(ctc_loss(labels, model(features, training=True), tf.fill([batch], LABELS),
                                           logit_lengths))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    step().numpy(), step().numpy()  # trace and warm up
    started = time.perf_counter()
    for _ in range(STEPS):
        step().numpy()
    seconds = (time.perf_counter() - started) / STEPS
    print(f"{seconds * 1000:7.0f} ms/step {batch * FRAMES / 100 / seconds:8.1f} audio-s/s", flush=True)


def main() -> None:
    if len(sys.argv) == 3:
        measure(int(sys.argv[1]), int(sys.argv[2]))
        return
    print(f"default deepspeech2 model, {os.cpu_count()} CPUs, {FRAMES} frames per utterance, {STEPS} timed steps")
    for batch in (16, 32):
        for name, intra_op in VARIANTS:
            run = subprocess.run([sys.executable, __file__, str(intra_op), str(batch)], capture_output=True,
                                 text=True, check=True)
            print(f"batch {batch:2d}  {name:42s}{run.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
