"""Loading models: device choice, safetensors-only, quantization prerequisites."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from loraflow.errors import ConfigError, ModelLoadError
from loraflow.models.load import load_model_and_tokenizer, resolve_device
from loraflow.models.resolve import ResolvedModel, resolve_base_model

HAS_CUDA = torch.cuda.is_available()


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda" if HAS_CUDA else "cpu")


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda")
    assert "DEVICE=cpu" in str(info.value)
    assert "auto" in str(info.value)


def test_unknown_device_lists_allowed() -> None:
    with pytest.raises(ConfigError, match="'tpu'.*cpu.*auto.*cuda"):
        resolve_device("tpu")


def test_load_tiny_model_cpu_fp32_eval(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(tiny_model_dir), tmp_path))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None


def test_pad_token_falls_back_to_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token", None)
    config_file.write_text(json.dumps(config))
    _, tokenizer = load_model_and_tokenizer(resolve_base_model(str(folder), tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token


def test_pickle_only_folder_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    # Never a real pickle: the loader must refuse without opening it.
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError) as info:
        load_model_and_tokenizer(resolve_base_model(str(folder), tmp_path))
    assert "pytorch_model.bin" in str(info.value)
    assert "safetensors" in str(info.value)


def test_folder_without_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model_and_tokenizer(ResolvedModel("hf_dir", folder, None, "empty"))


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
def test_quantization_without_bitsandbytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_and_tokenizer(resolve_base_model(str(tiny_model_dir), tmp_path), "cpu", "int8")
    assert "loraflow[quantization]" in str(info.value)
    assert "ENABLE_QUANTIZATION=false" in str(info.value)


def test_unknown_quantization(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'8bit'.*int8.*4bit"):
        load_model_and_tokenizer(resolve_base_model(str(tiny_model_dir), tmp_path), "cpu", "8bit")


def test_enable_fp16_and_cuda_memory_fraction_reach_the_gpu_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from loraflow.config import Settings
    from loraflow.engines import hf
    from loraflow.models import load
    from loraflow.services.runtime import load_local

    assert load.cuda_dtype(False) == torch.float32
    calls: list[tuple] = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, str(d)))
    )
    load.limit_gpu_memory("cuda", 1.0)
    assert calls == []
    load.limit_gpu_memory("cuda:0", 0.8)
    assert calls == [(0.8, "cuda:0")]

    seen: dict = {}
    monkeypatch.setattr(hf, "load_local_engine", lambda *a, **kw: seen.update(kw) or (None, []))
    load_local(Settings(data_dir=tmp_path, enable_fp16=False, cuda_memory_fraction=0.5))
    assert (seen["half"], seen["memory_fraction"]) == (False, 0.5)
