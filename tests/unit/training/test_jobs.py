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


def test_restart_marks_orphaned_running_jobs_resumable(db) -> None:
    dead, alive = new(db, "dead"), new(db, "alive")
    jobs.claim_next(db, pid=2**22 + 12345)  # no such process
    jobs.claim_next(db, pid=os.getpid())
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
            assert jobs.claim_next(db, pid=pid)["id"] == made[name]["id"]
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
