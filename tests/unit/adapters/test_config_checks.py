"""Registration refuses an adapter_config.json that disagrees with its tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loraflow import db
from loraflow.adapters.inspect import inspect_adapter
from loraflow.adapters.merge.models import attach_adapter, load_causal_lm
from loraflow.adapters.registry import Registry
from loraflow.errors import InvalidInput, ModelLoadError
from tests.unit import merge_fixtures as mf

Q_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("config-checks")
    base = mf.build_base(root / "base")
    adapter = mf.make_adapter(base, root / "qvo", seed=1, targets=("q_proj", "v_proj", "o_proj"))
    return {"base": base, "adapter": adapter}


def _edited(made: dict[str, Path], tmp_path: Path, **changes) -> Path:
    dest = shutil.copytree(made["adapter"], tmp_path / "edited")
    config = json.loads((dest / "adapter_config.json").read_text())
    config.update(changes)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


BAD_CONFIGS = {
    "r over rank-4 tensors": (
        {"r": 8},
        rf"gives r=8 for model.layers.0.self_attn.o_proj, but tensor "
        rf"{Q_KEY.replace('q_proj', 'o_proj')} has rank 4 \(shape \[4, 64\]\)",
    ),
    "rank_pattern over rank-4 tensors": (
        {"rank_pattern": {"q_proj": 16}},
        rf"gives r=16 for model.layers.0.self_attn.q_proj, but tensor {Q_KEY} has rank 4",
    ),
    "a target without tensors": (
        {"target_modules": ["q_proj", "v_proj", "o_proj", "k_proj"]},
        r"no tensor adapts a layer named 'k_proj' \(the tensors adapt \['o_proj', 'q_proj', "
        r"'v_proj'\]\)",
    ),
    "tensors of a layer not targeted": (
        {"target_modules": ["q_proj", "v_proj"]},
        r"target_modules=\['q_proj', 'v_proj'\], but tensor base_model.model.model.layers.0."
        r"self_attn.o_proj.lora_A.weight adapts 'o_proj', which PEFT would not load",
    ),
    "a regex that misses a layer": (
        {"target_modules": r".*\.(q_proj|v_proj)"},
        r"does not match model.layers.0.self_attn.o_proj",
    ),
    "alpha zero": ({"lora_alpha": 0}, r"lora_alpha=0 would scale every change to zero"),
    "alpha text": ({"lora_alpha": "eight"}, r"lora_alpha='eight' is not a number"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_config_that_disagrees_with_its_tensors_is_refused(made, tmp_path, db_url, case):
    changes, pattern = BAD_CONFIGS[case]
    folder = _edited(made, tmp_path, **changes)
    registry = Registry(db.make_engine(db_url), max_rank=64)
    with pytest.raises(InvalidInput, match=pattern):
        registry.register(folder)
    assert registry.list() == []
    assert str(folder.resolve()) in registry.scan([tmp_path]).skipped


def test_training_args_that_disagree_with_the_config_are_refused(made, tmp_path):
    folder = _edited(made, tmp_path)
    (folder / "training_args.json").write_text(json.dumps({"rank": 4, "alpha": 32}))
    with pytest.raises(InvalidInput, match="gives lora_alpha=8, but training_args.json says "):
        inspect_adapter(folder)
    (folder / "training_args.json").write_text(json.dumps({"rank": 4, "alpha": 8}))
    facts = inspect_adapter(folder)
    assert (facts.rank, facts.alpha) == (4, 8.0)
    assert facts.target_modules == ["o_proj", "q_proj", "v_proj"]


def test_a_peft_load_error_is_one_sentence_naming_the_adapter_and_the_tensor(made, tmp_path):
    """Loading past the checks (as an unregistered folder would be) gives no raw text."""
    folder = _edited(made, tmp_path, r=8)
    with pytest.raises(ModelLoadError) as caught:
        attach_adapter(load_causal_lm(made["base"]), folder)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PEFT could not load adapter edited: tensor ")
    assert "lora_A" in message and "[4, 64]" in message and "[8, 64]" in message
