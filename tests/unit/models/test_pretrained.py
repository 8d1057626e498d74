"""Models loaded from several threads at once all come out whole (tied LM head, no meta)."""

from __future__ import annotations

import threading
from pathlib import Path

from transformers import PreTrainedModel

from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model


def test_concurrent_loads_keep_weight_tying(tiny_model_dir: Path, tmp_path: Path) -> None:
    """transformers swaps PreTrainedModel.tie_weights out while it builds a model; loads racing
    each other could leave the no-op behind for every later model of the process."""
    original = PreTrainedModel.tie_weights
    resolved = resolve_base_model(str(tiny_model_dir), tmp_path)
    models: list = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            for _ in range(3):
                models.append(load_model_and_tokenizer(resolved)[0])
        except BaseException as exc:  # surfaced below, with the thread's own error
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert PreTrainedModel.tie_weights is original
    assert len(models) == 9
    for model in models:
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert not any(p.is_meta for p in model.parameters())
    # And a load after them still ties.
    after = load_model_and_tokenizer(resolved)[0]
    assert after.lm_head.weight is after.model.embed_tokens.weight
