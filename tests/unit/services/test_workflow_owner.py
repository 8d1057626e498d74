"""Workflow owners carry their process start time, so a reused pid is not taken for the owner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from loraflow import db
from loraflow.services.infra import owners
from loraflow.services.manage import workflows


@dataclass
class Ctx:
    db: Engine


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _row(engine: Engine, wf_id: str, owner: str) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            db.adapter_workflows.insert().values(
                id=wf_id,
                kind="merge",
                status="running",
                spec={},
                steps=[],
                owner=owner,
                created_at=now,
                updated_at=now,
            )
        )


def _status(engine: Engine, wf_id: str) -> str:
    return workflows.get_workflow(Ctx(engine), wf_id)["status"]


def test_owner_names_host_pid_and_start_time() -> None:
    host, pid, started = owners.owner().rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert float(started) > 0
    assert owners.owner_alive(owners.owner())


def test_a_restarted_container_reusing_the_pid_interrupts_the_old_run(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'wf.db'}")
    host, pid = socket.gethostname(), os.getpid()
    started = float(owners.owner().rsplit(":", 2)[2])
    _row(engine, "mine", owners.owner())
    # Same host and pid, but an earlier process: the pid was reused after a restart.
    _row(engine, "before-restart", f"{host}:{pid}:{started - 3600:.2f}")
    _row(engine, "old-format-alive", f"{host}:{pid}")  # written before start times were kept
    _row(engine, "old-format-dead", f"{host}:{_dead_pid()}")
    _row(engine, "new-format-dead", f"{host}:{_dead_pid()}:{started:.2f}")
    _row(engine, "other-host", f"elsewhere.example:{pid}:{started - 3600:.2f}")

    assert workflows.recover(Ctx(engine)) == 3
    assert _status(engine, "before-restart") == "interrupted"
    assert _status(engine, "old-format-dead") == "interrupted"
    assert _status(engine, "new-format-dead") == "interrupted"
    for still in ("mine", "old-format-alive", "other-host"):
        assert _status(engine, still) == "running", still
    engine.dispose()


@pytest.mark.parametrize("owner", ["", "nonsense", None])
def test_unreadable_owners_count_as_gone(owner: str | None) -> None:
    assert not owners.owner_alive(owner)
