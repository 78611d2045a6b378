"""Compose many specs of one app in ONE process: ``python -m expctl.compose_child`` (run by expctl).

Reads ``{"app": ..., "specs": [[index, [argument, ...]], ...]}`` as JSON on stdin and runs the app
once per spec exactly as ``python -m APP ARGUMENTS --cfg job`` would (``runpy``, ``__main__``), so
Hydra composes and validates each config with the app's own schema; the app's imports are paid
once instead of once per job. Writes one JSON line per spec, ``{"index", "code", "stdout",
"stderr"}``, in order, and stops after the first refusal (the parent reports the first one).
expctl itself never imports the app: this child does, as the app's own ``--cfg job`` run did.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys


def _run(app: str, arguments: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [app, *arguments, "--cfg", "job"]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_module(app, run_name="__main__", alter_sys=True)
            except SystemExit as exit_request:
                code = exit_request.code if isinstance(exit_request.code, int) else int(exit_request.code is not None)
                if not isinstance(exit_request.code, (int, type(None))):
                    stderr.write(f"{exit_request.code}\n")
            except Exception as error:  # noqa: BLE001 - a crash of the app is its refusal of this spec
                code = 1
                stderr.write(f"Traceback (most recent call last):\n{type(error).__name__}: {error}\n")
    finally:
        sys.argv = saved_argv
    return code, stdout.getvalue(), stderr.getvalue()


def main() -> None:
    """Serve one batch from stdin (see the module docstring)."""
    request = json.load(sys.stdin)
    # Results go to a private copy of stdout; anything written straight to file descriptor 1
    # (a C library, a subprocess of the app) goes to stderr, never into the results.
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    app = request["app"]
    for index, arguments in request["specs"]:
        code, stdout, stderr = _run(app, arguments)
        results.write(json.dumps({"index": index, "code": code, "stdout": stdout, "stderr": stderr}) + "\n")
        results.flush()
        if code != 0:
            break
    results.close()


if __name__ == "__main__":
    main()
