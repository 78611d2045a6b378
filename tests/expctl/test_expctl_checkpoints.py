"""No job ships another's checkpoint (issue 12, item 2), through the queue with real tiny trainings:
a job given the exp_dir of a failed job that left a checkpoint fails with exit code 2 (never
retried) and the reason in its log, instead of "succeeding" with the other run's weights."""

from __future__ import annotations

import json

import pytest

from expctl.store import jobs

from expctl_helpers import Env
from tests.tiny_model import tiny_overrides  # test data only: expctl itself never imports asr

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

TINY = [*tiny_overrides(rnn_size=None), "trainer.early_stopping_patience=0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from asr.data.synth import synthesize_corpus  # test data only: expctl itself never imports asr

    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=12, seed=7, quiet=True)


def test_a_job_never_resumes_or_ships_another_jobs_checkpoint(any_world: Env, corpus) -> None:
    world = any_world
    data = [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}"]
    broken = world.root / "broken-test.jsonl"
    broken.write_text("not a manifest line\n")
    shared = "exp_dir=runs/shared"

    def enqueue(*overrides: str) -> int:
        result = world.run("enqueue", "config", *TINY, *data, shared, *overrides, check=True)
        return int(result.stdout.split("queued job ")[1].split(":")[0])

    # job A trains an epoch (its checkpoint is written), then fails on its test manifest
    first = enqueue("model.parameters.rnn_sizes=[16]", "trainer.epochs=1", f"data.test_manifest={broken}")
    daemon = world.daemon("--gpus", "none", "--until-empty", "--apps", "asr.train", "--backoff", "0.1")
    assert daemon.wait(600) == 0, world.daemon_logs()
    job = jobs.get_job(world.engine, first)
    assert job.status == "failed", (job.end_reason, world.daemon_logs())
    fingerprint = json.loads((world.root / "runs" / "shared" / "checkpoints" / "fingerprint.json").read_text())
    assert fingerprint["job"] == job.uuid

    # the folder is free again (A failed): B trains another model there, C the same one in another job
    def refused(rnn_size: int) -> tuple[jobs.Job, str]:
        """Queue a 2-epoch job of ``rnn_size`` into the shared folder, run it: it fails once with exit 2."""
        job_id = enqueue(f"model.parameters.rnn_sizes=[{rnn_size}]", "trainer.epochs=2",
                         f"data.test_manifest={corpus['test']}")
        daemon = world.daemon("--gpus", "none", "--until-empty", "--apps", "asr.train", "--backoff", "0.1")
        assert daemon.wait(600) == 0, world.daemon_logs()
        job = jobs.get_job(world.engine, job_id)
        assert (job.status, job.exit_code, job.attempt) == ("failed", 2, 1), (job.end_reason, world.daemon_logs())
        return job, (world.root / "experiments" / jobs.job_folder(job) / "job.log").read_text()

    job, log = refused(24)
    assert "it trains something else (model.parameters.rnn_sizes: [16] there, [24] here)" in log, log[-3000:]

    job, log = refused(16)
    assert f"it belongs to queue job {fingerprint['job']}, not to this job ({job.uuid})" in log, log[-3000:]
    assert not (world.root / "runs" / "shared" / "model.bin").exists()  # nobody shipped A's weights
