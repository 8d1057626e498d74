"""Which local engine a start gets: hybrid by default, transformers alone where llama.cpp can't
be beside it, said as a warning only when LOCAL_ENGINE=hybrid was asked for by name."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from loraflow.config import Settings
from loraflow.engines.hf import HFEngine
from loraflow.errors import ConfigError
from loraflow.services import runtime


def _settings(tmp_path: Path, model: Path, **kw: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]  # a developer's .env must not decide
        data_dir=tmp_path, cache_dir=tmp_path / "cache", base_model_name=str(model),
        lora_model_path=tmp_path / "none", **kw,
    )  # fmt: skip


@pytest.fixture
def default_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_ENGINE", raising=False)  # the suite pins transformers


def test_the_default_serves_transformers_alone_without_a_gguf_and_says_so_quietly(
    default_engine: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from loraflow.services.catalog.inference import _answered_by

    settings = _settings(tmp_path, tiny_model_dir)
    assert settings.local_engine == "hybrid"
    engine, warnings = runtime.load_local(settings)
    try:
        assert isinstance(engine, HFEngine) and warnings == []
        # `loraflow inference` says so too, rather than naming an engine that is not there.
        assert _answered_by(settings, engine) == "transformers (hybrid without llama.cpp)"
    finally:
        engine.close()


@pytest.mark.parametrize("explicit", [False, True])
def test_llamacpp_failing_to_start_leaves_the_transformers_engine_serving(
    default_engine: None,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    explicit: bool,
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("Failed to load shared library 'libllama.so'")

    monkeypatch.setattr(runtime, "_load_llamacpp", broken)
    extra = {"local_engine": "hybrid"} if explicit else {}
    engine, warnings = runtime.load_local(_settings(tmp_path, tiny_model_dir, **extra))
    try:
        assert isinstance(engine, HFEngine)
        if explicit:
            assert len(warnings) == 1 and "libllama.so" in warnings[0]
        else:
            assert warnings == []
    finally:
        engine.close()


def test_a_llamacpp_library_that_does_not_load_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraflow.engines.llamacpp_load import import_llama_cpp

    real = builtins.__import__

    def failing(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "llama_cpp":
            raise OSError("libllama.so: cannot open shared object file")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "llama_cpp", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(ConfigError, match="could not be loaded"):
        import_llama_cpp()
