"""`loraflow alerts`, `loraflow status` and the UI Status tab's rows with a firing alert."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow import db
from loraflow.cli import app
from loraflow.config import Settings
from loraflow.services.ops import alerts
from loraflow.services.ops.monitor_samples import RequestBuffer


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


def test_the_ui_rules_panel_and_deployments_column(data_dir: Path) -> None:
    from loraflow.errors import InvalidInput
    from loraflow.services.ops import alert_rules
    from loraflow.ui.status import rule_change, rule_rows

    settings = Settings(LORAFLOW_DATA_DIR=str(data_dir), ALERT_FOR=0, ALERT_MIN_REQUESTS=1)
    engine = db.make_engine(settings.db_url)
    try:
        # The Models tab's deployments table: each target's open alerts.
        assert alerts.active_by_target(engine) == {"prod": ["latency_p95 firing"]}
        # Save: empty fields stay as they are; the override is the one the API stores.
        change = rule_change("latency_p95", "5000", "", " 30 ")
        assert change == {"latency_p95": {"threshold": 5000.0, "for": 30.0}}
        view = alert_rules.update(settings, engine, "prod", change)
        rows = {r[0]: r for r in rule_rows(view)}
        assert rows["latency_p95"][1:4] == ["5000", f"{settings.alert_window:g}", "30"]
        assert rows["latency_p95"][5] == "for, threshold" and rows["error_rate"][5] == ""
        # 3000 ms is below the new threshold: the alert resolves and the column empties.
        assert [e["event"] for e in alerts.evaluate(settings, engine)] == ["resolved"]
        assert alerts.active_by_target(engine) == {}
        # Reset one rule: the defaults apply again, the other overrides stay.
        alert_rules.update(settings, engine, "prod", rule_change("error_rate", "0.5", "", ""))
        view = alert_rules.reset(settings, engine, "prod", "latency_p95")
        assert view["overrides"] == {"error_rate": {"threshold": 0.5}}
        assert view["rules"]["latency_p95"]["threshold"] == settings.alert_latency_ms
        assert alert_rules.reset(settings, engine, "prod")["overrides"] == {}
        with pytest.raises(InvalidInput, match="at least one of threshold"):
            rule_change("latency_p95", "", None, "")
        with pytest.raises(InvalidInput, match="is not a number"):
            rule_change("latency_p95", "fast", "", "")
        with pytest.raises(InvalidInput, match="unknown alert rule 'latency'"):
            alert_rules.reset(settings, engine, "prod", "latency")
    finally:
        engine.dispose()
