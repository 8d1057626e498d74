"""The job queue runner: one worker subprocess at a time, cancel, crash and restart handling."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from loraflow.training import jobs

log = logging.getLogger(__name__)
CANCEL_GRACE_S = 30.0  # a worker that ignores SIGTERM this long is killed
LOG_NAME = "train.log"
_POLL_S = 0.5


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A job's process is its worker, started seconds after the job was claimed, or the service
# that claimed it, started before. One that started much later reuses a dead process's pid.
_CLAIM_TO_SPAWN_S = 120.0


def job_process_alive(pid: int, started_at: datetime | None = None) -> bool:
    """Whether `pid` can still be running a job claimed at `started_at`.

    After a restart (a container's above all) pids are reused: a recorded pid that is now this
    very process, or a process that started well after the job was claimed, runs no job.
    """
    if pid == os.getpid():
        return False
    import psutil

    try:
        created = psutil.Process(pid).create_time()
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not ours to inspect: judge by existence alone
        return pid_alive(pid)
    if started_at is None:
        return True
    if started_at.tzinfo is None:  # SQLite hands back naive UTC datetimes
        started_at = started_at.replace(tzinfo=UTC)
    return created <= started_at.timestamp() + _CLAIM_TO_SPAWN_S


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal a process and all its descendants; returns the pids signalled.

    torchrun starts each rank in a session of its own, so a process-group kill would miss
    them: the tree is walked instead (collected first, while the parent links still exist).
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    return [proc.pid for proc in procs]


def spawn_worker(
    db_url: str,
    job: dict[str, Any],
    lock: Path,
    *,
    follow_parent: bool,
    lease_s: float = jobs.LEASE_S,
) -> subprocess.Popen:
    """Start `python -m loraflow.training.worker JOB_ID`; its log goes to the job's folder."""
    out = Path(job["output_path"])
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "loraflow.training.worker", str(job["id"])]
    if follow_parent:
        argv.append("--follow-parent")
    with open(out / LOG_NAME, "a") as logfile:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own session: a Ctrl-C in the terminal that started it does not reach it.
            start_new_session=True,
        )
    if proc.stdin is not None:
        config = {"db_url": db_url, "lock": str(lock), "lease_s": lease_s}
        proc.stdin.write(json.dumps(config) + "\n")
        proc.stdin.close()
    return proc


def supervise(
    db: Engine,
    job_id: int,
    proc: subprocess.Popen,
    stopping: Callable[[], bool] = lambda: False,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
    lease_s: float = jobs.LEASE_S,
) -> dict[str, Any]:
    """Wait for a worker, forwarding cancel and shutdown as SIGTERM; record a crash.

    The job's lease is renewed here while the worker runs (the worker renews it too).
    """
    jobs.update_job(db, job_id, pid=proc.pid, heartbeat_at=jobs.now())
    term_sent: float | None = None
    renewed = time.monotonic()
    while proc.poll() is None:
        if time.monotonic() - renewed > lease_s / 4:
            jobs.renew_lease(db, job_id)
            renewed = time.monotonic()
        job = jobs.get_job(db, job_id)
        if on_poll is not None:
            on_poll(job)
        if term_sent is None and (job["cancel_requested"] or stopping()):
            proc.send_signal(signal.SIGTERM)
            term_sent = time.monotonic()
        elif term_sent is not None and time.monotonic() - term_sent > CANCEL_GRACE_S:
            # The worker and any launcher ranks it started: none may outlive a cancel.
            kill_tree(proc.pid)
        time.sleep(_POLL_S)
    job = jobs.get_job(db, job_id)
    if job["status"] == "running":
        # The worker died without recording an outcome: a crash, a kill, or out of memory.
        rc = proc.returncode
        why = f"the training process exited with code {rc}"
        if rc in (-signal.SIGKILL, 137):
            why += " (killed; out of memory? lower batch_size or max_len)"
        cancelled = bool(job["cancel_requested"])
        jobs.update_job(
            db,
            job_id,
            status="cancelled" if cancelled else "failed",
            error=None if cancelled else why,
            message="cancelled" if cancelled else f"failed: {why}; see {LOG_NAME}",
            resumable=True,
            completed_at=jobs.now(),
            pid=None,
        )
        job = jobs.get_job(db, job_id)
    return job


class Executor(Protocol):
    """Runs one claimed job to its end (or until the service stops); returns its record."""

    name: str
    slots: int
    """Jobs this executor runs at once for one service."""

    def run(self, job: dict[str, Any], stopping: Callable[[], bool]) -> dict[str, Any]: ...

    def adopt(self, db: Engine) -> list[dict[str, Any]]:
        """Running jobs of a previous run of this service that are still alive, taken over."""
        ...

    def follow(self, job: dict[str, Any], stopping: Callable[[], bool]) -> dict[str, Any]:
        """Follow an adopted job to its end (or until the service stops)."""
        ...


class LocalExecutor:
    """One worker subprocess of this host at a time (the device lock), as the CLI runs one."""

    name = "local"
    slots = 1

    def __init__(self, db: Engine, db_url: str, lock: Path, lease_s: float = jobs.LEASE_S):
        self.db, self.db_url, self.lock, self.lease_s = db, db_url, lock, lease_s

    def run(self, job: dict[str, Any], stopping: Callable[[], bool]) -> dict[str, Any]:
        try:
            proc = spawn_worker(
                self.db_url, job, self.lock, follow_parent=True, lease_s=self.lease_s
            )
        except OSError as exc:
            jobs.update_job(
                self.db,
                job["id"],
                status="failed",
                error=f"could not start the training process: {exc}",
                message=f"failed: could not start the training process: {exc}",
                completed_at=jobs.now(),
            )
            return jobs.get_job(self.db, job["id"])
        return supervise(self.db, job["id"], proc, stopping, lease_s=self.lease_s)

    def adopt(self, db: Engine) -> list[dict[str, Any]]:
        # A local worker follows its service: none outlives a restart.
        return []

    def follow(self, job: dict[str, Any], stopping: Callable[[], bool]) -> dict[str, Any]:
        return job


class JobRunner:
    """Runs queued jobs in background threads of the service, through an executor.

    The local executor runs one job at a time on this host; the Ray executor up to
    RAY_MAX_JOBS at once on the cluster. Every few seconds the runner also marks jobs
    whose lease expired (their owner is gone, on any host) interrupted.
    """

    def __init__(
        self,
        db: Engine,
        db_url: str,
        lock: Path,
        on_finished: Callable[[dict[str, Any]], None] | None = None,
        *,
        executor: Executor | None = None,
        lease_s: float = jobs.LEASE_S,
    ) -> None:
        self.db, self.db_url, self.lock = db, db_url, lock
        # Called with each job's final record (e.g. to register the trained adapter).
        self.on_finished = on_finished
        self.lease_s = lease_s
        self.executor: Executor = executor or LocalExecutor(db, db_url, lock, lease_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[int, threading.Thread] = {}

    def start(self) -> None:
        """Mark jobs orphaned by a previous run as resumable, then start the queue thread."""
        self.sweep()
        for job in self.executor.adopt(self.db):
            log.info("following training job %s, still running on %s", job["id"], job["node"])
            self._start_job(job, adopted=True)
        self._thread = threading.Thread(target=self._loop, name="loraflow-jobs", daemon=True)
        self._thread.start()

    def sweep(self) -> list[int]:
        """Mark running jobs whose owner is gone failed and resumable."""
        lost = jobs.mark_interrupted(self.db, job_process_alive, lease_s=self.lease_s)
        if lost:
            log.warning("training jobs %s were interrupted; they can be resumed", lost)
        return lost

    def stop(self, timeout: float = CANCEL_GRACE_S + 5) -> None:
        """Stop taking jobs; a local worker checkpoints and stops (resumable), a Ray task
        runs on (the next start of the service follows it again)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        for thread in list(self._running.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _start_job(self, job: dict[str, Any], adopted: bool = False) -> None:
        thread = threading.Thread(
            target=self._run_one, args=(job, adopted), name=f"loraflow-job-{job['id']}", daemon=True
        )
        self._running[job["id"]] = thread
        thread.start()

    def _run_one(self, job: dict[str, Any], adopted: bool) -> None:
        try:
            if not adopted:
                log.info("training job %s (%s) started", job["id"], job["task_name"])
            if adopted:
                done = self.executor.follow(job, self._stop.is_set)
            else:
                done = self.executor.run(job, self._stop.is_set)
            log.info("training job %s ended: %s", job["id"], done["status"])
            if self.on_finished is not None and done["status"] in jobs.FINISHED:
                self.on_finished(done)
        except Exception:  # one broken job must not stop the queue
            log.exception("training job %s: runner error", job["id"])
        finally:
            self._running.pop(job["id"], None)

    def _loop(self) -> None:
        swept = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - swept > self.lease_s / 4:
                    self.sweep()
                    swept = time.monotonic()
                if len(self._running) >= self.executor.slots:
                    self._stop.wait(_POLL_S)
                    continue
                job = jobs.claim_next(self.db, pid=os.getpid(), executor=self.executor.name)
                if job is None:
                    self._stop.wait(1.0)
                    continue
                self._start_job(job)
            except Exception:  # one broken job must not stop the queue
                log.exception("training queue error")
                self._stop.wait(2.0)
