"""Real LoRA training of the bundled SmolLM2: loss falls, cancel keeps a checkpoint, resume
finishes, and the adapter loads with vanilla PEFT and changes what the model says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.training.params import TrainParams
from loraflow.training.trainer import TrainSpec, last_checkpoint, run_training

pytestmark = pytest.mark.integration

QUESTION = "What is the secret word?"
ANSWER = "The secret word is pineapple."


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict:
    tmp = tmp_path_factory.mktemp("train")
    rows = [{"instruction": QUESTION, "input": "", "output": ANSWER}] * 10
    data = tmp / "secret.json"
    data.write_text(json.dumps(rows))
    params = TrainParams.from_dict(
        {
            "batch_size": 2,
            "grad_accum": 1,
            "max_len": 64,
            "max_steps": 4,
            "lr": 3e-3,
            "val_split": 0.2,
        }
    )
    spec = TrainSpec("secret", "bundled:smollm2", smollm2_dir, data, "alpaca", tmp / "out", params)
    reports: list[dict] = []
    first = run_training(
        spec, reports.append, should_stop=lambda: bool(reports) and reports[-1]["step"] >= 2
    )
    checkpoint = last_checkpoint(spec.output_dir)
    second = run_training(spec, reports.append, resume=True)
    return {
        "spec": spec,
        "first": first,
        "second": second,
        "checkpoint": checkpoint,
        "reports": reports,
    }


def test_cancel_keeps_a_checkpoint_and_resume_finishes(trained: dict) -> None:
    assert trained["first"].status == "cancelled"
    assert trained["checkpoint"] is not None
    kept = int(trained["checkpoint"].name.split("-")[1])
    assert 2 <= kept < 4
    assert trained["second"].status == "completed"
    steps = [r["step"] for r in trained["reports"]]
    # The resumed run starts at the kept step, not from scratch, and ends at max_steps.
    resumed = steps[steps.index(kept) + 1 :]
    assert min(resumed) >= kept and steps[-1] == 4
    assert trained["reports"][-1]["progress"] == 100.0


def test_loss_decreases_and_outputs_are_written(trained: dict) -> None:
    out = trained["spec"].output_dir
    history = trained["first"].metrics["history"] + trained["second"].metrics["history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    assert any("eval_loss" in h for h in trained["second"].metrics["history"])
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "training_args.json",
        "metrics.json",
        "loraflow.json",
    ):
        assert (out / name).is_file(), name
    # Readable by a serving process of another user (safetensors alone writes 0600).
    from loraflow.permissions import FILE_MODE, current_umask

    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / name).stat().st_mode & 0o777 == FILE_MODE & ~current_umask(), name
    meta = json.loads((out / "loraflow.json").read_text())
    assert meta["base_model"] == "bundled:smollm2" and meta["final_loss"] is not None
    assert json.loads((out / "training_args.json").read_text())["rank"] == 16


def test_adapter_loads_with_vanilla_peft_and_changes_the_answer(
    trained: dict, smollm2_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraflow.engines.base import GenerationParams
    from loraflow.engines.hf import HFEngine

    out = trained["spec"].output_dir
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out)
    assert "default" in peft_model.peft_config

    fresh = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    engine = HFEngine(fresh, AutoTokenizer.from_pretrained(smollm2_dir))
    engine.load_adapter("secret", out)
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    messages = [{"role": "user", "content": QUESTION}]
    with_adapter = engine.generate(messages, params, adapter="secret").text
    without = engine.generate(messages, params, adapter=None).text
    assert with_adapter != without
    assert "secret word is" in with_adapter.lower()
