"""Screenshot the MLflow UI's runs table of an experiment (for the README), with headless Chromium.

    python scripts/screenshot_mlflow.py                       # sqlite:///mlflow.db, experiment "demo"
    python scripts/screenshot_mlflow.py --store sqlite:////tmp/copy/mlflow.db --experiment asr \\
        --out docs/mlflow-ui.png

Starts ``mlflow server`` on the store (a free localhost port, one worker), finds the experiment
through the REST API, lets Chromium render ``#/experiments/<id>/runs`` (the UI is a React app:
``--virtual-time-budget`` gives its scripts time to fetch and draw the table), writes the PNG and
stops the server. Needs the Debian package ``chromium`` (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium reaches the server under this name (mapped to 127.0.0.1): on "localhost" the UI opens
# its chat-assistant panel over a third of the page.
PAGE_HOST = "mlflow.demo"


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def absolute_store(uri: str) -> str:
    """``sqlite:///mlflow.db`` → ``sqlite:////abs/path/mlflow.db`` (the server runs elsewhere)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def get_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


def wait_for_health(base: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: mlflow server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: mlflow server did not answer at {base}/health within {timeout_s:g} s")


def find_experiment(base: str, name: str | None) -> tuple[str, str]:
    """The id and name of experiment ``name``, else of the most recently updated one with runs."""
    if name:
        query = urllib.parse.urlencode({"experiment_name": name})
        try:
            experiment = get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
            return experiment["experiment_id"], experiment["name"]
        except OSError:
            print(f"experiment {name!r} not found: taking the most recently updated one", file=sys.stderr)
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 50, "order_by": ["last_update_time DESC"]}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        experiments = json.load(answer).get("experiments", [])
    for experiment in experiments:
        runs = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]], "max_results": 1}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(runs, timeout=10) as answer:
            if json.load(answer).get("runs"):
                return experiment["experiment_id"], experiment["name"]
    raise SystemExit("error: the store has no experiment with runs")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("error: Chromium not found: apt-get install -y chromium")


def screenshot(url: str, out: Path, budget_ms: int, size: str) -> None:
    """Render ``url`` headless (``PAGE_HOST`` resolves to 127.0.0.1) and save a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--host-resolver-rules=MAP {PAGE_HOST} 127.0.0.1", f"--user-data-dir={profile}", f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"error: chromium failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db",
                        help="MLflow backend store URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
    parser.add_argument("--experiment", default="demo", help="Experiment name (default: demo; else the newest).")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow-ui.png", help="PNG to write.")
    parser.add_argument("--view", choices=("table", "chart"), default="table",
                        help="The runs table, or the charts of their metrics (default: table).")
    parser.add_argument("--budget-ms", type=int, default=30000, help="Chromium's virtual-time budget.")
    parser.add_argument("--window-size", default="1600,900", help="Width,height of the page.")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="Seconds to wait for the server.")
    arguments = parser.parse_args(argv)

    store = absolute_store(arguments.store)
    if store.startswith(("http://", "https://")):
        raise SystemExit("error: --store is a server's address; give its backend store (e.g. sqlite:///mlflow.db)")
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        raise SystemExit(f"error: no MLflow store at {store}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", store,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--allowed-hosts", f"127.0.0.1:{port},localhost:{port},{PAGE_HOST}:{port}",
               "--cors-allowed-origins", f"http://{PAGE_HOST}:{port}"]
    # No background job runner (GenAI jobs): it would hold the server up on SIGTERM.
    environment = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with tempfile.TemporaryFile() as server_log:
        server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=environment, start_new_session=True)
        try:
            print(f"mlflow server on {store} at {base} ...", file=sys.stderr)
            try:
                wait_for_health(base, server, arguments.start_timeout)
            except SystemExit:
                server_log.seek(0)
                print(server_log.read().decode(errors="replace")[-3000:], file=sys.stderr)
                raise
            experiment_id, name = find_experiment(base, arguments.experiment)
            url = f"http://{PAGE_HOST}:{port}/#/experiments/{experiment_id}/runs"
            if arguments.view == "chart":
                url += "?compareRunsMode=CHART"
            print(f"rendering {url} (experiment {name!r})", file=sys.stderr)
            screenshot(url, arguments.out, arguments.budget_ms, arguments.window_size)
        finally:
            stop(server)
    print(f"wrote {arguments.out}")
    return 0


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its job runner), SIGKILL after 15 s."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
