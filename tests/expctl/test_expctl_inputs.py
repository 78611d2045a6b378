"""User text and user input at the CLI: markup shown literally, bounds refused in one line (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from expctl import jobs

from expctl_helpers import Env
from test_expctl_cli import TESTAPP, assert_error_line

pytestmark = pytest.mark.timeout(300)


def test_rich_markup_in_user_text_is_shown_literally(any_world: Env) -> None:
    world = any_world
    result = world.run("enqueue", "config", "tag='[/]'", "lr=0.5", *TESTAPP, "--name", "[/]", check=True)
    assert "queued job 1: [/]" in result.stdout and "Traceback" not in result.stderr
    sweep = world.run("enqueue", "config", "tag='[b]'", "lr=0.1,0.2", *TESTAPP, "--name", "[red]g[/]", check=True)
    assert "sweep 1: queued 2 jobs" in sweep.stdout
    stored = jobs.list_jobs(world.engine)
    assert [job.name for job in stored] == ["[/]", "[red]g[/] tag='[b]' lr=0.1", "[red]g[/] tag='[b]' lr=0.2"]
    assert stored[0].override_list == ["tag='[/]'", "lr=0.5"] and "tag: '[/]'" in stored[0].config_yaml
    world.vars["COLUMNS"] = "250"  # a wide table, so that no cell is folded (a real console process)
    for _ in range(2):  # before and after a cancel
        listing = world.cli("list", check=True)
        assert "│ [/] " in listing.stdout and "│ [red]g[/] tag='[b]' lr=0.1 " in listing.stdout, listing.stdout + listing.stderr
        shown = world.run("show", "1", check=True).stdout
        assert "[/]" in shown and "tag='[/]' lr=0.5" in shown
        assert "[red]g[/] tag='[b]' lr=0.2" in world.run("show", "3", check=True).stdout
        world.run("cancel", "1")
    assert jobs.get_job(world.engine, 1).status == "cancelled"
    # A path with markup in an error message stays literal too.
    assert_error_line(world.run("enqueue", "--file", "[/]missing.txt"), "'[/]missing.txt' not found")
