"""A trivial job without Hydra's start-up cost, for expctl's many-job tests and benchmarks.

Takes the daemon's arguments (``--config-dir D --config-name N hydra.run.dir=...``), appends
``job_id attempt resume pid start_time`` to the file named by ``EXPCTL_TEST_RECORD`` and exits 0.
With ``--cfg job`` it prints a config like a Hydra app, so it can be enqueued through the CLI too.
"""

import time

STARTED_AT = time.time()

import os  # noqa: E402
import sys  # noqa: E402


def main() -> None:
    """Record the run (or print a config for ``--cfg job``)."""
    arguments = sys.argv[1:]
    if "--cfg" in arguments:
        overrides = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
        sys.stdout.write("fast: true\n" + "".join(f"{o.split('=', 1)[0]}: {o.split('=', 1)[1]}\n" for o in overrides))
        return
    record = os.environ.get("EXPCTL_TEST_RECORD")
    if record:
        line = " ".join([os.environ.get("EXPCTL_JOB_ID", "-"), os.environ.get("EXPCTL_ATTEMPT", "-"),
                         os.environ.get("EXPCTL_RESUME", "0"), str(os.getpid()), f"{STARTED_AT:.6f}"])
        descriptor = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(descriptor, (line + "\n").encode())
        os.close(descriptor)


if __name__ == "__main__":
    main()
