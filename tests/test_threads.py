"""trainer.intra_op_threads / inter_op_threads reach TensorFlow before its runtime starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import sys, tensorflow as tf
from asr.training.strategy import configure_threads
intra, inter = (None if value == "None" else int(value) for value in sys.argv[1:3])
configure_threads(intra, inter)
tf.ones([1]) + 1  # the runtime starts: thread settings are final now
configure_threads(3, 3)  # too late: logged, not raised
print(tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
"""


@pytest.mark.parametrize(("intra", "inter", "expected"), [("None", "None", "1 0"), ("2", "3", "2 3"), ("0", "0", "0 0")])
def test_thread_settings_apply_before_the_runtime_starts_and_later_calls_change_nothing(intra, inter, expected):
    run = subprocess.run([sys.executable, "-c", CODE, intra, inter], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == expected
