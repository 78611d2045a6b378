"""The expctl command line: specs composed by the app's Hydra, sweeps, queue files, error lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expctl.store import jobs
from expctl.specs import queue_file, compose
from expctl.errors import UserError

from expctl_helpers import REPO, Env, pid_alive

pytestmark = pytest.mark.timeout(300)

TESTAPP = ("--app", "expctl_testapp")


def assert_error_line(result, *fragments: str) -> None:  # noqa: ANN001
    """One ``error: ...`` line on stderr, exit status 2, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_sweep_expands_and_is_cancelled_and_retried_as_a_whole(world: Env) -> None:
    result = world.run("enqueue", "config", "lr=0.1,0.2", "model.sizes=[4],[8,8]", "tag=sweep", *TESTAPP,
                       "--name", "grid", check=True)
    assert "sweep 1: queued 4 jobs" in result.stdout
    members = jobs.list_jobs(world.engine, sweep_id=1)
    assert sorted(job.override_list[0] for job in members) == ["lr=0.1", "lr=0.1", "lr=0.2", "lr=0.2"]
    assert {job.override_list[1] for job in members} == {"model.sizes=[4]", "model.sizes=[8,8]"}
    assert "lr: 0.2\n" in members[-1].config_yaml and "  - 8\n" in members[-1].config_yaml
    listing = world.run("list", "--sweep", "1", check=True).stdout
    assert "4 job(s)" in listing
    assert "4 cancelled" in world.run("cancel", "--sweep", "1", check=True).stdout
    assert "0 job(s)" in world.run("retry", "--sweep", "1", "--failed-only", check=True).stdout
    assert "4 job(s) queued again" in world.run("retry", "--sweep", "1", check=True).stdout
    assert {job.status for job in jobs.list_jobs(world.engine, sweep_id=1)} == {"queued"}
    duplicate = world.run("enqueue", "config", "lr=0.1", "model.sizes=[4]", "tag=sweep", *TESTAPP)
    assert_error_line(duplicate, "duplicates job", "--allow-duplicate")
    assert "queued job 5" in world.run("enqueue", "config", "lr=0.1", "model.sizes=[4]", "tag=sweep", *TESTAPP,
                                       "--allow-duplicate", check=True).stdout
    shown = world.run("show", "1", check=True).stdout
    assert "grid lr=0.1 model.sizes=[4]" in shown and "enqueued" in shown and "lr: 0.1" in shown


def test_bad_specs_are_refused_with_hydras_message_and_nothing_written(world: Env) -> None:
    cases = [
        (("config", "nope=1", *TESTAPP), ("Could not override 'nope'",)),
        (("config", "lr=fast", *TESTAPP), ("lr=fast", "could not be converted to Float")),
        (("config", "lr=", "tag=[unclosed", *TESTAPP), ("bad override",)),
        (("missing_config", *TESTAPP), ("missing_config",)),
        (("config", "--app", "no_such_app_module"), ("No module named",)),
        (("nowhere/base.yaml", *TESTAPP), ("no such YAML file",)),
    ]
    for arguments, fragments in cases:
        assert_error_line(world.run("enqueue", *arguments), *fragments)
    assert jobs.list_jobs(world.engine) == []


def test_queue_file_is_all_or_nothing_and_errors_name_the_line(world: Env) -> None:
    good = world.root / "good.txt"
    good.write_text(
        "# three experiments\n\n"
        "config|lr=0.5|tag=one\n"
        "config | lr=0.25 | tag=\"two | with a bar\"\n"
        f"{world.root / 'base.yaml'}|steps=3\n"
    )
    (world.root / "base.yaml").write_text("defaults:\n  - schema\n  - _self_\n\ntag: from-file\nlr: 0.01\n")
    bad = world.root / "bad.txt"
    bad.write_text(good.read_text() + "config|lr=oops\n")
    assert_error_line(world.run("enqueue", "--file", str(bad), *TESTAPP), "line 6", "lr=oops")
    assert jobs.list_jobs(world.engine) == []
    result = world.run("enqueue", "--file", str(good), *TESTAPP, check=True)
    assert "3 job(s) queued" in result.stdout
    configs = [job.config_yaml for job in jobs.list_jobs(world.engine)]
    assert "tag: two | with a bar\n" in configs[1]
    assert "tag: from-file\n" in configs[2] and "steps: 3\n" in configs[2] and "lr: 0.01\n" in configs[2]
    assert_error_line(world.run("enqueue", "--file", str(good), *TESTAPP), "line 3", "duplicates job 1")
    assert len(jobs.list_jobs(world.engine)) == 3


def test_cli_errors_are_one_clear_line(world: Env) -> None:
    unreadable = world.root / "secret.txt"
    unreadable.write_text("config|lr=1\n")
    unreadable.chmod(0)
    cases = [
        (("consume", "--gpus", "0-"), ("bad GPU spec '0-'",)),
        (("consume", "--gpus", "3-1"), ("runs backwards",)),
        (("consume", "--gpus", "x"), ("bad GPU spec 'x'",)),
        (("show", "42"), ("no job with id 42",)),
        (("cancel", "42"), ("no job with id 42",)),
        (("retry", "42"), ("no job with id 42",)),
        (("logs", "42"), ("no job with id 42",)),
        (("cancel", "--sweep", "7"), ("no sweep with id 7",)),
        (("enqueue", "--file", str(world.root / "absent.txt")), ("not found",)),
        (("list", "--status", "bogus"), ("unknown status 'bogus'",)),
        (("--tracking", "bogus", "enqueue", "config", *TESTAPP), ("unknown tracker 'bogus'",)),
        # usage mistakes caught by Typer itself: one line too, naming the help to read
        (("enqueue", "--bogus"), ("No such option: --bogus", "'expctl enqueue --help'")),
        (("list", "--limit", "abc"), ("Invalid value for '--limit'", "'expctl list --help'")),
        (("show",), ("Missing argument", "'expctl show --help'")),
    ]
    if os.geteuid() != 0:  # root reads anything
        cases.append((("enqueue", "--file", str(unreadable)), ("not readable",)))
    for arguments, fragments in cases:
        assert_error_line(world.run(*arguments), *fragments)
    assert_error_line(world.run("--db", "nosuchdb://x", "list"), "database URL")
    assert_error_line(world.cli("consume", "--gpus", "3-1"), "runs backwards")  # the real console entry too


def test_db_upgrade_and_workers_and_logs(world: Env) -> None:
    assert "revision 0002_job_folders" in world.run("db", "upgrade", check=True).stdout
    assert "0 worker(s)" in world.run("workers", check=True).stdout
    world.run("enqueue", "config", "tag=logged", *TESTAPP, check=True)
    assert world.cli("consume", "--gpus", "none", "--once", "--apps", "expctl_testapp", check=True).returncode == 0
    assert "testapp: job 1 attempt 1" in world.run("logs", "1", check=True).stdout
    assert "testapp: job 1 attempt 1" in world.run("logs", "1", "-f", check=True).stdout
    assert "stopped" in world.run("workers", "--all", check=True).stdout


def test_queue_file_parsing() -> None:
    lines = queue_file.parse_text("# c\n\nbase.yaml|k=v|k2=\"v 2\"\n  config | a='x|y' \n", "q.txt")
    assert [(line.number, line.base, line.overrides) for line in lines] == [
        (3, "base.yaml", ("k=v", 'k2="v 2"')), (4, "config", ("a='x|y'",))]
    for text, fragment in [("config|a='x\n", "line 1: unclosed"), ("# only\n", "no experiments"),
                           ("|a=1\n", "line 1: no base"), ("\nconfig||a=1\n", "line 2: empty override")]:
        with pytest.raises(UserError, match=fragment):
            queue_file.parse_text(text, "q.txt")


def test_sweep_expansion_uses_hydras_grammar() -> None:
    plan = compose.expand("app", "config", ["a=1,2", "b=[256],[512]", "c=[1,2]", "d=range(0,3)", "e='x,y'"])
    assert plan.is_sweep and len(plan.specs) == 2 * 2 * 3
    assert plan.specs[0].overrides == ("a=1", "b=[256]", "c=[1,2]", "d=0", "e='x,y'")
    assert not compose.expand("app", "config", ["c=[1,2]", "~x", "+y=1"]).is_sweep
    for overrides, fragment in [(["a=glob(*)"], "glob"), (["a=interval(0,1)"], "bad override"),
                                (["a=[1,2"], "bad override"), (["--cfg"], "Hydra flags")]:
        with pytest.raises(UserError, match=fragment):
            compose.expand("app", "config", overrides)
    with pytest.raises(UserError, match="bad --app"):
        compose.expand("not a module", "config", [])


def test_plain_overrides_expand_as_hydras_parser_expands_them() -> None:
    import random

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, ValueType

    typed = ["seed=3", "a=-0", "a=00", "a=-007", "a=0.0", "a=-0.0", "optimizer.learning_rate=1e-3", "lr=0.0010123", "lr=0.00001", "a=1.10", "a=.5", "a=-",
             "a=+1", "a=", "a.b_c=d.e", "x=1.2.3", "y=-inf", "z=null", "t=True", "u=0x1f", "v=1_000", "w=007",
             "model=deepspeech", "hydra_like=1", "n=12345678901234567890"]
    generator = random.Random(0)
    typed += ["k=" + "".join(generator.choice("0123456789eE._-+aZ") for _ in range(generator.randint(0, 6)))
              for _ in range(300)]
    parser = OverridesParser.create()
    for override in typed:
        plain = compose.plain_value(override)
        if plain is not None:  # the value Hydra's parser reads, of the same type
            parsed = parser.parse_override(override)
            assert (parsed.type, parsed.value_type, parsed.package) == (OverrideType.CHANGE, ValueType.ELEMENT, None)
            assert plain == (parsed.key_or_group, parsed.value()), override
            assert type(plain[1]) is type(parsed.value()), override
    for overrides in [[override] for override in typed] + [typed[:20]]:
        try:
            parsed = compose.expand_with_hydra("app", "config", overrides)
        except UserError:
            assert not all(compose.plain_value(override) for override in overrides), overrides
            continue
        shortcut = compose.expand("app", "config", overrides)
        assert (shortcut.specs, shortcut.is_sweep) == (parsed.specs, parsed.is_sweep), overrides
    with pytest.raises(UserError, match="hydra"):  # not plain: Hydra's path refuses it
        compose.expand("app", "config", ["hydra.run.dir=x"])


def test_shipped_example_queue_file_parses() -> None:
    lines = queue_file.read(REPO / "queue" / "example.txt")
    assert lines and all(line.base for line in lines)
    assert all("=" in override for line in lines for override in line.overrides)


def test_base_yaml_named_like_the_apps_config_is_not_shadowed(tmp_path: Path) -> None:
    import sys

    (tmp_path / "config.yaml").write_text("defaults:\n  - schema\n  - _self_\n\ntag: mine\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "apps"), str(REPO)])
    try:
        composed = compose.compose(compose.Spec("expctl_testapp", str(tmp_path / "config.yaml"), ("lr=0.5",)))
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    assert "tag: mine\n" in composed.config_yaml and "lr: 0.5\n" in composed.config_yaml
    assert composed.config_hash == compose.config_hash("expctl_testapp", composed.config_yaml)
    assert sys.executable


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def test_many_specs_are_composed_by_few_children_and_the_first_refusal_is_reported(world: Env) -> None:
    lines = [f"config|lr={index}|tag=many" for index in range(40)]
    lines[29] = "config|lr=bad29|tag=many"
    lines[34] = "config|nope=1|tag=many"
    queue = world.root / "many.txt"
    queue.write_text("\n".join(lines) + "\n")
    assert_error_line(world.run("enqueue", "--file", str(queue), *TESTAPP), "line 30", "lr=bad29")
    assert jobs.list_jobs(world.engine) == []
    lines[29], lines[34] = "config|lr=0.5|tag=fixed", "config|lr=0.25|tag=fixed"
    queue.write_text("\n".join(lines) + "\n")
    assert "40 job(s) queued" in world.run("enqueue", "--file", str(queue), *TESTAPP, check=True).stdout
    stored = jobs.list_jobs(world.engine)
    assert [job.override_list for job in stored] == [line.split("|")[1:] for line in lines]
    assert all(f"lr: {float(job.override_list[0][3:])}\n" in job.config_yaml for job in stored)


def test_ctrl_c_stops_an_enqueue_and_leaves_no_rows(any_world: Env) -> None:
    import signal
    import subprocess
    import sys
    import time

    world = any_world
    # A terminal's foreground job hears SIGINT; a test run started as a shell's background job ignores
    # it, and an ignored signal stays ignored across exec. A handler in its place is reset on exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            # 30,000 specs: composing lasts far longer than the wait below on any machine (3,000 could all
            # be composed and queued before the interrupt arrived on an idle one)
            [sys.executable, "-m", "expctl", "enqueue", "config", "lr=range(0,30000)", "tag=x", *TESTAPP],
            cwd=world.root, env=world.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while not (composers := _children(process.pid)):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # composing is under way
    interrupted = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert time.monotonic() - interrupted < 10
    assert process.returncode == 130 and err.strip() == "error: interrupted: nothing was queued", err
    assert not any(pid_alive(pid) for pid in composers)  # the composers were stopped too
    assert jobs.list_jobs(world.engine) == []


def test_list_shows_one_line_a_job_whatever_the_name_and_the_terminal(world: Env) -> None:
    long_name = "a sweep with a long name " + "x" * 150
    world.run("enqueue", *TESTAPP, "--name", long_name, "config", "tag=a,b", check=True)
    for width in ("60", "80", "200"):
        world.vars["COLUMNS"] = width
        listed = world.cli("list", check=True).stdout.splitlines()
        rows = [line for line in listed if line.startswith("│")]
        assert len(rows) == 2 and all("│ a swe" in row and "…" in row for row in rows), listed
        assert all(len(line) <= int(width) for line in listed), listed
        if width == "200":
            assert "worker" in listed[2] and "prio" in listed[2]  # narrow terminals leave these to show
    assert long_name in world.cli("show", "1", "--json", check=True).stdout
