"""User text and user input at the CLI: markup shown literally, bounds refused in one line (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from expctl.store import jobs

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


def test_out_of_range_inputs_are_one_line_errors_and_write_nothing(any_world: Env) -> None:
    import time

    world = any_world
    huge = "1180591620717411303424"  # 2**70
    started = time.monotonic()
    assert_error_line(world.run("consume", "--gpus", "0-99999999"), "GPU index 99999999 is over 4095")
    assert_error_line(world.run("consume", "--gpus", "1" * 5000), "is over 4095")
    assert_error_line(world.run("consume", "--gpus", "0-40"), "more than 32 GPUs")
    assert time.monotonic() - started < 10  # refused before any list is built
    for arguments, fragments in [
        (("enqueue", "config", "tag=p", *TESTAPP, "--priority", "99999999999999999999"), ("--priority must be",)),
        (("enqueue", "config", "tag=p", *TESTAPP, "--priority", str(2**31)), ("--priority must be",)),
        (("enqueue", "config", "tag=p", *TESTAPP, "--max-attempts", "0"), ("--max-attempts must be",)),
        (("enqueue", "config", "tag=p", *TESTAPP, "--max-attempts", str(2**40)), ("--max-attempts must be",)),
        (("enqueue", "config", "tag=p", *TESTAPP, "--name", "n" * 201), ("longer than 200",)),
        (("enqueue", "config", "tag=" + "v" * 200_000, *TESTAPP), ("'tag' is 200,004 bytes long",)),
        (("show", huge), (f"no job with id {huge}",)),
        (("cancel", huge), (f"no job with id {huge}",)),
        (("retry", huge), (f"no job with id {huge}",)),
        (("logs", huge), (f"no job with id {huge}",)),
        (("show", "--", "-" + huge), (f"no job with id -{huge}",)),
        (("list", "--sweep", huge), (f"no sweep with id {huge}",)),
        (("cancel", "--sweep", huge), (f"no sweep with id {huge}",)),
        (("list", "--limit", "-1"), ("--limit must be",)),
        (("list", "--limit", huge), ("--limit must be",)),
        (("enqueue", "config", "tag=h", "hydra.job.chdir=true", *TESTAPP), ("'hydra.job.chdir=true'", "lost")),
        (("enqueue", "config", "tag=h", "+hydra.x=1,2", *TESTAPP), ("'+hydra.x=1,2'", "hydra.* settings")),
    ]:
        assert_error_line(world.run(*arguments), *fragments)
    queue = world.root / "big.txt"
    queue.write_text("config|tag=small\nconfig|tag=" + "é" * 60_000 + "\n")  # 120,000 bytes in UTF-8
    assert_error_line(world.run("enqueue", "--file", str(queue), *TESTAPP), "line 2", "'tag' is 120,004 bytes")
    assert jobs.list_jobs(world.engine) == []
    # The bounds themselves are stored as given, on both databases.
    world.run("enqueue", "config", "tag=top", *TESTAPP, "--priority", str(2**31 - 1), check=True)
    world.run("enqueue", "config", "tag=bottom", *TESTAPP, "--priority", str(-2**31), check=True)
    world.run("enqueue", "config", "tag=" + "v" * 99_996, *TESTAPP, check=True)  # exactly the limit
    assert [(job.priority, len(job.overrides)) for job in jobs.list_jobs(world.engine)] == [
        (2**31 - 1, 11), (-2**31, 14), (0, 100_004)]
