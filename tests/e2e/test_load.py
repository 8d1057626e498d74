"""bench/load.py against the real test server: every operation runs, none fails."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.e2e.server import BENCH, Server

pytestmark = pytest.mark.integration


def _bench_load() -> ModuleType:
    # load.py imports its siblings by name: tests.e2e.server put bench/ on sys.path.
    spec = importlib.util.spec_from_file_location("bench_load", BENCH / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_run_has_no_errors_and_exercises_every_operation(
    server: Server, tmp_path: Path
) -> None:
    load = _bench_load()
    out = tmp_path / "load.json"
    argv = ["--url", server.url, "--pid", str(server.proc.pid), "--clients", "4"]
    # 15 s is too short to tell a leak from warm-up, so RSS growth is recorded, not judged.
    argv += ["--duration", "15", "--baseline-reps", "1", "--max-rss-growth", "10"]
    assert load.main([*argv, "--json", str(out)]) == 0

    doc = json.loads(out.read_text())
    rows = {r["operation"]: r for r in doc["rows"]}
    assert set(rows) == {*load.OPS, "total"}
    for op in load.OPS:
        assert rows[op]["count"] >= 1, op
        assert rows[op]["errors"] == 0, doc["errors"]
    assert rows["total"]["errors"] == 0 and doc["errors"] == []
    assert doc["rss"]["samples"], "the server's RSS was sampled"
    assert doc["machine"]["cores"] and doc["command"][1].endswith("load.py")
    assert all(ratio > 0 for ratio in doc["ratios"].values())


def test_load_refuses_a_host_that_is_not_loopback() -> None:
    load = _bench_load()
    with pytest.raises(SystemExit, match="not a loopback"):
        load.main(["--url", "http://192.0.2.1:8001", "--duration", "1"])
