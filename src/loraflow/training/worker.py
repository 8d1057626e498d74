"""Run one job: `python -m loraflow.training.worker JOB_ID [--follow-parent] [--launched]`.

The database URL and the device lock path come on stdin as JSON (never argv, where a
password would show in `ps`). Progress goes into the job row; the outcome too. A job with
a launcher (accelerate, torchrun) is run by this process holding the device lock while the
launcher runs the ranks: the same module with `--launched`, configured through the
environment. Only rank 0 writes progress, metrics and the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraflow.db import make_engine
from loraflow.errors import LoraflowError, is_disk_full
from loraflow.locks import file_lock
from loraflow.training.jobs import LEASE_S, get_job, now, renew_lease, update_job
from loraflow.training.launcher import (
    WORKER_CONFIG_ENV,
    check_launch,
    launch_command,
    uses_cuda,
    worker_config,
)
from loraflow.training.params import TrainParams
from loraflow.training.runner import CANCEL_GRACE_S, LOG_NAME, kill_tree, pid_alive
from loraflow.training.trainer import (
    TrainSpec,
    checkpoint_kept,
    last_checkpoint,
    run_training,
    write_json,
)

log = logging.getLogger("loraflow.training.worker")
_CANCEL_POLL_S = 1.0


class StopFlag:
    """Set by SIGTERM/SIGINT, a cancel request in the database, or a followed process's end."""

    def __init__(
        self,
        db: Any,
        job_id: int,
        follow_parent: bool,
        *,
        poll_db: bool = True,
        watch_pid: int | None = None,
    ) -> None:
        self.db, self.job_id, self.poll_db = db, job_id, poll_db
        self.parent = os.getppid() if follow_parent else None
        self.watch_pid = watch_pid
        self.signalled = False
        self.cancel_requested = False
        # The job left `running` under this process: its lease expired and it was marked
        # interrupted (perhaps resumed elsewhere since). It must not train on.
        self.lost = False
        self._checked = 0.0

    def __call__(self) -> bool:
        if self.parent is not None and os.getppid() != self.parent:
            self.signalled = True
        if self.watch_pid is not None and not pid_alive(self.watch_pid):
            self.signalled = True
        if self.poll_db and time.monotonic() - self._checked > _CANCEL_POLL_S:
            self._checked = time.monotonic()
            job = get_job(self.db, self.job_id)
            self.cancel_requested = bool(job["cancel_requested"])
            self.lost = job["status"] != "running"
        return self.signalled or self.cancel_requested or self.lost

    def install(self) -> None:
        """Turn SIGTERM and SIGINT into a stop at the next step (in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(_sig: int, _frame: Any) -> None:
            self.signalled = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def spec_from_job(job: dict[str, Any]) -> TrainSpec:
    """The TrainSpec stored in a job row."""
    values = dict(job["training_params"])
    base_path = Path(values.pop("base_model_path"))
    dataset_path = Path(values.pop("dataset_path"))
    val_path = values.pop("val_path", None)
    accelerate_config = values.pop("accelerate_config", None)
    init_adapter_path = values.pop("init_adapter_path", None)
    return TrainSpec(
        task_name=job["task_name"],
        base_model=job["base_model"],
        base_model_path=base_path,
        dataset_path=dataset_path,
        dataset_type=job["dataset_type"],
        output_dir=Path(job["output_path"]),
        params=TrainParams.from_dict(values),
        val_path=Path(val_path) if val_path else None,
        accelerate_config=Path(accelerate_config) if accelerate_config else None,
        init_adapter_path=Path(init_adapter_path) if init_adapter_path else None,
    )


def _accuracy_note(metrics: dict[str, Any]) -> str:
    """A preference job's held-out accuracy before and after, for its final message."""
    acc = metrics.get("preference_accuracy")
    if not acc or acc.get("after") is None:
        return ""
    return (
        f"; held-out preference accuracy {acc['before']:.2f} -> {acc['after']:.2f} "
        f"({acc['held_out_pairs']} pairs)"
    )


@contextlib.contextmanager
def device_lock(path: Path | None, db: Any, job_id: int) -> Iterator[None]:
    """Hold the one-job-per-device lock, saying so in the job while waiting."""
    if path is None:
        yield
        return
    with file_lock(
        path,
        on_wait=lambda: update_job(db, job_id, message="waiting for the running job to finish"),
    ):
        yield


class Heartbeat:
    """Renews a job's lease from a background thread while the job trains here.

    The process that trains a job keeps its lease alive even when the service that claimed
    it is gone (a Ray task outlives a restart of its service).
    """

    def __init__(self, db: Any, job_id: int, lease_s: float = LEASE_S) -> None:
        self.db, self.job_id, self.every = db, job_id, max(lease_s / 4, 0.2)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loraflow-lease", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.every):
            try:
                renew_lease(self.db, self.job_id)
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("could not renew the lease of job %s", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        renew_lease(self.db, self.job_id)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(5)


def run_job(
    db: Any,
    job_id: int,
    lock: Path | None,
    follow_parent: bool,
    *,
    rank: int | None = None,
    watch_pid: int | None = None,
    lease_s: float = LEASE_S,
) -> str:
    """Train job `job_id` and record how it ended; returns the final status.

    `rank` is set in a launcher's processes: there only rank 0 polls the database and
    writes progress and the outcome (the others record only a failure of their own).
    Rank 0 (or the only process) renews the job's lease while it runs.
    """
    if rank in (None, 0):
        with Heartbeat(db, job_id, lease_s):
            return _run_job(db, job_id, lock, follow_parent, rank=rank, watch_pid=watch_pid)
    return _run_job(db, job_id, lock, follow_parent, rank=rank, watch_pid=watch_pid)


def _run_job(
    db: Any,
    job_id: int,
    lock: Path | None,
    follow_parent: bool,
    *,
    rank: int | None,
    watch_pid: int | None,
) -> str:
    main = rank in (None, 0)
    stop = StopFlag(db, job_id, follow_parent, poll_db=main, watch_pid=watch_pid)
    stop.install()
    job = get_job(db, job_id)
    if rank is None:
        update_job(db, job_id, pid=os.getpid())
    spec = spec_from_job(job)

    def report(info: dict[str, Any]) -> None:
        history = info.pop("history")
        if not main:
            return
        update_job(db, job_id, where_status=("running",), **info)
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        write_json(spec.output_dir / "metrics.json", {"history": history})

    # The device lock is held until the outcome is recorded, so the job that waits for it
    # starts after this one has ended, in the job records too.
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(device_lock(lock, db, job_id))
            if rank is None:
                # Training starts now: a job claimed while another trained waited until here.
                update_job(
                    db, job_id, where_status=("running",), started_at=now(), message="starting"
                )
                # Ranks skip this: one that left alone would leave the others waiting for it.
                # They stop together at the first step instead.
                if stop():
                    raise KeyboardInterrupt
            resume = last_checkpoint(spec.output_dir) is not None
            result = run_training(spec, report, stop, resume=resume)
        except KeyboardInterrupt:
            result = None
        except LoraflowError as exc:
            return _failed(db, job_id, spec, str(exc))
        except Exception as exc:  # the job fails with a readable message; the log keeps the rest
            traceback.print_exc()
            if disk_full(exc):
                return _failed(
                    db,
                    job_id,
                    spec,
                    f"the disk is full: could not write under {spec.output_dir} ({exc}); "
                    "free space there and resume",
                )
            return _failed(db, job_id, spec, f"{type(exc).__name__}: {exc}")
        if result is not None and result.status == "completed":
            if main:
                update_job(
                    db,
                    job_id,
                    status="completed",
                    progress=100.0,
                    eta_seconds=0.0,
                    completed_at=now(),
                    resumable=False,
                    pid=None,
                    message=f"adapter written to {spec.output_dir}"
                    + _accuracy_note(result.metrics)
                    + (
                        f"; {result.metrics['stopped_early']}"
                        if "stopped_early" in result.metrics
                        else ""
                    ),
                )
            return "completed"
        _, kept = checkpoint_kept(spec.output_dir)
        if stop.lost:
            # Marked interrupted already (its lease expired): that record stands.
            return str(get_job(db, job_id)["status"])
        if stop.cancel_requested or get_job(db, job_id)["cancel_requested"]:
            status, message = "cancelled", f"cancelled; {kept}; resume to continue"
        else:
            status, message = "failed", f"interrupted (service stopped); {kept}; resume to continue"
        if main:
            update_job(
                db,
                job_id,
                status=status,
                message=message,
                error=None if status == "cancelled" else "interrupted",
                resumable=True,
                completed_at=now(),
                pid=None,
                eta_seconds=None,
            )
        return status


def run_launched(db: Any, job_id: int, lock: Path | None, follow_parent: bool, db_url: str) -> str:
    """Hold the device lock while accelerate/torchrun runs the job's ranks; record the outcome.

    SIGTERM, a cancel or the parent's end is passed on to the launcher, which passes it to
    the ranks; they agree on the step to stop at, and rank 0 keeps the checkpoint.
    """
    stop = StopFlag(db, job_id, follow_parent)
    stop.install()
    update_job(db, job_id, pid=os.getpid())
    spec = spec_from_job(get_job(db, job_id))
    p = spec.params
    try:
        note = check_launch(p)
        argv = launch_command(
            p, job_id, cuda=uses_cuda(p), accelerate_config=spec.accelerate_config
        )
    except LoraflowError as exc:
        return _failed(db, job_id, spec, str(exc))
    env = {**os.environ, WORKER_CONFIG_ENV: json.dumps(worker_config(db_url, os.getpid()))}
    # Held until the outcome is recorded, as in run_job.
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(device_lock(lock, db, job_id))
            if stop():
                raise KeyboardInterrupt
            update_job(
                db, job_id, where_status=("running",), started_at=now(), message=f"starting {note}"
            )
            log.info("launching %s", " ".join(argv))
            sys.stdout.flush()
            rc = _run_launcher(argv, env, stop)
        except KeyboardInterrupt:
            rc = None
        except OSError as exc:
            return _failed(db, job_id, spec, f"could not start the {p.launcher} launcher: {exc}")
        job = get_job(db, job_id)
        if job["status"] != "running":
            return str(job["status"])
        # The ranks ended without recording an outcome: a launcher error, a crash or a kill.
        _, kept = checkpoint_kept(spec.output_dir)
        if rc is None or stop.signalled or job["cancel_requested"]:
            cancelled = stop.cancel_requested or bool(job["cancel_requested"])
            how = "cancelled" if cancelled else "interrupted"
            update_job(
                db,
                job_id,
                where_status=("running",),
                status="cancelled" if cancelled else "failed",
                message=f"{how}; {kept}; resume to continue",
                error=None if cancelled else "interrupted",
                resumable=True,
                completed_at=now(),
                pid=None,
                eta_seconds=None,
            )
            return "cancelled" if cancelled else "failed"
        return _failed(
            db, job_id, spec, f"the {p.launcher} launcher exited with code {rc}; see {LOG_NAME}"
        )


def _run_launcher(argv: list[str], env: dict[str, str], stop: StopFlag) -> int:
    """Run the launcher to its end, passing a stop on as SIGTERM (SIGKILL after a grace)."""
    proc = subprocess.Popen(argv, env=env)
    term_sent: float | None = None
    while proc.poll() is None:
        if term_sent is None and stop():
            proc.send_signal(signal.SIGTERM)
            term_sent = time.monotonic()
        elif term_sent is not None and time.monotonic() - term_sent > CANCEL_GRACE_S:
            kill_tree(proc.pid)
        time.sleep(0.5)
    return proc.returncode


def disk_full(exc: BaseException) -> bool:
    """Whether a save failed for lack of space (also as the tokenizers/safetensors text)."""
    if is_disk_full(exc):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "file too large", "disk quota"))


def _failed(db: Any, job_id: int, spec: TrainSpec, error: str) -> str:
    log.error("job %s failed: %s", job_id, error)
    ckpt = last_checkpoint(spec.output_dir)
    # Only a running job: with several ranks, the first failure recorded is the cause.
    update_job(
        db,
        job_id,
        where_status=("running",),
        status="failed",
        error=error,
        message=f"failed: {error}" + (f" ({ckpt.name} kept)" if ckpt else ""),
        resumable=ckpt is not None,
        completed_at=now(),
        pid=None,
        eta_seconds=None,
    )
    return "failed"


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraflow.training.worker")
    parser.add_argument("job_id", type=int)
    parser.add_argument("--follow-parent", action="store_true", help="stop if the parent dies")
    parser.add_argument(
        "--launched", action="store_true", help="run as one rank started by accelerate/torchrun"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.launched:
        # torchrun (which accelerate runs too) gives each rank RANK; the worker that started
        # the launcher gives the database URL and its own pid through the environment.
        config = json.loads(os.environ[WORKER_CONFIG_ENV])
        rank = int(os.environ.get("RANK", "0"))
        db = make_engine(config["db_url"])
        status = run_job(db, args.job_id, None, True, rank=rank, watch_pid=config.get("watch_pid"))
        log.info("job %s rank %s ended: %s", args.job_id, rank, status)
        if status not in ("completed", "cancelled"):
            # Non-zero, so the launcher stops the other ranks at once instead of leaving
            # them waiting in a collective.
            return 1
        _leave_process_group()
        # Everything is recorded and written; skipping the interpreter's teardown of torch
        # and transformers (seconds per rank) lets the launcher, and the queue, move on.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    config = json.loads(sys.stdin.readline())
    db = make_engine(config["db_url"])
    lock = Path(config["lock"]) if config.get("lock") else None
    lease_s = float(config.get("lease_s") or LEASE_S)
    launcher = get_job(db, args.job_id)["training_params"].get("launcher", "none")
    if launcher != "none":
        with Heartbeat(db, args.job_id, lease_s):
            status = run_launched(db, args.job_id, lock, args.follow_parent, config["db_url"])
    else:
        status = run_job(db, args.job_id, lock, args.follow_parent, lease_s=lease_s)
    log.info("job %s ended: %s", args.job_id, status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
