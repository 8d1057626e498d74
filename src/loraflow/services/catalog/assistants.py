"""Assistants: a named system prompt, generation defaults, engine + adapter and knowledge bases."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from loraflow import db
from loraflow.engines.base import GenerationParams
from loraflow.engines.remote import is_remote
from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.models.adapters import discover_adapters
from loraflow.rag.collections import check_name
from loraflow.rag.hybrid import check_mode
from loraflow.services.catalog.remote import remote_adapter
from loraflow.services.runtime import Runtime, knowledge_bases

T = db.assistants
# "ollama" is the seed's name of the remote engine (REMOTE_BACKEND); "remote" says the same.
ENGINES = ("local", "remote", "ollama", "openai")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop")
RETRIEVAL_KEYS = ("top_k", "mode")
# The model name under which an assistant appears in the OpenAI and Ollama APIs (chat.py).
MODEL_PREFIX = "assistant/"


@dataclass
class Assistant:
    """One assistant record; empty `collections` means it answers without retrieval."""

    name: str
    engine: str = "local"
    adapter: str | None = None
    system_prompt: str = ""
    description: str = ""
    collections: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""


def _from_row(row: Any) -> Assistant:
    m = row._mapping
    return Assistant(
        name=m["name"],
        engine=m["engine"],
        adapter=m["adapter"],
        system_prompt=m["system_prompt"] or "",
        description=m["description"] or "",
        collections=list(m["collections"] or []),
        generation=dict(m["generation"] or {}),
        retrieval=dict(m["retrieval"] or {}),
        created_at=m["created_at"].isoformat(timespec="seconds"),
        updated_at=m["updated_at"].isoformat(timespec="seconds"),
    )


def list_assistants(rt: Runtime) -> list[Assistant]:
    with rt.db.connect() as conn:
        return [_from_row(r) for r in conn.execute(select(T).order_by(T.c.name)).all()]


def get_assistant(rt: Runtime, name: str) -> Assistant:
    """The assistant called `name`, or NotFound naming the known ones."""
    with rt.db.connect() as conn:
        row = conn.execute(select(T).where(T.c.name == name)).first()
    if row is None:
        known = ", ".join(repr(a.name) for a in list_assistants(rt)) or "none yet"
        raise NotFound(f"unknown assistant {name!r}; known assistants: {known}")
    return _from_row(row)


def adapter_names(rt: Runtime) -> list[str]:
    """Adapters an assistant can name: those in LORA_MODEL_PATH and those the local engine holds."""
    known = set(discover_adapters(rt.settings.lora_path))
    if rt.local is not None:
        known |= set(rt.local.adapters())
    return sorted(known)


def _validate(rt: Runtime, a: Assistant) -> Assistant:
    check_name(a.name)
    if a.engine not in ENGINES:
        raise InvalidInput(f"engine {a.engine!r} is unknown; use one of {', '.join(ENGINES)}")
    if a.adapter is not None and is_remote(a.engine):
        # With the remote engine `adapter` names another model of its server: any model Ollama
        # lists (an adapter deployed there is one) or a vLLM LoRA module. It is not checked
        # against the server here: a server that is down must not block editing assistants.
        remote_adapter(rt, a.adapter)
    elif a.adapter is not None:
        known = adapter_names(rt)
        if a.adapter not in known:
            listed = ", ".join(repr(n) for n in known) or "none are installed"
            raise NotFound(f"unknown adapter {a.adapter!r}; known adapters: {listed}")
    for c in a.collections:
        knowledge_bases(rt).get(c)  # NotFound naming the known collections
    bad = set(a.generation) - set(GENERATION_KEYS)
    bad |= {f"retrieval.{k}" for k in set(a.retrieval) - {*RETRIEVAL_KEYS, "notices"}}
    if bad:
        raise InvalidInput(
            f"unknown setting(s) {sorted(bad)}; generation takes {list(GENERATION_KEYS)}, "
            f"retrieval takes {list(RETRIEVAL_KEYS)}"
        )
    GenerationParams(**{**asdict(GenerationParams()), **a.generation}).validate()
    if "mode" in a.retrieval:
        check_mode(a.retrieval["mode"])
    return a


def _check_keys(spec: dict[str, Any]) -> None:
    allowed = [f for f in Assistant.__dataclass_fields__ if f not in ("created_at", "updated_at")]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown assistant field(s) {unknown}; allowed: {allowed}")


def _values(a: Assistant) -> dict[str, Any]:
    out = asdict(a)
    out.pop("created_at"), out.pop("updated_at")
    return out


def create_assistant(rt: Runtime, spec: dict[str, Any]) -> Assistant:
    """Store a new assistant after checking its adapter, collections and settings exist."""
    _check_keys(spec)
    a = _validate(rt, Assistant(**spec))
    now = datetime.now(UTC)
    try:
        with rt.db.begin() as conn:
            conn.execute(T.insert().values(**_values(a), created_at=now, updated_at=now))
    except IntegrityError as exc:
        raise Conflict(f"an assistant named {a.name!r} already exists") from exc
    return get_assistant(rt, a.name)


def update_assistant(rt: Runtime, name: str, changes: dict[str, Any]) -> Assistant:
    """Change some fields; an update clears the notices about deleted collections."""
    _check_keys(changes)
    current = get_assistant(rt, name)
    retrieval = {k: v for k, v in current.retrieval.items() if k != "notices"}
    merged = replace(current, **{"retrieval": retrieval, **changes})
    a = _validate(rt, merged)
    try:
        with rt.db.begin() as conn:
            conn.execute(
                T.update()
                .where(T.c.name == name)
                .values(**_values(a), updated_at=datetime.now(UTC))
            )
    except IntegrityError as exc:
        raise Conflict(f"an assistant named {a.name!r} already exists") from exc
    return get_assistant(rt, a.name)


def delete_assistant(rt: Runtime, name: str) -> Assistant:
    a = get_assistant(rt, name)
    with rt.db.begin() as conn:
        conn.execute(T.delete().where(T.c.name == name))
    return a
