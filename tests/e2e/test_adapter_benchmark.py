"""`loraflow adapters benchmark`: one run measures an adapter and its base; the record keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow.cli import app
from tests.e2e.conftest import ADAPTER_NAME, make_adapter


def json_of(output: str) -> dict:
    """The JSON object a command printed (model loading may print progress bars first)."""
    return json.loads(output[output.index("{\n") :])


def test_benchmark_measures_both_sides_and_is_shown_beside_the_validation(
    tmp_path: Path, smollm2_dir: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_adapter(smollm2_dir, tmp_path / "lora_adapters" / ADAPTER_NAME)
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    where = ["--data-dir", str(tmp_path)]
    scanned = runner.invoke(app, ["adapters", "scan", *where])
    assert scanned.exit_code == 0, scanned.output

    run = runner.invoke(
        app,
        ["adapters", "benchmark", ADAPTER_NAME, "--requests", "2", "--max-tokens", "4", "--json"]
        + where,
    )
    assert run.exit_code == 0, run.output
    out = json_of(run.output)
    # Fixed-length greedy runs: both sides generated exactly 2 x 4 tokens.
    for side in ("base", "with_adapter"):
        assert out[side]["requests"] == 2 and out[side]["tokens"] == 8
        assert out[side]["latency_p95_ms"] >= out[side]["latency_p50_ms"] > 0
        assert out[side]["tokens_per_s"] > 0
    assert out["adapter"].startswith(ADAPTER_NAME) and out["tokens_per_s_ratio"] > 0

    shown = runner.invoke(app, ["adapters", "show", ADAPTER_NAME, *where])
    assert shown.exit_code == 0, shown.output
    record = json_of(shown.output)
    assert "latest_validation" in record
    assert record["benchmark"] == out
    # The web UI's registry shows it beside the validation score.
    from loraflow.ui.adapters import bench_cell

    assert bench_cell(record["benchmark"]).startswith(f"{out['tokens_per_s_ratio']:.2f}x (p95 ")
    assert bench_cell(None) == ""

    missing = runner.invoke(app, ["adapters", "benchmark", "no-such-bot", *where])
    assert missing.exit_code != 0 and "no-such-bot" in missing.output
