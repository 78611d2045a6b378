"""What every ``expctl`` command shares: the Typer apps, the global options, output helpers.

The commands live in :mod:`expctl.cli` (jobs, the daemon, the database) and :mod:`expctl.cli_mlflow`
(tracking sync, sweeps and promotion); ``expctl.cli:main`` is the entry point.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine

from expctl.store import db
from expctl.tracking.hooks import SafeTracker
from expctl.tracking.trackers import get_tracker

app = typer.Typer(
    help="Queue experiments (Hydra app + overrides) and run them on this machine's GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Queue database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
tracking_app = typer.Typer(help="Experiment tracking (MLflow) of the queue's jobs.", no_args_is_help=True)
app.add_typer(tracking_app, name="tracking")
sweep_app = typer.Typer(help="Sweeps: list them, promote a sweep's best run to the MLflow Model Registry.",
                        no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

console = Console()
error_console = Console(stderr=True)


class State:
    """Options shared by every command."""

    db_url: str | None = None
    tracking: str | None = None
    _engine: Engine | None = None

    def engine(self) -> Engine:
        """The migrated engine, created on first use."""
        if self._engine is None:
            self._engine = db.create_engine(self.db_url)
        return self._engine


state = State()


# User text (names, overrides, paths, errors) may hold rich markup such as "[/]": it is only
# ever shown as plain Text or with markup off, never parsed (a stray tag would crash every listing).
def cell(value: object) -> Text:
    """A table cell that shows ``value`` literally."""
    return value if isinstance(value, Text) else Text(str(value))


def table_row(table: Table, *values: object) -> None:
    table.add_row(*(cell(value) for value in values))


def say(message: str) -> None:
    """One line of output, shown literally."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@app.callback()
def options(
    db_url: Optional[str] = typer.Option(
        None, "--db", envvar="EXPCTL_DB_URL",
        help="Queue database URL (default: sqlite at queue/expctl.db under the current folder).",
    ),
    tracking: Optional[str] = typer.Option(
        None, "--tracking", envvar="EXPCTL_TRACKING",
        help="Experiment tracker: mlflow (default; MLFLOW_TRACKING_URI, else sqlite:///mlflow.db) or none.",
    ),
) -> None:
    state.db_url = db_url
    state.tracking = tracking
    state._engine = None


def chosen_tracker() -> SafeTracker:
    """The tracker the options chose."""
    return get_tracker(state.tracking)


def when(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


def ago(value: float | None) -> str:
    if not value:
        return "-"
    seconds = max(0.0, time.time() - value)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def print_json(value: object) -> None:
    """JSON on stdout, never through rich (no markup, no wrapping)."""

    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
