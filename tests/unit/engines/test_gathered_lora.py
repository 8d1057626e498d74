"""Gathered LoRA: a batch whose rows use different adapters equals each row run alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraflow.engines.gathered_lora import GatheredLoRA
from tests.unit.models.tiny import make_adapter


def _save(base_dir: Path, dest: Path, seed: int, **lora: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(lora_dropout=0.0, init_lora_weights=False, **lora)  # type: ignore[arg-type]
    get_peft_model(base, config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir: Path, adapters_root: Path, tmp_path_factory) -> object:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # A third adapter with another rank and fewer target modules than alpha and beta.
    gamma = _save(
        tiny_model_dir,
        tmp_path_factory.mktemp("g") / "gamma",
        seed=7,
        r=8,
        lora_alpha=4,
        target_modules=["q_proj"],
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, adapters_root / "alpha", adapter_name="alpha")
    model.load_adapter(str(adapters_root / "beta"), adapter_name="beta")
    model.load_adapter(str(gamma), adapter_name="gamma")
    return model.eval()


def test_mixed_rows_match_each_adapter_run_alone(peft_model) -> None:
    gathered = GatheredLoRA(peft_model)
    assert gathered.supported
    rows = [None, "alpha", "gamma", "beta", "alpha"]
    ids = torch.randint(5, 200, (len(rows), 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), gathered.rows(rows):
        mixed = peft_model(input_ids=ids).logits
    with torch.inference_mode():
        alone = [
            peft_model(input_ids=ids[i : i + 1], adapter_names=[name or "__base__"]).logits
            for i, name in enumerate(rows)
        ]
    for i, expected in enumerate(alone):
        assert torch.allclose(mixed[i], expected[0], atol=1e-5), rows[i]
    # The adapters really differ, so matching each row is not a coincidence.
    assert not torch.allclose(alone[1], alone[3], atol=1e-3)
    # Outside the block the model is PEFT's own again.
    with torch.inference_mode():
        again = peft_model(input_ids=ids[1:2], adapter_names=["alpha"]).logits
    assert torch.equal(again, alone[1])
    gathered.close()


def test_stacks_follow_adapters_attached_later(peft_model, tiny_model_dir: Path, tmp_path) -> None:
    gathered = GatheredLoRA(peft_model)
    assert gathered.current(peft_model)
    peft_model.load_adapter(
        str(make_adapter(tiny_model_dir, tmp_path / "delta", seed=9)), adapter_name="delta"
    )
    try:
        assert not gathered.current(peft_model)
    finally:
        peft_model.delete_adapter("delta")
        gathered.close()


def test_dora_adapters_are_left_to_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dora = _save(
        tiny_model_dir, tmp_path / "dora", seed=3, r=4, target_modules=["q_proj"], use_dora=True
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, dora, adapter_name="dora").eval()
    assert not GatheredLoRA(model).supported


def test_adapters_with_non_linear_layers_are_left_to_peft(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # A full trained copy of the LM head follows PEFT's per-row adapter_names only.
    saved = _save(
        tiny_model_dir,
        tmp_path / "head",
        seed=4,
        r=4,
        target_modules=["q_proj"],
        modules_to_save=["lm_head"],
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, saved, adapter_name="head").eval()
    assert not GatheredLoRA(model).supported
