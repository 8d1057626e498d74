"""Finding and checking adapter folders on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.errors import InvalidInput, NotFound
from loraflow.models.adapters import check_adapter_folder, discover_adapters


def _adapter(folder: Path, weights: str = "adapter_model.safetensors") -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (folder / weights).write_bytes(b"\0" * 16)
    return folder


def test_discover_missing_root(tmp_path: Path) -> None:
    assert discover_adapters(tmp_path / "absent") == {}


def test_discover_root_is_an_adapter(tmp_path: Path) -> None:
    root = _adapter(tmp_path / "solo")
    assert discover_adapters(root) == {"solo": root}


def test_discover_subfolders(tmp_path: Path) -> None:
    a = _adapter(tmp_path / "alpha")
    b = _adapter(tmp_path / "beta")
    _adapter(tmp_path / ".training-tmp")
    (tmp_path / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    assert discover_adapters(tmp_path) == {"alpha": a, "beta": b}


def test_check_ok(tmp_path: Path) -> None:
    assert check_adapter_folder(_adapter(tmp_path / "a"))["r"] == 4


def test_check_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        check_adapter_folder(tmp_path / "nope")
    text = str(info.value)
    assert "LoRA adapter not found at" in text
    assert "adapter_config.json" in text
    assert "adapter_model.safetensors" in text


def test_check_pickle_only_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="adapter_model.bin"):
        check_adapter_folder(_adapter(tmp_path / "a", weights="adapter_model.bin"))


def test_check_bad_json(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "a")
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        check_adapter_folder(folder)
