"""The adapter registry on a real database: scan, versions, checksums, compatibility, rank."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loraflow import db
from loraflow.adapters.inspect import engine_rank, inspect_adapter
from loraflow.adapters.registry import Registry, check_compatible
from loraflow.errors import Conflict, InvalidInput, NotFound
from tests.unit.models.tiny import build_tiny_model, make_adapter


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-models")
    base = build_tiny_model(root / "base", smollm2_dir, hidden=32)
    wide = build_tiny_model(root / "wide", smollm2_dir, hidden=64)
    return {
        "base": base,
        "wide": wide,
        "a": make_adapter(base, root / "adapters" / "alpha", seed=1),
        "b": make_adapter(base, root / "adapters" / "beta", seed=2),
        "wide_adapter": make_adapter(wide, root / "wide-adapters" / "gamma", seed=3),
    }


@pytest.fixture()
def registry(db_url: str) -> Registry:
    return Registry(db.make_engine(db_url), max_rank=64)


def test_scan_registers_each_folder_once_with_its_lora_facts(
    registry: Registry, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    shutil.copytree(tiny_models["a"], root / "alpha")
    # A training run's folder: <task>_<timestamp>/ with the adapter and loraflow.json.
    run = root / "support_20260101_000000"
    shutil.copytree(tiny_models["b"], run)
    (run / "loraflow.json").write_text(
        json.dumps({"name": "support", "task_name": "support", "dataset": "faq.json"})
    )
    (root / ".scratch").mkdir()  # dot-folders are never adapters

    first = registry.scan([root])
    assert sorted(r.name for r in first.added) == ["alpha", "support"]
    support = registry.get("support")
    assert support.source == "training" and support.dataset == "faq.json"
    assert support.rank == 4 and support.alpha == 8.0
    assert "q_proj" in support.target_modules and len(support.checksum_sha256) == 64
    assert support.to_dict()["engine_max_lora_rank"] == 8

    again = registry.scan([root])
    assert again.added == [] and again.unchanged == 2


def test_versions_lookup_and_tampering(
    registry: Registry, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    v1 = registry.register(shutil.copytree(tiny_models["a"], tmp_path / "v1"), name="helper")
    v2 = registry.register(shutil.copytree(tiny_models["b"], tmp_path / "v2"), name="helper")
    assert (v1.version, v2.version) == (1, 2)
    assert registry.get("helper").id == v2.id  # a bare name is the newest version
    assert registry.get("helper@v1").id == v1.id
    assert registry.get(v1.id).ref == "helper@v1"
    with pytest.raises(Conflict, match="already registered"):
        registry.register(tmp_path / "v1", name="other")
    with pytest.raises(NotFound, match="'helper'"):
        registry.get("nope")

    registry.verify("helper@v1")
    weights = tmp_path / "v1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(InvalidInput, match="does not match its registered checksum"):
        registry.verify("helper@v1")
    assert registry.get("helper@v1").status == "changed"

    shutil.rmtree(tmp_path / "v2")
    with pytest.raises(NotFound, match="no longer exists"):
        registry.verify("helper@v2")
    scanned = registry.scan([tmp_path])
    assert [r.ref for r in scanned.missing] == []  # already flagged by verify
    assert registry.get("helper@v2").status == "missing"


def test_compatibility_names_the_layer_and_both_shapes(tiny_models: dict[str, Path]) -> None:
    good = inspect_adapter(tiny_models["a"])
    check_compatible(good, tiny_models["base"])
    wrong = inspect_adapter(tiny_models["wide_adapter"])
    with pytest.raises(InvalidInput) as err:
        check_compatible(wrong, tiny_models["base"])
    text = str(err.value)
    assert "does not fit the base model" in text
    assert "adapter expects in/out 64x128, base has 32x64" in text  # which layer, both shapes
    assert "model.layers.0.mlp.up_proj" in text


def test_rank_above_the_engine_limit_is_refused_at_registration(
    db_url: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    small = Registry(db.make_engine(db_url), max_rank=2)
    with pytest.raises(InvalidInput, match="rank 4, above MAX_LORA_RANK=2"):
        small.register(shutil.copytree(tiny_models["a"], tmp_path / "x"))
    assert small.list() == []
    assert engine_rank(4) == 8 and engine_rank(300) == 320 and engine_rank(2000) == 2000


def test_pickle_only_and_non_lora_folders_are_refused(
    registry: Registry, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    pickled = shutil.copytree(tiny_models["a"], tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InvalidInput, match="pickle"):
        registry.register(pickled)
    ia3 = shutil.copytree(tiny_models["a"], tmp_path / "ia3")
    cfg = json.loads((ia3 / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (ia3 / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidInput, match="only LoRA"):
        registry.register(ia3)
    odd = shutil.copytree(tiny_models["a"], tmp_path / "odd")
    cfg = json.loads((odd / "adapter_config.json").read_text())
    cfg["r"] = "sixteen"
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidInput, match="must be numbers"):
        registry.register(odd)
    result = registry.scan([tmp_path])
    # A scan registers none of them and says why for each.
    assert set(result.skipped) == {str(p.resolve()) for p in (pickled, ia3, odd)}
    assert "pickle" in result.skipped[str(pickled.resolve())]
    assert registry.list() == []


def test_folders_inside_the_data_dir_survive_a_move_of_the_data_dir(
    db_url: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    old = tmp_path / "old-data"
    shutil.copytree(tiny_models["a"], old / "lora_adapters" / "alpha")
    engine = db.make_engine(db_url)
    Registry(engine, root=old).scan([old / "lora_adapters"])
    # A restored backup: the same files and database rows in another data dir.
    new = tmp_path / "new-data"
    shutil.move(old, new)
    moved = Registry(engine, root=new)
    rec = moved.verify("alpha")
    assert rec.path == str((new / "lora_adapters" / "alpha").resolve())
    assert moved.scan([new / "lora_adapters"]).unchanged == 1
