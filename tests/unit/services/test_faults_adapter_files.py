"""Fault: a registered adapter's weights are truncated or corrupted on disk.

Registry tests cover verify() on a changed file, and the deployment test covers an error
rate rollback; this checks the serving path a client sees: a request naming the damaged
adapter is refused by checksum with a clear message, and the base model and the other
adapters keep answering exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.config import Settings
from loraflow.engines.hf import HFEngine
from loraflow.errors import InvalidInput
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model
from loraflow.services.catalog.names import base_model_id
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.runtime import Runtime, build_runtime
from loraflow.services.serve.chat import ChatRequest, chat
from tests.unit.models.tiny import build_tiny_model, make_adapter

MESSAGES = [{"role": "user", "content": "Tell me about adapters."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged-models")
    base = build_tiny_model(root / "base", smollm2_dir)
    return {
        "base": base,
        "good": make_adapter(base, root / "adapters" / "good", seed=1),
        "cut": make_adapter(base, root / "adapters" / "cut", seed=2),
        "flipped": make_adapter(base, root / "adapters" / "flipped", seed=3),
    }


@pytest.fixture()
def rt(tiny: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data", load_local_model=False)
    runtime = build_runtime(settings, load_local=False)
    model, tokenizer = load_model_and_tokenizer(
        resolve_base_model(str(tiny["base"]), tmp_path / "cache")
    )
    runtime.local = HFEngine(model, tokenizer, base_model_name="tiny-llama")
    reg = adapter_svc.registry(runtime)
    for name in ("good", "cut", "flipped"):
        reg.register(tiny[name], name=name)
    yield runtime
    runtime.local.close()
    runtime.db.dispose()


def answer(rt: Runtime, model: str) -> str:
    req = ChatRequest(model=model, messages=MESSAGES, max_tokens=8, temperature=0.0)
    return chat(rt, req).choices[0].text


def test_a_damaged_adapter_is_refused_and_the_rest_keep_serving(
    rt: Runtime, tiny: dict[str, Path]
) -> None:
    before = {"good": answer(rt, "good"), "base": answer(rt, base_model_id(rt))}

    weights = tiny["cut"] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    weights = tiny["flipped"] / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last tensor: same size, different content
    weights.write_bytes(bytes(data))

    for name in ("cut", "flipped"):
        with pytest.raises(InvalidInput) as info:
            answer(rt, name)
        message = str(info.value)
        assert "does not match its registered checksum" in message, message
        assert name in message
        assert rt.local is not None and name not in rt.local.adapters()

    assert answer(rt, "good") == before["good"]
    assert answer(rt, base_model_id(rt)) == before["base"]
