"""`loraflow memory ...` as a user runs it: create, add, list, export, import, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow.cli import app

runner = CliRunner()


@pytest.fixture()
def data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOAD_LOCAL_MODEL", "false")
    return tmp_path


def test_memory_commands_round_trip(data: Path) -> None:
    assert runner.invoke(app, ["memory", "create", "长夜"]).exit_code == 0
    r = runner.invoke(
        app,
        ["memory", "add", "长夜", "--kind", "character", "--title", "李明", "--content", "剑客。"]
        + ["--keyword", "李明", "--always-on"],
    )
    assert r.exit_code == 0, r.output
    listed = runner.invoke(app, ["memory", "list", "长夜"])
    assert "李明" in listed.output and "yes" in listed.output
    out = data / "export.json"
    assert runner.invoke(app, ["memory", "export", "长夜", "--out", str(out)]).exit_code == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["entries"][0]["title"] == "李明" and doc["entries"][0]["always_on"] is True
    r = runner.invoke(app, ["memory", "import", str(out), "--name", "副本"])
    assert r.exit_code == 0 and "imported 1 entries into 副本" in r.output
    assert "副本" in runner.invoke(app, ["memory", "projects"]).output


def test_memory_errors_exit_non_zero_with_the_reason(data: Path) -> None:
    r = runner.invoke(app, ["memory", "list", "nope"])
    assert r.exit_code == 1 and "no memory project 'nope'" in r.output
    runner.invoke(app, ["memory", "create", "p"])
    r = runner.invoke(
        app, ["memory", "add", "p", "--kind", "monster", "--title", "x", "--content", "y"]
    )
    assert r.exit_code == 1 and "kind 'monster'" in r.output
