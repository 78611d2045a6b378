"""Distributed training on CPU: MirroredStrategy over two logical CPUs, two MultiWorkerMirroredStrategy workers.

Every run happens in child processes: logical devices and ``TF_CONFIG`` must be set before
TensorFlow initialises, and the pytest process's own runtime must stay untouched.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from asr.data.synth import synthesize_corpus

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.parameters.rnn_type=gru", "model.parameters.rnn_sizes=[16]", "model.parameters.conv_filters=[4]",
        "model.parameters.conv_kernels=[[11,21]]", "model.parameters.conv_strides=[[2,2]]",
        "trainer.batch_size=4", "trainer.epochs=1", "trainer.val_decode_limit=2", "optimizer.schedule=constant",
        "trainer.early_stopping_patience=0"]
TIMEOUT = 400

# Runs ``python -m asr.train`` in-process after splitting the CPU into two logical devices, and
# reports how many replicas the app's strategy had (the real strategy, only observed).
MIRRORED_SCRIPT = textwrap.dedent("""
    import runpy, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import asr.training.strategy

    make_strategy = asr.training.strategy.make_strategy

    def observed_make_strategy(name):
        strategy = make_strategy(name)
        print(f"REPLICAS {type(strategy).__name__} {strategy.num_replicas_in_sync}", flush=True)
        return strategy

    asr.training.strategy.make_strategy = observed_make_strategy
    sys.argv = ["asr.train", *sys.argv[1:]]
    runpy.run_module("asr.train", run_name="__main__")
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=24, seed=0, quiet=True)


def data_overrides(corpus: dict, test: bool = True) -> list[str]:
    return [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}",
            f"data.test_manifest={corpus['test'] if test else 'null'}"]


def child_environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    return {**environment, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **extra}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def model_variables(checkpoint_prefix: Path) -> dict[str, np.ndarray]:
    """The model's variables in a ``tf.train.Checkpoint`` (optimizer slots and counters left out)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(checkpoint_prefix))
    names = [name for name in reader.get_variable_to_shape_map()
             if name.startswith("model/") and name.endswith("VARIABLE_VALUE")]
    return {name: reader.get_tensor(name) for name in names}


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus_trains_one_epoch(corpus, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    exp = tmp_path / "exp"
    started = time.perf_counter()
    run = subprocess.run([sys.executable, str(script), *TINY, *data_overrides(corpus, test=False),
                          "trainer.strategy=mirrored", f"hydra.run.dir={exp}"],
                         cwd=REPO, env=child_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "REPLICAS MirroredStrategy 2" in run.stdout, run.stdout[-2000:]
    result = json.loads((exp / "result.json").read_text())
    assert result["epochs_run"] == 1
    assert math.isfinite(result["final"]["loss"]) and math.isfinite(result["final"]["val_loss"])
    assert (exp / "checkpoints" / "ckpt-1.index").is_file()
    print(f"mirrored, 2 logical CPUs: {time.perf_counter() - started:.1f} s")


@pytest.mark.slow
def test_two_workers_on_localhost_end_with_identical_weights(corpus, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    exp = tmp_path / "exp"  # shared, as on a shared file system: only the chief writes into it
    started = time.perf_counter()
    for index in range(2):
        scratch = tmp_path / f"tmp-{index}"  # a non-chief's checkpoints go under its TMPDIR
        scratch.mkdir()
        environment = child_environment(TF_CONFIG=json.dumps({"cluster": cluster,
                                                               "task": {"type": "worker", "index": index}}),
                                        TMPDIR=str(scratch))
        log = open(tmp_path / f"worker-{index}.log", "w")
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "asr.train", *TINY, *data_overrides(corpus, test=False),
             "trainer.strategy=multi_worker", f"exp_dir={exp}", f"hydra.run.dir={tmp_path / f'run-{index}'}"],
            cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        codes = [process.wait(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"worker-{index}.log").read_text()[-3000:] for index in range(2)]
    assert codes == [0, 0], outputs
    result = json.loads((exp / "result.json").read_text())  # only the chief writes results
    assert result["epochs_run"] == 1 and math.isfinite(result["final"]["loss"])
    worker_checkpoints = list((tmp_path / "tmp-1").glob("asr-worker-worker-1*/checkpoints"))
    assert len(worker_checkpoints) == 1, list((tmp_path / "tmp-1").rglob("*"))
    chief_weights = model_variables(exp / "checkpoints" / "ckpt-1")
    worker_weights = model_variables(worker_checkpoints[0] / "ckpt-1")
    assert chief_weights and chief_weights.keys() == worker_weights.keys()
    for name, value in chief_weights.items():
        np.testing.assert_array_equal(value, worker_weights[name], err_msg=name)
    print(f"two workers: {time.perf_counter() - started:.1f} s")
