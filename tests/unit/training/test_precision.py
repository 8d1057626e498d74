"""Training precision: auto follows this host's measurement, the setting overrides, and a
bf16 run trains (finite loss close to fp32) and records its precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.errors import InvalidInput
from loraflow.training.model import plan_device
from loraflow.training.params import TrainParams
from loraflow.training.trainer import TrainSpec, run_training
from tests.unit.test_hardware import AVX2, AVX512_BF16, fake_cpu

CPU = {"device": "cpu"}


def test_auto_follows_the_measured_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auto = TrainParams.from_dict(CPU)
    # A bf16-capable CPU where bf16 measured slower still trains in fp32.
    fake_cpu(monkeypatch, AVX2, bf16=True)
    assert plan_device(auto, profile_dir=tmp_path / "a")["precision"] == "fp32"
    fake_cpu(monkeypatch, AVX512_BF16, bf16=True)
    plan = plan_device(auto, profile_dir=tmp_path / "b")
    assert plan["precision"] == "bf16" and plan["bf16"] is True
    assert "bf16" in plan["label"]
    # Without a profile to read, auto on CPU stays fp32 (nothing is measured).
    assert plan_device(auto)["precision"] == "fp32"


def test_the_setting_overrides_the_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cpu(monkeypatch, AVX512_BF16, bf16=True)
    fp32 = TrainParams.from_dict({**CPU, "precision": "fp32"})
    assert plan_device(fp32, profile_dir=tmp_path)["bf16"] is False
    bf16 = TrainParams.from_dict({**CPU, "precision": "bf16"})
    assert plan_device(bf16)["bf16"] is True
    with pytest.raises(InvalidInput, match="precision='fp16'"):
        TrainParams.from_dict({"precision": "fp16"})


def _train(model_dir: Path, tmp: Path, precision: str) -> tuple[list[float], dict]:
    rows = [
        {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(8)
    ]
    data = tmp / "data.json"
    data.write_text(json.dumps(rows))
    params = TrainParams.from_dict(
        {**CPU, "precision": precision, "batch_size": 2, "grad_accum": 1, "max_len": 96,
         "max_steps": 3, "val_split": 0, "dropout": 0.0, "lr": 1e-3}
    )  # fmt: skip
    out = tmp / f"out-{precision}"
    spec = TrainSpec("p", str(model_dir), model_dir, data, "alpaca", out, params)
    result = run_training(spec)
    assert result.status == "completed"
    losses = [h["loss"] for h in result.metrics["history"] if "loss" in h]
    return losses, json.loads((out / "loraflow.json").read_text())


def test_bf16_training_is_finite_close_to_fp32_and_recorded(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    fp32, meta32 = _train(tiny_llama_dir, tmp_path, "fp32")
    bf16, meta16 = _train(tiny_llama_dir, tmp_path, "bf16")
    assert meta32["precision"] == "fp32" and meta16["precision"] == "bf16"
    assert len(bf16) == len(fp32) == 3
    for a, b in zip(bf16, fp32, strict=True):
        assert a == a and abs(a) != float("inf")
        assert abs(a - b) <= 0.05 * abs(b) + 0.05
    # Not the same run twice: the products really ran in bf16.
    assert bf16 != fp32
