"""prepare: sample data, train/val split, token statistics, and the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow.cli import app
from loraflow.datasets.prepare import prepare, split_train_val
from loraflow.datasets.sample import write_sample
from loraflow.errors import InvalidInput


def test_split_is_deterministic_and_keeps_a_val_example() -> None:
    items = [{"text": str(i)} for i in range(10)]
    train, val = split_train_val(items, 0.1)
    assert len(val) == 1 and len(train) == 9
    assert split_train_val(items, 0.1) == (train, val)
    assert sorted(e["text"] for e in train + val) == sorted(e["text"] for e in items)
    with pytest.raises(InvalidInput, match="val_split"):
        split_train_val(items, 1.5)


def test_prepare_sample_writes_train_and_val(tmp_path: Path) -> None:
    files = write_sample(tmp_path / "raw")
    assert {f.suffix for f in files} == {".txt", ".json", ".jsonl"}
    report = prepare([tmp_path / "raw"], tmp_path / "out", chunk_size=200, val_split=0.2)
    assert set(report.files.values()) == {"raw"}
    train = [json.loads(x) for x in report.train_path.read_text("utf-8").splitlines()]
    val = [json.loads(x) for x in report.val_path.read_text("utf-8").splitlines()]
    assert len(train) == report.n_train and len(val) == report.n_val >= 1
    assert all(len(r["text"]) <= 200 for r in train + val)


def test_prepare_detects_mixed_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "a", "output": "b"}] * 4))
    (tmp_path / "s.jsonl").write_text(
        json.dumps(
            {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}
        )
        + "\n"
    )
    report = prepare([tmp_path], tmp_path / "out", val_split=0.2)
    assert report.files == {"a.json": "alpaca", "s.jsonl": "sharegpt"}
    assert report.n_train + report.n_val == 5


def test_prepare_nothing_to_read(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="prepare --sample"):
        prepare([tmp_path], tmp_path / "out")


def test_cli_prepare_sample_prints_counts_and_tokens(
    tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "--sample",
            "--chunk-size",
            "300",
            "--val-split",
            "0.2",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "val:" in result.output
    assert "tokens:" in result.output
    assert (tmp_path / "processed" / "train.jsonl").is_file()
