"""`loraflow alerts`, `loraflow status` and the UI Status tab's rows with a firing alert."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow import db
from loraflow.cli import app
from loraflow.config import Settings
from loraflow.services import alerts
from loraflow.services.monitor_samples import RequestBuffer


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Nothing listens here: `status` reports the server down at once.
    monkeypatch.setenv("API_PORT", "9")
    settings = Settings(LORAFLOW_DATA_DIR=str(tmp_path), ALERT_FOR=0, ALERT_MIN_REQUESTS=1)
    engine = db.make_engine(settings.db_url)
    state = {"variants": [{"name": "stable", "adapter": "a@v1", "weight": 100.0}]}
    with engine.begin() as conn:
        conn.execute(
            db.deployments.insert().values(
                target="prod",
                strategy="replace",
                state=state,
                version=1,
                updated_at=datetime.now(UTC),
            )
        )
    buf = RequestBuffer()
    buf.add("prod", "stable", True, 3.0)
    buf.flush(engine, "w1")
    events = alerts.evaluate(settings, engine)
    assert [e["event"] for e in events] == ["pending", "firing"]
    engine.dispose()
    return tmp_path


def test_status_and_alerts_list_show_the_firing_alert(data_dir: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "alert firing latency_p95 of prod is 3000 ms, above the threshold 500 ms" in text
    listed = runner.invoke(app, ["alerts", "list", "--json", "--data-dir", str(data_dir)])
    assert listed.exit_code == 0, listed.output
    assert '"state": "firing"' in listed.output and '"rule": "latency_p95"' in listed.output


def test_rules_set_and_refused(data_dir: Path) -> None:
    runner = CliRunner()
    args = ["alerts", "rules", "prod", "--data-dir", str(data_dir), "--json"]
    out = runner.invoke(app, [*args, "--set", "latency_p95.threshold=5000"])
    assert out.exit_code == 0, out.output
    assert '"threshold": 5000' in out.output
    bad = runner.invoke(app, [*args, "--set", "latency.threshold=1"])
    assert bad.exit_code != 0 and "unknown alert rule 'latency'" in bad.output


def test_the_ui_status_tab_lists_the_alert(data_dir: Path) -> None:
    from types import SimpleNamespace

    from loraflow.ui.status import alert_rows

    engine = db.make_engine(Settings(LORAFLOW_DATA_DIR=str(data_dir)).db_url)
    try:
        rows = alert_rows(SimpleNamespace(db=engine))
    finally:
        engine.dispose()
    assert [r[:3] for r in rows] == [["firing", "latency_p95", "prod"]]
    assert "3000 ms" in rows[0][3]
