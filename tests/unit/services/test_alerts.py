"""Alert evaluation on samples in the database: pending -> firing -> resolved, once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loraflow import db
from loraflow.config import Settings
from loraflow.errors import InvalidInput
from loraflow.services.ops import alert_rules, alerts
from loraflow.services.ops.monitor_samples import RequestBuffer


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base = {
        "LORAFLOW_DATA_DIR": str(tmp_path),
        "ALERT_WINDOW": 10,
        "ALERT_FOR": 2,
        "ALERT_MIN_REQUESTS": 3,
        "ALERT_LATENCY_MS": 500,
        "ALERT_MEMORY_PERCENT": 0,
        "ALERT_GPU_MEMORY_PERCENT": 0,
    }
    return Settings(**{**base, **kw})


@pytest.fixture
def engine(db_url: str) -> Any:
    """SQLite, and PostgreSQL / MariaDB when their test servers run (tests/conftest.py)."""
    eng = db.make_engine(db_url)
    variants = [
        {"name": "stable", "adapter": "a@v1", "weight": 90.0},
        {"name": "canary", "adapter": "b@v1", "weight": 10.0},
    ]
    with eng.begin() as conn:
        conn.execute(
            db.deployments.insert().values(
                target="prod",
                strategy="canary",
                state={"strategy": "canary", "variants": variants},
                version=1,
                updated_at=datetime.now(UTC),
            )
        )
    yield eng
    eng.dispose()


def _write(engine: Any, rows: list[tuple[str, bool, float, float]]) -> None:
    buf = RequestBuffer()
    # Rows with explicit times, as a worker's buffer holds them before its batch write.
    buf._rows = [
        {"target": "prod", "variant": v, "ok": ok, "seconds": s, "at": at} for v, ok, s, at in rows
    ]
    buf.flush(engine, "w1")


def test_slow_canary_fires_after_its_duration_then_resolves(tmp_path: Path, engine: Any) -> None:
    s = _settings(tmp_path)
    sent: list[dict[str, Any]] = []
    t0 = 1_000_000.0
    _write(engine, [("canary", True, 2.0, t0 - 1 - i * 0.1) for i in range(5)])
    _write(engine, [("stable", True, 0.1, t0 - 1 - i * 0.1) for i in range(5)])
    first = alerts.evaluate(s, engine, sent.append, now=t0)
    assert [(e["event"], e["alert"]["variant"]) for e in first] == [
        ("pending", None),  # the target as a whole: its p95 is the canary's
        ("pending", "canary"),
    ]
    assert sent == []  # pending is not notified
    # A second worker evaluating at the same moment opens nothing more.
    assert alerts.evaluate(s, engine, sent.append, now=t0) == []
    fired = alerts.evaluate(s, engine, sent.append, now=t0 + 2.5)
    assert {e["event"] for e in fired} == {"firing"}
    canary = next(e["alert"] for e in fired if e["alert"]["variant"] == "canary")
    assert canary["value"] == pytest.approx(2000.0)
    assert canary["threshold"] == 500.0 and canary["fired_at"] is not None
    assert alerts.evaluate(s, engine, sent.append, now=t0 + 2.6) == []
    listed = alerts.list_alerts(engine)
    assert {a["state"] for a in listed["active"]} == {"firing"}
    assert len(listed["active"]) == 2
    # The slow requests leave the window: both resolve, each notified once.
    resolved = alerts.evaluate(s, engine, sent.append, now=t0 + 20)
    assert {e["event"] for e in resolved} == {"resolved"}
    assert [e["event"] for e in sent] == ["firing", "firing", "resolved", "resolved"]
    listed = alerts.list_alerts(engine)
    assert listed["active"] == []
    assert {a["variant"] for a in listed["recent"]} == {None, "canary"}
    assert all(a["ended_at"] for a in listed["recent"])


def test_pending_that_recovers_before_firing_leaves_nothing(tmp_path: Path, engine: Any) -> None:
    s = _settings(tmp_path, ALERT_LATENCY_MS=0, ALERT_ERROR_RATE=0.2)
    t0 = 2_000_000.0
    _write(engine, [("stable", False, 0.1, t0 - 1)] + [("stable", True, 0.1, t0 - 2)] * 3)
    assert [e["event"] for e in alerts.evaluate(s, engine, now=t0)] == ["pending", "pending"]
    _write(engine, [("stable", True, 0.1, t0 + 1)] * 10)
    assert alerts.evaluate(s, engine, now=t0 + 1.5) == []
    assert alerts.list_alerts(engine) == {"active": [], "recent": []}


def test_target_overrides_win_over_defaults(tmp_path: Path, engine: Any) -> None:
    s = _settings(tmp_path)
    alert_rules.update(s, engine, "*", {"latency_p95": {"threshold": 900}})
    alert_rules.update(s, engine, "prod", {"latency_p95": {"for": 0}})
    rules = alert_rules.view(s, engine, "prod")["rules"]
    assert rules["latency_p95"]["threshold"] == 900 and rules["latency_p95"]["for"] == 0
    assert alert_rules.view(s, engine, "other")["rules"]["latency_p95"]["for"] == 2
    t0 = 3_000_000.0
    _write(engine, [("canary", True, 1.0, t0 - 1)] * 5 + [("stable", True, 0.1, t0 - 1)] * 5)
    # for 0: fires at the first evaluation that sees the crossing; 1000 ms > 900 ms.
    events = alerts.evaluate(s, engine, now=t0)
    assert [e["event"] for e in events if e["alert"]["variant"] == "canary"] == [
        "pending",
        "firing",
    ]
    with pytest.raises(InvalidInput, match="unknown alert rule 'latency'"):
        alert_rules.update(s, engine, "prod", {"latency": {"threshold": 1}})
    with pytest.raises(InvalidInput, match="set them on '\\*'"):
        alert_rules.update(s, engine, "prod", {"memory": {"threshold": 50}})
    with pytest.raises(InvalidInput, match="share from 0 to 1"):
        alert_rules.update(s, engine, "prod", {"error_rate": {"threshold": 5}})


def _deployed_at(engine: Any, at: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            db.deployment_events.insert().values(
                target="prod",
                action="deploy",
                status="ok",
                detail={},
                created_at=datetime.fromtimestamp(at, UTC),
            )
        )


def test_throughput_floor_waits_a_whole_window_after_the_deploy(
    tmp_path: Path, engine: Any
) -> None:
    s = _settings(tmp_path, ALERT_LATENCY_MS=0, ALERT_ERROR_RATE=0, ALERT_MIN_THROUGHPUT=30)
    t0 = 4_000_000.0
    _deployed_at(engine, t0)
    _write(engine, [("stable", True, 0.1, t0 + 1)] * 2)  # 2 in 10 s: 12 a minute
    assert alerts.evaluate(s, engine, now=t0 + 5) == []  # deployed 5 s ago: not judged yet
    events = alerts.evaluate(s, engine, now=t0 + 10.5)
    assert [(e["event"], e["alert"]["rule"]) for e in events] == [("pending", "throughput")]
    assert events[0]["alert"]["comparison"] == "below"
    assert events[0]["alert"]["value"] == pytest.approx(12.0)
    # Per target only, never per variant: a 10% canary is not held to the floor.
    assert events[0]["alert"]["variant"] is None


def test_memory_of_all_workers_adds_up(tmp_path: Path, engine: Any) -> None:
    from loraflow.services.ops.monitor_samples import write_resources

    s = _settings(tmp_path, ALERT_LATENCY_MS=0, ALERT_MEMORY_PERCENT=50, ALERT_FOR=0)
    t0 = 5_000_000.0
    for worker in ("w1", "w2"):
        row = {"cpu_percent": 10.0, "memory_percent": 30.0, "rss_bytes": 1e9, "at": t0 - 1}
        write_resources(engine, worker, row)
    events = alerts.evaluate(s, engine, now=t0)
    assert [(e["event"], e["alert"]["rule"]) for e in events] == [
        ("pending", "memory"),
        ("firing", "memory"),
    ]
    assert events[1]["alert"]["value"] == pytest.approx(60.0)  # 30 % + 30 %
    assert events[1]["alert"]["target"] == "*"


def test_webhook_signs_retries_and_never_blocks(tmp_path: Path) -> None:
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from loraflow.services.ops.alert_webhook import QUEUE_SIZE, Webhook

    got: list[tuple[int, bytes, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 500 if not got else 200
            got.append((status, body, self.headers["X-Loraflow-Signature"]))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hook = Webhook(f"http://127.0.0.1:{httpd.server_address[1]}/", "s3cret", backoff=0.05)
    try:
        hook.notify({"event": "firing", "alert": {"id": 1, "rule": "cpu"}})
        hook.close(wait=10)
    finally:
        httpd.shutdown()
    assert [g[0] for g in got] == [500, 200] and got[0][1] == got[1][1]
    assert got[1][2] == "sha256=" + hmac.new(b"s3cret", got[1][1], hashlib.sha256).hexdigest()
    assert hook.sent == 1 and hook.failed == 0

    # Nothing listens: the queue fills, the oldest events are dropped, notify() never waits.
    dead = Webhook("http://127.0.0.1:9/", retries=0)
    dead._stop.set()
    for i in range(QUEUE_SIZE * 2):
        dead.notify({"event": "firing", "alert": {"id": i}})
    assert dead.queue.qsize() <= QUEUE_SIZE and dead.dropped >= QUEUE_SIZE - 1
    dead.close(wait=0.1)
