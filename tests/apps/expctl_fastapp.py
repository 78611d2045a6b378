"""A trivial job without Hydra's start-up cost, for expctl's many-job tests and benchmarks.

Takes the daemon's arguments (``--config-path D --config-name N hydra.run.dir=...``), reads the
flat ``key: value`` lines of ``D/N.yaml`` (``sleep``, ``sleep_on_resume``, ``exit_code``),
appends ``job_id attempt resume pid start_time`` to the file named by ``EXPCTL_TEST_RECORD``
(resume: 1 from the second attempt on), sleeps and exits as configured. With ``outputs: 1`` it
leaves in its run dir what a training app does (docs/contract.md): ``metrics.jsonl``,
``result.json``, and ``environment.json`` with the contract's variables it was given. With ``--cfg job`` it prints its overrides as a config, like a
Hydra app, so it can be enqueued through the CLI too.
"""

import time

STARTED_AT = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

CONTRACT_PREFIXES = ("EXPCTL_", "CUDA_", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")


def _config(arguments: list) -> dict:
    if "--config-path" not in arguments or "--config-name" not in arguments:
        return {}
    folder = arguments[arguments.index("--config-path") + 1]
    name = arguments[arguments.index("--config-name") + 1]
    values = {}
    with open(os.path.join(folder, name + ".yaml"), encoding="utf-8") as config:
        for line in config:
            if ":" in line:
                key, value = line.split(":", 1)
                values[key.strip()] = value.strip()
    return values


def _write_outputs(arguments: list) -> None:
    """What a training app leaves in its run dir (``hydra.run.dir=...``, relative to the daemon's folder)."""
    folder = next(argument.split("=", 1)[1] for argument in arguments if argument.startswith("hydra.run.dir="))
    os.makedirs(folder, exist_ok=True)
    given = {key: value for key, value in os.environ.items() if key.startswith(CONTRACT_PREFIXES)}
    with open(os.path.join(folder, "environment.json"), "w", encoding="utf-8") as file:
        json.dump(given, file)
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as file:
        for epoch in (1, 2):
            file.write(json.dumps({"epoch": epoch, "loss": 3.0 / epoch, "val_loss": 2.0 / epoch, "val_wer": 0.9,
                                   "val_cer": 0.5, "learning_rate": 0.001}) + "\n")
    with open(os.path.join(folder, "result.json"), "w", encoding="utf-8") as file:
        json.dump({"epochs_run": 2, "best_val_loss": 1.0, "test": {"wer": 0.8, "cer": 0.4}, "history": [1, 2]}, file)


def main() -> None:
    """Record the run, then sleep and exit as configured (or print a config for ``--cfg job``)."""
    arguments = sys.argv[1:]
    if "--cfg" in arguments:
        overrides = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
        sys.stdout.write("fast: true\n" + "".join(f"{o.split('=', 1)[0]}: {o.split('=', 1)[1]}\n" for o in overrides))
        return
    config = _config(arguments)
    attempt = os.environ.get("EXPCTL_ATTEMPT", "-")
    resume = "1" if attempt.isdigit() and int(attempt) > 1 else "0"
    record = os.environ.get("EXPCTL_TEST_RECORD")
    if record:
        line = " ".join([os.environ.get("EXPCTL_JOB_ID", "-"), os.environ.get("EXPCTL_ATTEMPT", "-"),
                         resume, str(os.getpid()), f"{STARTED_AT:.6f}"])
        descriptor = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(descriptor, (line + "\n").encode())
        os.close(descriptor)
    if config.get("outputs") == "1":
        _write_outputs(arguments)
    sleep = float(config.get("sleep", 0))
    if resume == "1" and "sleep_on_resume" in config:
        sleep = float(config["sleep_on_resume"])
    if sleep > 0:
        time.sleep(sleep)
    sys.exit(int(config.get("exit_code", 0)))


if __name__ == "__main__":
    main()
