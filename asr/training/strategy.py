"""Which ``tf.distribute`` strategy a training run uses (``trainer.strategy``).

* ``auto``: ``MirroredStrategy`` when more than one GPU is visible, else the default strategy.
* ``default``: the default (single-device) strategy.
* ``mirrored``: ``MirroredStrategy`` over the visible GPUs (or the CPU).
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``; it must be
  created before TensorFlow runs any op, so call :func:`make_strategy` first thing.
  Keras' ``fit()`` is broken under it (keras-team/keras#20585), hence asr's own loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import tensorflow as tf

from asr.configuration import Strategy
from asr.errors import UserError

logger = logging.getLogger(__name__)


def configure_threads(intra_op: int | None, inter_op: int | None) -> None:
    """TensorFlow's thread pools (``trainer.intra_op_threads``, ``trainer.inter_op_threads``); 0: its default.

    ``intra_op=None`` means 1 on a machine without a GPU: an RNN step's matmuls are too small to
    gain from being split over cores, while one thread per op lets independent ops (the two
    directions of a bidirectional layer) run side by side: +25-50 % training-step throughput on 2
    cores (bench/train_step.py). Threads can only be set before TensorFlow starts its runtime;
    later calls leave them as they are (and say so in the log).
    """
    if intra_op is None:
        intra_op = 0 if tf.config.list_physical_devices("GPU") else 1
    wanted = {"intra": int(intra_op), "inter": int(inter_op or 0)}
    current = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    if wanted == current:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(wanted["intra"])
        tf.config.threading.set_inter_op_parallelism_threads(wanted["inter"])
    except RuntimeError:
        logger.info("TensorFlow is already running: thread pools stay at intra-op %d, inter-op %d",
                    current["intra"], current["inter"])


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy named by ``trainer.strategy``."""
    if name not in set(Strategy):
        raise UserError(f"trainer.strategy={name!r} is not one of {', '.join(Strategy)}")
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise UserError("trainer.strategy=multi_worker needs the TF_CONFIG environment variable")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise UserError(f"TF_CONFIG is not valid JSON: {error.msg}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes files (every worker but the chief writes to a scratch dir)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0
                                                        and "chief" not in resolver.cluster_spec().as_dict())


def writable_dir(strategy: tf.distribute.Strategy, directory: Path) -> Path:
    """``directory`` on the chief; a per-worker scratch folder elsewhere (collective saves need every worker)."""
    if is_chief(strategy):
        return directory
    resolver = strategy.cluster_resolver
    run_key = hashlib.blake2b(str(directory.resolve()).encode("utf-8"), digest_size=6).hexdigest()  # one per run
    return (Path(tempfile.gettempdir()) / f"asr-worker-{resolver.task_type}-{resolver.task_id}-{run_key}"
            / directory.name)
