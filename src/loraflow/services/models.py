"""Which model answers: selection stored in the database, run-time switching, info and health."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

from loraflow import db
from loraflow.errors import EngineUnavailable, InvalidInput, LoraflowError, NotFound
from loraflow.services import lora_records, remote
from loraflow.services.runtime import Runtime

SELECTION_KEY = "model_selection"
# "remote" (alias "ollama", "openai") is the REMOTE_BACKEND engine; stored under its backend name.
EngineName = Literal["local", "remote", "ollama", "openai"]


@dataclass(frozen=True)
class Selection:
    """The engine and adapter that answer requests that do not choose their own."""

    engine: EngineName
    adapter: str | None

    @property
    def model_used(self) -> str:
        if self.engine != "local":
            return self.engine  # the remote backend: "ollama" or "openai"
        return "lora" if self.adapter else "base"

    @property
    def using_lora(self) -> bool:
        return self.adapter is not None


def known_adapters(rt: Runtime) -> list[str]:
    """The adapters attached here, after making the loads other workers recorded."""
    if rt.local is None:
        return []
    lora_records.sync(rt)
    return rt.local.adapters()


def require_adapter(rt: Runtime, name: str) -> str:
    """Return the adapter name, or NotFound naming the adapters that are loaded."""
    names = known_adapters(rt)
    if name not in names and rt.local is not None:
        # A registered adapter (e.g. one just trained) is attached on first use.
        from loraflow.services.adapters import lookup_servable

        served = lookup_servable(rt, name)
        if served is not None:
            return served
    if name not in names:
        listed = ", ".join(repr(n) for n in names) if names else "none are loaded"
        raise NotFound(
            f"unknown adapter {name!r}; known adapters: {listed}",
            hint=f"put PEFT adapter folders under {rt.settings.lora_path}",
        )
    return name


def default_selection(rt: Runtime, use_lora: bool) -> Selection:
    """The selection implied by a use_lora flag alone."""
    if not use_lora:
        return remote_selection(rt)
    names = known_adapters(rt)
    return Selection("local", names[0] if names else None)


def initialise_selection(
    rt: Runtime, use_lora: bool | None = None, keep_current: bool = False
) -> Selection:
    """Set the start-up selection from settings (or the serve flag) and store it.

    With `keep_current` (a worker started beside running ones) a stored selection stays.
    """
    if keep_current and db.get_state(rt.db, SELECTION_KEY):
        return current_selection(rt)
    flag = rt.settings.use_lora_default if use_lora is None else use_lora
    sel = default_selection(rt, flag)
    db.set_state(rt.db, SELECTION_KEY, asdict(sel))
    return sel


def current_selection(rt: Runtime) -> Selection:
    """The selection every worker sees (read from the database)."""
    raw = db.get_state(rt.db, SELECTION_KEY)
    if not raw:
        return default_selection(rt, rt.settings.use_lora_default)
    adapter = raw.get("adapter")
    engine = raw.get("engine", "local")
    if remote.is_remote(engine):
        # Stored under the backend of the time; REMOTE_BACKEND may have changed since.
        return Selection(rt.remote.name, adapter if rt.remote.name == engine else None)
    # An adapter removed since the switch is not silently used: fall back to the base.
    if adapter is not None and adapter not in known_adapters(rt):
        adapter = _servable_or_none(rt, adapter)
    return Selection(engine, adapter)


def remote_selection(rt: Runtime, adapter: str | None = None) -> Selection:
    """The remote engine (REMOTE_BACKEND), with one of its server's adapters or none."""
    return Selection(rt.remote.name, remote.remote_adapter(rt, adapter))


def _servable_or_none(rt: Runtime, name: str) -> str | None:
    """A registered adapter another worker switched to, attached here; None when gone."""
    if rt.local is None:
        return None
    from loraflow.services.adapters import lookup_servable

    try:
        return lookup_servable(rt, name)
    except LoraflowError:
        return None


def switch_model(
    rt: Runtime,
    *,
    use_lora: bool | None = None,
    engine: EngineName | None = None,
    adapter: str | None = None,
) -> Selection:
    """Change the model that answers, at run time, for every worker."""
    if use_lora is None and engine is None and adapter is None:
        raise InvalidInput("give use_lora, engine or adapter to switch the model")
    if engine is None:
        # The seed's contract: use_lora=false means the Ollama (now: remote) model.
        engine = "local" if (use_lora or adapter is not None) else "remote"
    if remote.is_remote(engine):
        # A remote adapter (vLLM LoRA module) must be listed by the server now.
        sel = Selection(rt.remote.name, remote.require_remote_adapter(rt, adapter))
    else:
        if rt.local is None:
            raise EngineUnavailable(
                f"the local model is not loaded: {rt.local_error}",
                hint="fix BASE_MODEL_NAME / CACHE_DIR and restart, or switch to engine=remote",
            )
        if adapter is not None:
            sel = Selection("local", require_adapter(rt, adapter))
        elif use_lora:
            names = known_adapters(rt)
            if not names:
                raise NotFound(
                    f"no LoRA adapter is loaded (looked in {rt.settings.lora_path})",
                    hint="train one, or copy a PEFT adapter folder there and restart",
                )
            sel = Selection("local", names[0])
        else:
            sel = Selection("local", None)
    db.set_state(rt.db, SELECTION_KEY, asdict(sel))
    return sel


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
        "device": getattr(rt.local, "device", None),
        "local_model_loaded": rt.local is not None,
        "local_model_error": rt.local_error,
        "ollama_base_url": s.ollama_base_url,
        "ollama_model": s.ollama_model,
        **remote.describe(s),
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
            "lora_model": (
                f"adapters: {', '.join(known_adapters(rt))}"
                if known_adapters(rt)
                else f"no adapter found in {rt.settings.lora_path}"
            ),
            # The seed's key for the second engine, whichever REMOTE_BACKEND it is.
            "ollama_service": ollama.detail,
            **remote.describe(rt.settings),
            "vector_store": store_detail,
            "database": db_detail,
            "documents": n_docs,
            "chunks": n_chunks,
            "warnings": list(rt.warnings),
        },
    }
