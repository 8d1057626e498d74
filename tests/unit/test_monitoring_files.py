"""The Prometheus rules, scrape config and Grafana dashboard in deploy/monitoring/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "loraflow-rules.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "loraflow.json"
# Metric names in PromQL: loraflow's own and the process collector's.
METRIC = re.compile(r"\b((?:loraflow|process)_[a-z0-9_]+)\b")


def expressions() -> list[str]:
    """Every PromQL expression of the alerting rules and of the dashboard's panels."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    return exprs


def metric_names() -> set[str]:
    return {m for e in expressions() for m in METRIC.findall(e)}


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is missing (Debian: apt-get install prometheus; scripts/setup.sh does it)",
)
def test_promtool_accepts_the_alerting_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_rules_and_dashboard_name_metrics_and_the_compose_profile_mounts_them() -> None:
    assert {"loraflow_alerts", "loraflow_http_request_duration_seconds_bucket"} <= metric_names()
    compose = yaml.safe_load((MONITORING.parents[1] / "compose.yaml").read_text())["services"]
    mounted = [v.split(":")[0] for s in ("prometheus", "grafana") for v in compose[s]["volumes"]]
    for path in mounted:
        if path.startswith("./"):
            assert (MONITORING.parents[1] / path).exists(), path
    assert compose["prometheus"]["profiles"] == ["monitoring"]
    assert compose["grafana"]["profiles"] == ["monitoring"]
