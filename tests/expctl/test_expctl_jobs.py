"""The job state machine through the API, on SQLite and on PostgreSQL (real servers, no mocks)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from expctl.store import actions, claims, db, jobs
from expctl.specs import compose
from expctl.errors import UserError
from expctl.store.schema import jobs as jobs_table

pytestmark = pytest.mark.timeout(120)


def new_job(index: int, *, priority: int = 0, max_attempts: int = 3, allow_duplicate: bool = False,
            config: str | None = None) -> jobs.NewJob:
    config_yaml = config if config is not None else f"n: {index}\n"
    return jobs.NewJob(app="expctl_fastapp", base="config", overrides=(f"n={index}",), config_yaml=config_yaml,
                       config_hash=compose.config_hash("expctl_fastapp", config_yaml), name=f"job {index}",
                       priority=priority, max_attempts=max_attempts, allow_duplicate=allow_duplicate)


@pytest.fixture
def engine(any_db_url: str):  # noqa: ANN201
    engine = db.create_engine(any_db_url)
    yield engine
    engine.dispose()


def test_schema_matches_the_migrations(engine) -> None:  # noqa: ANN001
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from expctl.store.schema import metadata

    assert db.head_revision() == db.SCHEMA_REVISION
    assert db.current_revision(engine) == db.SCHEMA_REVISION
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    assert db.upgrade(engine) == db.SCHEMA_REVISION  # idempotent


def test_claim_order_priority_then_age_and_not_before(engine) -> None:  # noqa: ANN001
    created = jobs.enqueue(engine, [new_job(1), new_job(2, priority=5), new_job(3)])
    first, second, third = (claims.claim(engine, "w", "", 60) for _ in range(3))
    assert [first.id, second.id, third.id] == [created[1].id, created[0].id, created[2].id]
    assert first.status == "running" and first.attempt == 1 and first.worker_id == "w"
    assert claims.claim(engine, "w", "", 60) is None
    outcome = claims.finish(engine, first, "w", 1, backoff_base_s=3600)
    assert outcome.status == "queued" and outcome.retry_in == claims.MAX_BACKOFF_S
    assert claims.claim(engine, "w", "", 60) is None  # backing off


def test_concurrent_claimers_take_each_job_exactly_once(engine) -> None:  # noqa: ANN001
    jobs.enqueue(engine, [new_job(index) for index in range(60)])
    taken: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := claims.claim(engine, name, "", 60)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 60


def test_fencing_a_stale_worker_cannot_overwrite_the_next_attempt(engine) -> None:  # noqa: ANN001
    [job] = jobs.enqueue(engine, [new_job(1)])
    stale = claims.claim(engine, "old", "", -1.0)  # lease already expired: "old" is paused
    [(lost_job, outcome)] = claims.requeue_expired(engine, "reaper")
    assert lost_job.id == job.id and outcome.status == "queued"
    fresh = claims.claim(engine, "new", "", 60)
    assert fresh.id == job.id and fresh.attempt == 2
    assert claims.heartbeat(engine, stale, "old", 60).won is False
    assert claims.finish(engine, stale, "old", 0) is None
    assert claims.requeue_own(engine, stale, "old", "stopping") is None
    assert jobs.get_job(engine, job.id).status == "running"
    assert claims.heartbeat(engine, fresh, "new", 60).won is True
    assert claims.finish(engine, fresh, "new", 0).status == "succeeded"
    kinds = [event["kind"] for event in jobs.events(engine, job.id)]
    assert kinds == ["enqueued", "claimed", "lost", "claimed", "fenced", "fenced", "succeeded"]


def test_exit_codes_retries_and_lost_jobs(engine) -> None:  # noqa: ANN001
    never, retried, lost = jobs.enqueue(engine, [new_job(1), new_job(2, max_attempts=2), new_job(3, max_attempts=1)])
    job = claims.claim(engine, "w", "", 60)
    assert claims.finish(engine, job, "w", 2).status == "failed"
    job = claims.claim(engine, "w", "", 60)
    assert claims.finish(engine, job, "w", -9, backoff_base_s=0).status == "queued"
    job = claims.claim(engine, "w", "", 60)
    assert job.id == retried.id and job.attempt == 2
    outcome = claims.finish(engine, job, "w", 1, backoff_base_s=0)
    assert outcome.status == "failed" and "exit code 1 after 2 attempts" in outcome.reason
    job = claims.claim(engine, "w", "", -1.0)  # its lease is already over
    [(_job, outcome)] = claims.requeue_expired(engine)
    assert outcome.status == "failed" and outcome.reason.startswith("lost")
    states = {job.id: (job.status, job.end_reason) for job in jobs.list_jobs(engine)}
    assert states[never.id] == ("failed", "failed: exit code 2 (bad configuration or data; not retried)")
    assert states[lost.id][0] == "failed"
    assert "killed by signal 9 (SIGKILL); retry in 0 s" in [e["message"] for e in jobs.events(engine, retried.id)]


def test_duplicates_refused_by_the_database(engine) -> None:  # noqa: ANN001
    [first] = jobs.enqueue(engine, [new_job(1)])
    with pytest.raises(UserError, match=f"duplicates job {first.id} \\(queued"):
        jobs.enqueue(engine, [new_job(1)])
    [allowed] = jobs.enqueue(engine, [new_job(1, allow_duplicate=True)])
    assert allowed.dedup_key is None
    with pytest.raises(IntegrityError):  # the index itself refuses, whatever the code checks first
        with engine.begin() as connection:
            row = {column.name: getattr(first, column.name) for column in jobs_table.columns if column.name != "id"}
            connection.execute(insert(jobs_table).values(**row))
    job = claims.claim(engine, "w", "", 60)
    claims.finish(engine, job, "w", 0)
    [again] = jobs.enqueue(engine, [new_job(1)])  # the first one ended: no longer a duplicate
    with pytest.raises(UserError, match="same config as"):
        jobs.enqueue(engine, [new_job(7), new_job(7)])
    with engine.begin() as connection:  # pretend the first one failed: retrying it would duplicate `again`
        connection.execute(update(jobs_table).where(jobs_table.c.id == first.id).values(status="failed"))
    with pytest.raises(UserError, match=f"same config as job {again.id}"):
        actions.retry(engine, first.id)


def test_cancel_and_retry_single_and_sweep(engine) -> None:  # noqa: ANN001
    sweep = jobs.NewSweep(app="expctl_fastapp", base="config", overrides=("n=1,2,3",))
    members = jobs.enqueue(engine, [new_job(1), new_job(2), new_job(3)], sweep)
    sweep_id = members[0].sweep_id
    running = claims.claim(engine, "w", "", 60)
    assert claims.heartbeat(engine, running, "w", 60).cancel_requested is False
    counts = actions.cancel_sweep(engine, sweep_id)
    assert counts == {"cancel requested": 1, "cancelled": 2}
    assert claims.heartbeat(engine, running, "w", 60).cancel_requested is True
    assert claims.finish(engine, running, "w", -15, cancelled=True).status == "cancelled"
    with pytest.raises(UserError, match="already cancelled"):
        actions.cancel(engine, running.id)
    assert actions.retry_sweep(engine, sweep_id, failed_only=True) == 0
    assert actions.retry_sweep(engine, sweep_id) == 3
    assert {job.status for job in jobs.list_jobs(engine, sweep_id=sweep_id)} == {"queued"}
    again = claims.claim(engine, "w", "", 60)
    assert again.attempt == 2 and again.attempts_used == 1  # a retry starts a fresh attempt budget
    for bad in (lambda: actions.cancel(engine, 999), lambda: actions.retry(engine, 999),
                lambda: actions.cancel_sweep(engine, 999), lambda: jobs.get_job(engine, 999)):
        with pytest.raises(UserError, match="no (job|sweep) with id 999"):
            bad()
    with pytest.raises(UserError, match="is running"):
        actions.retry(engine, again.id)


def test_requeue_own_does_not_charge_an_attempt(engine) -> None:  # noqa: ANN001
    [job] = jobs.enqueue(engine, [new_job(1, max_attempts=1)])
    claimed = claims.claim(engine, "w", "", 60)
    assert claims.requeue_own(engine, claimed, "w", "daemon stopping").status == "queued"
    claimed = claims.claim(engine, "w2", "", 60)
    assert claimed.attempt == 2 and claimed.attempts_used == 1
    with engine.connect() as connection:
        assert connection.execute(select(jobs_table.c.status).where(jobs_table.c.id == job.id)).scalar() == "running"


def test_a_cancel_survives_every_path_back_to_the_queue(engine) -> None:  # noqa: ANN001
    """Reaper, a stopping daemon's requeue and a retry after a failed exit all end the job cancelled."""
    reaped, stopped, retried, finished = jobs.enqueue(engine, [new_job(index) for index in range(4)])

    def running_with_cancel(lease_s: float) -> jobs.Job:
        job = claims.claim(engine, "w", "", lease_s)
        assert actions.cancel(engine, job.id) == "cancel requested"
        return job

    job = running_with_cancel(-1.0)  # its daemon died before its next heartbeat: the lease is over
    [(_job, outcome)] = claims.requeue_expired(engine, "reaper")
    assert (_job.id, outcome.status) == (reaped.id, "cancelled") and "cancel was pending" in outcome.reason
    job = running_with_cancel(60)  # the daemon is stopped (SIGTERM) before it noticed the cancel
    assert claims.requeue_own(engine, job, "w", "daemon w stopped").status == "cancelled"
    job = running_with_cancel(60)  # the child failed before the heartbeat noticed: no retry
    outcome = claims.finish(engine, job, "w", 1, backoff_base_s=0)
    assert outcome.status == "cancelled" and outcome.reason == "cancelled: exit code 1 while a cancel was pending"
    job = running_with_cancel(60)  # a child that finished anyway has succeeded
    assert claims.finish(engine, job, "w", 0).status == "succeeded"
    assert claims.claim(engine, "w", "", 60) is None  # nothing runs again
    states = {job.id: (job.status, job.attempt) for job in jobs.list_jobs(engine)}
    assert states == {reaped.id: ("cancelled", 1), stopped.id: ("cancelled", 1), retried.id: ("cancelled", 1),
                      finished.id: ("succeeded", 1)}
    actions.retry(engine, stopped.id)  # only a user's retry queues it again, and it runs
    again = claims.claim(engine, "w", "", 60)
    assert again.id == stopped.id and not again.cancel_requested
    assert claims.heartbeat(engine, again, "w", 60).cancel_requested is False


def test_a_queued_job_with_a_pending_cancel_is_never_claimed(engine) -> None:  # noqa: ANN001
    """Rows an older expctl requeued with their cancel pending: the claim skips them, the reaper cancels them."""
    [job, other] = jobs.enqueue(engine, [new_job(1, priority=5), new_job(2)])
    with engine.begin() as connection:
        connection.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(cancel_requested=True))
    assert claims.claim(engine, "w", "", 60).id == other.id
    assert claims.claim(engine, "w", "", 60) is None
    [(_job, outcome)] = claims.requeue_expired(engine, "reaper")
    assert outcome.status == "cancelled" and jobs.get_job(engine, job.id).status == "cancelled"
    assert jobs.get_job(engine, job.id).attempt == 0
