"""Run one job in this process: `python -m loraflow.training.worker JOB_ID [--follow-parent]`.

The database URL and the device lock path come on stdin as JSON (never argv, where a
password would show in `ps`). Progress goes into the job row; the outcome too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraflow.db import make_engine
from loraflow.errors import LoraflowError
from loraflow.locks import file_lock
from loraflow.training.jobs import get_job, now, update_job
from loraflow.training.params import TrainParams
from loraflow.training.trainer import TrainSpec, last_checkpoint, run_training, write_json

log = logging.getLogger("loraflow.training.worker")
_CANCEL_POLL_S = 1.0


class StopFlag:
    """Set by SIGTERM/SIGINT, a cancel request in the database, or the parent's death."""

    def __init__(self, db: Any, job_id: int, follow_parent: bool) -> None:
        self.db, self.job_id = db, job_id
        self.parent = os.getppid() if follow_parent else None
        self.signalled = False
        self.cancel_requested = False
        self._checked = 0.0

    def __call__(self) -> bool:
        if self.parent is not None and os.getppid() != self.parent:
            self.signalled = True
        if time.monotonic() - self._checked > _CANCEL_POLL_S:
            self._checked = time.monotonic()
            self.cancel_requested = bool(get_job(self.db, self.job_id)["cancel_requested"])
        return self.signalled or self.cancel_requested


def spec_from_job(job: dict[str, Any]) -> TrainSpec:
    """The TrainSpec stored in a job row."""
    values = dict(job["training_params"])
    base_path = Path(values.pop("base_model_path"))
    dataset_path = Path(values.pop("dataset_path"))
    val_path = values.pop("val_path", None)
    return TrainSpec(
        task_name=job["task_name"],
        base_model=job["base_model"],
        base_model_path=base_path,
        dataset_path=dataset_path,
        dataset_type=job["dataset_type"],
        output_dir=Path(job["output_path"]),
        params=TrainParams.from_dict(values),
        val_path=Path(val_path) if val_path else None,
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


def run_job(db: Any, job_id: int, lock: Path | None, follow_parent: bool) -> str:
    """Train job `job_id` and record how it ended; returns the final status."""
    stop = StopFlag(db, job_id, follow_parent)

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.signalled = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    job = get_job(db, job_id)
    update_job(db, job_id, pid=os.getpid())
    spec = spec_from_job(job)

    def report(info: dict[str, Any]) -> None:
        history = info.pop("history")
        update_job(db, job_id, where_status=("running",), **info)
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        write_json(spec.output_dir / "metrics.json", {"history": history})

    try:
        with device_lock(lock, db, job_id):
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
        return _failed(db, job_id, spec, f"{type(exc).__name__}: {exc}")
    if result is not None and result.status == "completed":
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
            + (f"; {result.metrics['stopped_early']}" if "stopped_early" in result.metrics else ""),
        )
        return "completed"
    ckpt = last_checkpoint(spec.output_dir)
    kept = f"checkpoint {ckpt.name} kept" if ckpt else "no checkpoint yet"
    if stop.cancel_requested or get_job(db, job_id)["cancel_requested"]:
        status, message = "cancelled", f"cancelled; {kept}; resume to continue"
    else:
        status, message = "failed", f"interrupted (service stopped); {kept}; resume to continue"
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


def _failed(db: Any, job_id: int, spec: TrainSpec, error: str) -> str:
    ckpt = last_checkpoint(spec.output_dir)
    update_job(
        db,
        job_id,
        status="failed",
        error=error,
        message=f"failed: {error}" + (f" ({ckpt.name} kept)" if ckpt else ""),
        resumable=ckpt is not None,
        completed_at=now(),
        pid=None,
        eta_seconds=None,
    )
    return "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraflow.training.worker")
    parser.add_argument("job_id", type=int)
    parser.add_argument("--follow-parent", action="store_true", help="stop if the parent dies")
    args = parser.parse_args(argv)
    config = json.loads(sys.stdin.readline())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    db = make_engine(config["db_url"])
    lock = Path(config["lock"]) if config.get("lock") else None
    status = run_job(db, args.job_id, lock, args.follow_parent)
    log.info("job %s ended: %s", args.job_id, status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
