"""Real DPO, ORPO and KTO runs of the bundled SmolLM2 on a rule the base does not follow:
held-out preference accuracy rises, cancel keeps a checkpoint and resume finishes, and the
adapter loads with vanilla PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.training.params import TrainParams
from loraflow.training.trainer import TrainSpec, last_checkpoint, run_training
from tests.unit.training.preference_data import write_kto, write_pairs

pytestmark = pytest.mark.integration

STEPS = 6


def _spec(tmp: Path, smollm2_dir: Path, method: str, **extra: object) -> TrainSpec:
    kto = method == "kto"
    data = write_kto(tmp / "kto.jsonl") if kto else write_pairs(tmp / "pairs.jsonl")
    params = TrainParams.from_dict(
        {
            "method": method,
            "batch_size": 2,
            "grad_accum": 1,
            "max_len": 96,
            "max_steps": STEPS,
            "lr": 5e-3,
            "val_split": 0.25,
            "device": "cpu",
            "precision": "fp32",
            **extra,
        }
    )
    kind = "kto" if kto else "preference"
    return TrainSpec(method, "bundled:smollm2", smollm2_dir, data, kind, tmp / "out", params)


@pytest.fixture(scope="module")
def dpo(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict:
    spec = _spec(tmp_path_factory.mktemp("dpo"), smollm2_dir, "dpo")
    reports: list[dict] = []
    first = run_training(
        spec,
        reports.append,
        should_stop=lambda: bool(reports) and (reports[-1].get("step") or 0) >= 2,
    )
    checkpoint = last_checkpoint(spec.output_dir)
    reference = (spec.output_dir / "reference_logps.json").read_text()
    second = run_training(spec, reports.append, resume=True)
    return {
        "spec": spec,
        "first": first,
        "second": second,
        "checkpoint": checkpoint,
        "reports": reports,
        "reference": reference,
    }


def test_dpo_cancel_keeps_a_checkpoint_and_resume_finishes(dpo: dict) -> None:
    assert dpo["first"].status == "cancelled"
    assert dpo["checkpoint"] is not None
    kept = int(dpo["checkpoint"].name.split("-")[1])
    assert 2 <= kept < STEPS
    assert dpo["second"].status == "completed"
    steps = [r["step"] for r in dpo["reports"] if "step" in r]
    resumed = steps[steps.index(kept) + 1 :]
    assert min(resumed) >= kept and steps[-1] == STEPS
    # The resumed run kept the reference computed from the starting weights.
    out = dpo["spec"].output_dir
    assert (out / "reference_logps.json").read_text() == dpo["reference"]


def test_dpo_logs_rewards_and_raises_held_out_accuracy(dpo: dict) -> None:
    history = dpo["second"].metrics["history"]
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, STEPS + 1))
    for key in ("rewards_chosen", "rewards_rejected", "margin", "accuracy"):
        assert all(key in h for h in steps), key
    assert steps[-1]["margin"] > steps[0]["margin"]
    acc = dpo["second"].metrics["preference_accuracy"]
    assert acc["held_out_pairs"] == 4
    assert acc["after"] > acc["before"]
    meta = json.loads((dpo["spec"].output_dir / "loraflow.json").read_text())
    assert meta["method"] == "dpo"
    assert meta["method_params"] == {"beta": 0.1, "loss_type": "sigmoid"}
    assert meta["reference"] == "base" and meta["preference_accuracy"] == acc


def test_dpo_adapter_loads_with_vanilla_peft(dpo: dict, smollm2_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, dpo["spec"].output_dir)
    weights = [p for n, p in model.named_parameters() if "lora_B" in n]
    # Trained: LoRA's B matrices start at zero.
    assert weights and any(float(w.abs().sum()) > 0 for w in weights)


# ORPO's odds-ratio term needs a larger weight than its 0.1 default to act within six steps.
@pytest.mark.parametrize(("method", "beta"), [("orpo", 1.0), ("kto", 0.1)])
def test_orpo_and_kto_raise_held_out_accuracy(
    tmp_path: Path, smollm2_dir: Path, method: str, beta: float
) -> None:
    spec = _spec(tmp_path, smollm2_dir, method, beta=beta)
    result = run_training(spec)
    assert result.status == "completed"
    acc = result.metrics["preference_accuracy"]
    assert acc["held_out_pairs"] >= 2
    assert acc["after"] > acc["before"]
    steps = [h for h in result.metrics["history"] if "loss" in h]
    assert len(steps) == STEPS and all("accuracy" in h for h in steps)
    meta = json.loads((spec.output_dir / "loraflow.json").read_text())
    assert meta["method"] == method and meta["method_params"] == {"beta": beta}


def test_dpo_continues_an_adapter_which_is_then_the_reference(
    dpo: dict, tmp_path: Path, smollm2_dir: Path
) -> None:
    from dataclasses import replace

    start = dpo["spec"].output_dir
    spec = _spec(tmp_path, smollm2_dir, "dpo", max_steps=2, init_adapter="caps")
    result = run_training(replace(spec, init_adapter_path=start))
    assert result.status == "completed"
    # It starts from the trained adapter: held-out accuracy before is that adapter's.
    acc = result.metrics["preference_accuracy"]
    assert acc["before"] == dpo["second"].metrics["preference_accuracy"]["after"]
    # Against the base the trained adapter's margin was large; against itself (the frozen
    # start) the first step's is near zero (LoRA dropout aside).
    trained_margin = [h for h in dpo["second"].metrics["history"] if "margin" in h][-1]["margin"]
    first = [h for h in result.metrics["history"] if "margin" in h][0]
    assert trained_margin > 1.0
    assert abs(first["margin"]) < trained_margin / 4
    meta = json.loads((spec.output_dir / "loraflow.json").read_text())
    assert meta["init_adapter"] == "caps" and meta["reference"] == "caps"
