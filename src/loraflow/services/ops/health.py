"""What is configured and loaded, and whether each component works: /model_info and /health."""

from __future__ import annotations

import os
from typing import Any

from loraflow import db
from loraflow.engines import remote as remote_engine
from loraflow.engines.fleet import OpenAIFleet
from loraflow.services.catalog.selection import current_selection, default_selection, known_adapters
from loraflow.services.runtime import Runtime


def model_info(rt: Runtime) -> dict[str, Any]:
    """The seed's /model_info fields plus what is loaded now."""
    s = rt.settings
    sel = current_selection(rt)
    lora_root = s.lora_path
    return {
        "base_model": s.base_model_name,
        "lora_model_path": str(lora_root),
        "lora_exists": bool(known_adapters(rt)) or (lora_root / "adapter_config.json").exists(),
        "using_lora": sel.using_lora,
        "cache_dir": str(s.cache_path),
        "vector_store_path": str(s.vector_store_dir),
        "embedding_model": rt.embedder.name,
        "engine": sel.engine,
        "adapter": sel.adapter,
        "model_used": sel.model_used,
        "adapters": known_adapters(rt),
        "device": rt.local.device if rt.local is not None else None,
        "local_model_loaded": rt.local is not None,
        "local_model_error": rt.local_error,
        "ollama_base_url": s.ollama_base_url,
        "ollama_model": s.ollama_model,
        **remote_engine.describe(s),
        # Which server process answered: several workers share one instance's state.
        "worker_pid": os.getpid(),
    }


def health(rt: Runtime) -> dict[str, Any]:
    """Each component checked for real; degraded while something can still answer."""
    ollama = rt.remote.health()
    try:
        rt.store.refresh()
        n_docs = len(rt.store.list_documents())
        n_chunks = rt.store.count_chunks()
        store_ok, store_detail = True, f"{n_docs} documents, {n_chunks} chunks"
    except Exception as exc:  # a broken store is reported, not raised
        store_ok, store_detail, n_docs, n_chunks = False, str(exc), 0, 0
    local_ok = rt.local is not None
    db_ok, db_detail = db.ping(rt.db)
    components = {
        "rag_handler": store_ok and (local_ok or ollama.ok),
        "vector_store": store_ok,
        "lora_model": bool(known_adapters(rt)),
        "ollama_service": ollama.ok,
    }
    # Without the database the shared selection cannot be read: report the configured one.
    sel = current_selection(rt) if db_ok else default_selection(rt, rt.settings.use_lora_default)
    can_answer = store_ok and ((sel.engine == "local" and local_ok) or ollama.ok or local_ok)
    can_answer = can_answer and db_ok  # every request reads the shared state
    optional = _optional(rt, components, sel.engine, sel.adapter, local_ok)
    if all(components.values()) and db_ok:
        status = "healthy"
    elif can_answer:
        status = "degraded"
    else:
        status = "unhealthy"
    return {
        "status": status,
        "components": components,
        "details": {
            "model_info": {
                "base_model": rt.settings.base_model_name,
                "using_lora": sel.using_lora,
                "engine": sel.engine,
                "adapter": sel.adapter,
            },
            "local_model": "loaded" if local_ok else rt.local_error,
            "local_engine": rt.local.health().detail if rt.local is not None else None,
            "lora_model": (
                f"adapters: {', '.join(known_adapters(rt))}"
                if known_adapters(rt)
                else f"no adapter found in {rt.settings.lora_path}"
            ),
            # The seed's key for the second engine, whichever REMOTE_BACKEND it is.
            "ollama_service": ollama.detail,
            **remote_engine.describe(rt.settings),
            "vector_store": store_detail,
            "database": db_detail,
            "documents": n_docs,
            "chunks": n_chunks,
            "warnings": list(rt.warnings),
            "optional": optional,
            # REMOTE_BACKEND=openai: each replica's health, load and adapters it still lacks.
            "replicas": rt.remote.status() if isinstance(rt.remote, OpenAIFleet) else [],
        },
    }


def _optional(
    rt: Runtime, components: dict[str, bool], engine: str, adapter: str | None, local_ok: bool
) -> dict[str, str]:
    """The components that are down but that the current selection does not need, and why
    (a fresh install has no adapter and, usually, no Ollama: that is not a fault)."""
    out: dict[str, str] = {}
    if not local_ok or remote_engine.is_remote(engine):
        return out
    if not components["ollama_service"]:
        backend = remote_engine.describe(rt.settings)["remote_backend"]
        kind = "Ollama" if backend == "ollama" else "the OpenAI-compatible server"
        out["ollama_service"] = (
            f"{kind} is not running: only needed for use_lora=false (the remote engine); "
            "the local model answers now"
        )
    if not components["lora_model"] and adapter is None:
        out["lora_model"] = (
            "no adapter yet: only needed to answer with one; the base model answers now "
            "(train or register an adapter in Models)"
        )
    return out
