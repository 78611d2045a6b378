"""Tiny Hydra app with a typed config: records each run, sleeps, exits with a chosen code.

Each run appends one line ``job_id attempt resume pid start_time`` to ``record`` (O_APPEND), so
tests can prove each job ran exactly once; ``spawn_grandchild`` starts a sleeping grandchild
whose pid goes to ``grandchild_pid_file``.
"""

import time

STARTED_AT = time.time()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import MISSING  # noqa: E402


@dataclass
class ModelConfig:
    """A nested group, to exercise config groups and list overrides."""

    sizes: list[int] = field(default_factory=lambda: [8])


@dataclass
class AppConfig:
    """The typed schema: a wrong type or unknown key is refused at composition."""

    lr: float = 0.001
    steps: int = 1
    sleep: float = 0.0
    exit_code: int = 0
    record: str = ""
    spawn_grandchild: bool = False
    grandchild_pid_file: str = ""
    tag: str = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)


ConfigStore.instance().store(name="schema", node=AppConfig)


def _append(path: str, line: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (line + "\n").encode())
    finally:
        os.close(descriptor)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(config: AppConfig) -> None:
    """Record this run, then sleep and exit as configured."""
    job_id = os.environ.get("EXPCTL_JOB_ID", "-")
    attempt = os.environ.get("EXPCTL_ATTEMPT", "-")
    resume = "1" if attempt.isdigit() and int(attempt) > 1 else "0"  # a retry resumes
    if config.record:
        _append(config.record, f"{job_id} {attempt} {resume} {os.getpid()} {STARTED_AT:.6f} {config.tag}")
    print(f"testapp: job {job_id} attempt {attempt} lr={config.lr} sizes={list(config.model.sizes)}", flush=True)
    if config.spawn_grandchild:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        if config.grandchild_pid_file:
            _append(config.grandchild_pid_file, str(grandchild.pid))
    if config.sleep:
        time.sleep(config.sleep)
    if config.exit_code:
        sys.exit(config.exit_code)


if __name__ == "__main__":
    main()
