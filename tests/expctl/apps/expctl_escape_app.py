"""A job whose helpers escape its process group, for expctl's tests (run as ``python -m expctl_escape_app``).

Reads the flat ``key: value`` lines of the frozen config (like expctl_fastapp) and starts two
helpers that leave the job's process group: one with ``setsid`` (``start_new_session``), one that
daemonizes (fork, setsid, fork; its parents exit). Both append their pid to ``pid_file``. Then it
sleeps ``sleep`` seconds (ignoring SIGTERM when ``ignore_sigterm`` is true) and exits ``exit_code``.
With ``--cfg job`` it prints its overrides as a config, like a Hydra app.
"""

import os
import signal
import subprocess
import sys
import time

_DAEMONIZE = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
time.sleep(600)
"""
_SETSID = """
import os, sys, time
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
time.sleep(600)
"""


def _config(arguments: list) -> dict:
    folder = arguments[arguments.index("--config-path") + 1]
    name = arguments[arguments.index("--config-name") + 1]
    with open(os.path.join(folder, name + ".yaml"), encoding="utf-8") as config:
        return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in config if ":" in line)}


def main() -> None:
    """Start the escaping helpers, then sleep and exit as configured."""
    arguments = sys.argv[1:]
    if "--cfg" in arguments:
        sys.stdout.write("".join(f"{o.split('=', 1)[0]}: {o.split('=', 1)[1]}\n" for o in arguments if "=" in o))
        return
    config = _config(arguments)
    if config.get("ignore_sigterm") == "true":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid_file = config["pid_file"]
    subprocess.Popen([sys.executable, "-c", _SETSID, pid_file], start_new_session=True)
    subprocess.run([sys.executable, "-c", _DAEMONIZE, pid_file], check=True)
    print("escape app: helpers started", flush=True)
    time.sleep(float(config.get("sleep", 0)))
    sys.exit(int(config.get("exit_code", 0)))


if __name__ == "__main__":
    main()
