"""The job table: FIFO claims, unique names, interrupted jobs become resumable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loraflow.db import make_engine
from loraflow.errors import InvalidInput, NotFound
from loraflow.training import jobs


@pytest.fixture()
def db(tmp_path: Path):
    return make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")


def new(db, name: str) -> dict:
    return jobs.create_job(
        db,
        task_name=name,
        base_model="bundled:smollm2",
        dataset_file="d.json",
        dataset_type="alpaca",
        output_path=f"/tmp/{name}",
        training_params={"rank": 16},
    )


def test_jobs_are_claimed_oldest_first_once(db) -> None:
    a, b = new(db, "a"), new(db, "b")
    assert a["status"] == "pending" and a["training_params"] == {"rank": 16}
    assert jobs.claim_next(db)["id"] == a["id"]
    assert jobs.claim_next(db)["id"] == b["id"]
    assert jobs.claim_next(db) is None
    assert jobs.get_job(db, a["id"])["status"] == "running"


def test_duplicate_and_unknown(db) -> None:
    new(db, "same")
    with pytest.raises(InvalidInput, match="already used"):
        new(db, "same")
    for missing in (99, 0, -1, 2**63):
        with pytest.raises(NotFound, match="does not exist"):
            jobs.get_job(db, missing)


# The owner a previous run of the service on this host wrote into the jobs it claimed.
BEFORE_RESTART = f"{jobs.HOST}:{2**22 + 54321}:1000.00"


def test_restart_marks_orphaned_running_jobs_resumable(db) -> None:
    dead, alive = new(db, "dead"), new(db, "alive")
    jobs.claim_next(db, pid=2**22 + 12345, owner=BEFORE_RESTART)  # no such process
    jobs.claim_next(db, pid=os.getpid(), owner=BEFORE_RESTART)
    lost = jobs.mark_interrupted(db, lambda pid, _started: pid == os.getpid())
    assert lost == [dead["id"]]
    row = jobs.get_job(db, dead["id"])
    assert row["status"] == "failed" and row["resumable"] and "resume" in row["message"]
    assert jobs.get_job(db, alive["id"])["status"] == "running"


def test_a_restart_does_not_mistake_a_reused_pid_for_the_job(db) -> None:
    """After a restart the recorded pid may run something newer, or be the new service itself."""
    import subprocess
    from datetime import timedelta

    from loraflow.training.runner import job_process_alive

    names = ("reused-by-a-newer-process", "reused-by-me", "worker-still-running")
    made = {name: new(db, name) for name in names}
    newer = subprocess.Popen(["sleep", "60"])
    worker = subprocess.Popen(["sleep", "60"])  # started just after its job was claimed
    try:
        for name, pid in zip(names, (newer.pid, os.getpid(), worker.pid), strict=True):
            assert jobs.claim_next(db, pid=pid, owner=BEFORE_RESTART)["id"] == made[name]["id"]
        # The first job was claimed an hour ago: a process started now cannot be its worker.
        jobs.update_job(db, made[names[0]]["id"], started_at=jobs.now() - timedelta(hours=1))
        lost = jobs.mark_interrupted(db, job_process_alive)
        assert sorted(lost) == sorted(made[n]["id"] for n in names[:2])
        assert jobs.get_job(db, made["worker-still-running"]["id"])["status"] == "running"
    finally:
        for proc in (newer, worker):
            proc.kill()
    # Once the worker is gone (killed, not yet reaped), its job is interrupted too.
    import time

    import psutil

    deadline = time.monotonic() + 30
    while psutil.Process(worker.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the killed worker never exited"
        time.sleep(0.05)
    assert jobs.mark_interrupted(db, job_process_alive) == [made["worker-still-running"]["id"]]
    for proc in (newer, worker):
        proc.wait()


def test_another_hosts_job_is_judged_by_its_lease_alone(db) -> None:
    """Services on two hosts share the database: a pid means nothing on the other host."""
    from datetime import timedelta

    from loraflow.training.runner import job_process_alive

    theirs, ray_job, mine = new(db, "theirs"), new(db, "on-the-cluster"), new(db, "mine")
    no_such_pid = 2**22 + 777
    jobs.claim_next(db, pid=no_such_pid, owner="host-b:4242:1700000000.00")
    # A Ray job claimed by a previous run on this host: its pid is no process of this host.
    jobs.claim_next(db, pid=no_such_pid, owner=BEFORE_RESTART, executor="ray")
    jobs.claim_next(db, pid=no_such_pid)  # this process's own job: left to it
    assert jobs.mark_interrupted(db, job_process_alive) == []
    for job in (theirs, ray_job, mine):
        assert jobs.get_job(db, job["id"])["status"] == "running"
    assert jobs.get_job(db, ray_job["id"])["executor"] == "ray"
    assert jobs.get_job(db, mine["id"])["owner"] == jobs.owner_id()

    # Host B stops renewing: once its lease has run out, its job is interrupted.
    stale = jobs.now() - timedelta(seconds=jobs.LEASE_S + 1)
    jobs.update_job(db, theirs["id"], heartbeat_at=stale)
    jobs.update_job(db, ray_job["id"], heartbeat_at=stale - timedelta(hours=1))
    assert jobs.renew_lease(db, mine["id"])
    assert sorted(jobs.mark_interrupted(db, job_process_alive)) == [theirs["id"], ray_job["id"]]
    row = jobs.get_job(db, theirs["id"])
    assert row["status"] == "failed" and row["resumable"]
    assert "no heartbeat from host-b:4242" in row["error"] and "resume" in row["message"]
    assert not jobs.renew_lease(db, theirs["id"])  # a lost lease cannot be renewed
    assert jobs.get_job(db, mine["id"])["status"] == "running"


def _claim_all(url: str, barrier, out) -> None:
    from loraflow.db import make_engine as engine_for

    engine = engine_for(url, migrate=False)
    barrier.wait()  # every service claims at the same moment
    got = []
    while (job := jobs.claim_next(engine, pid=os.getpid())) is not None:
        got.append(job["id"])
    out.put(got)
    engine.dispose()


def test_services_claiming_at_once_take_each_job_exactly_once(db_url: str) -> None:
    import multiprocessing as mp

    engine = make_engine(db_url)
    made = [new(engine, f"job-{i}")["id"] for i in range(40)]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    every = [job_id for got in claimed for job_id in got]
    assert sorted(every) == made  # each job once, none left
    owners = {jobs.get_job(engine, job_id)["owner"] for job_id in made}
    assert len(owners) == sum(1 for got in claimed if got)
    engine.dispose()
