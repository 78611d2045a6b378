"""A trivial job without Hydra's start-up cost, for expctl's many-job tests and benchmarks.

Takes the daemon's arguments (``--config-path D --config-name N hydra.run.dir=...``), reads the
flat ``key: value`` lines of ``D/N.yaml`` (``sleep``, ``sleep_on_resume``, ``exit_code``),
appends ``job_id attempt resume pid start_time`` to the file named by ``EXPCTL_TEST_RECORD``,
sleeps and exits as configured. With ``--cfg job`` it prints its overrides as a config, like a
Hydra app, so it can be enqueued through the CLI too.
"""

import time

STARTED_AT = time.time()

import os  # noqa: E402
import sys  # noqa: E402


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


def main() -> None:
    """Record the run, then sleep and exit as configured (or print a config for ``--cfg job``)."""
    arguments = sys.argv[1:]
    if "--cfg" in arguments:
        overrides = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
        sys.stdout.write("fast: true\n" + "".join(f"{o.split('=', 1)[0]}: {o.split('=', 1)[1]}\n" for o in overrides))
        return
    config = _config(arguments)
    resume = os.environ.get("EXPCTL_RESUME", "0")
    record = os.environ.get("EXPCTL_TEST_RECORD")
    if record:
        line = " ".join([os.environ.get("EXPCTL_JOB_ID", "-"), os.environ.get("EXPCTL_ATTEMPT", "-"),
                         resume, str(os.getpid()), f"{STARTED_AT:.6f}"])
        descriptor = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(descriptor, (line + "\n").encode())
        os.close(descriptor)
    sleep = float(config.get("sleep", 0))
    if resume == "1" and "sleep_on_resume" in config:
        sleep = float(config["sleep_on_resume"])
    if sleep > 0:
        time.sleep(sleep)
    sys.exit(int(config.get("exit_code", 0)))


if __name__ == "__main__":
    main()
