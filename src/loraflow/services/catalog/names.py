"""The catalog: what a request can name, and which engine, adapter or variant answers it.

Every entry point asks here: /ask and the writing studio by their engine / adapter / use_lora
fields (`choose`), the OpenAI and Ollama APIs and the chat view by a model name (`resolve`),
model switching (`switch_model`), and every listing and menu (`entries`). A name means, in
this order: the base model, `remote/<name>`, `assistant/<name>`, a deployment target (routed
to one of its variants), an attached adapter, then a registered adapter (attached on first use).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from loraflow import db
from loraflow.engines import remote as remote_engine
from loraflow.errors import EngineUnavailable, InvalidInput, NotFound
from loraflow.models.bundled import BUNDLED_MODELS
from loraflow.services.catalog import assistants, remote
from loraflow.services.catalog.selection import (
    SELECTION_KEY,
    EngineName,
    Selection,
    current_selection,
    default_selection,
    known_adapters,
    remote_name,
    remote_selection,
)
from loraflow.services.manage import deployments
from loraflow.services.registry import adapters as adapter_registry
from loraflow.services.registry.attach import lookup_servable
from loraflow.services.runtime import Runtime

# Accepted as the base model's name besides BASE_MODEL_NAME itself.
BASE_ALIAS = "base"

TargetKind = Literal["base", "adapter", "assistant", "remote"]


@dataclass(frozen=True)
class ModelTarget:
    """What one API model name means: the local base model, an adapter, or a remote model."""

    name: str
    kind: TargetKind
    adapter: str | None = None
    assistant: str | None = None
    # Set when the name is a deployment target: the variant this request was routed to.
    routed: deployments.Routed | None = None


def base_model_id(rt: Runtime) -> str:
    """The name the APIs list for the local base model."""
    return rt.settings.base_model_name


def model_names(rt: Runtime) -> list[str]:
    """The local models a generation request can name: base model first, then the adapters."""
    return [base_model_id(rt), *known_adapters(rt)]


def resolve(rt: Runtime, name: str | None) -> ModelTarget:
    """The target an API `model` field names; NotFound lists the names that exist."""
    raw = (name or "").strip()
    if not raw:
        raise InvalidInput(f"model is required; known models: {_listing(rt)}")
    if raw in (base_model_id(rt), BASE_ALIAS):
        return ModelTarget(raw, "base")
    if raw.startswith(remote_engine.MODEL_PREFIX):
        # `remote/<name>`: the remote server's base model or one of its adapters (vLLM LoRA).
        name = raw[len(remote_engine.MODEL_PREFIX) :].strip()
        if not name:
            raise InvalidInput(
                f"model {raw!r} names no remote model; e.g. remote/{rt.remote.model}"
            )
        return ModelTarget(raw, "remote", remote.remote_adapter(rt, name))
    if raw.startswith(assistants.MODEL_PREFIX):
        # `assistant/<name>`: its prompt, model or adapter and knowledge bases, with sources.
        found = assistants.get_assistant(rt, raw[len(assistants.MODEL_PREFIX) :])
        return ModelTarget(raw, "assistant", found.adapter, found.name)
    # Ollama clients add the default tag to bare names.
    if raw.endswith(":latest"):
        return resolve(rt, raw[: -len(":latest")])
    # A deployment target routes before any adapter of the same name.
    routed = deployments.route(rt, raw)
    if routed is not None:
        kind: TargetKind = "remote" if routed.remote else "adapter"
        return ModelTarget(raw, kind, routed.adapter, routed=routed)
    if raw in known_adapters(rt):
        rt.attached.touch(raw)  # keeps adapters in use from being detached to make room
        return ModelTarget(raw, "adapter", raw)
    # A registered adapter (e.g. one just trained) is attached on first use.
    served = lookup_servable(rt, raw) if rt.local is not None else None
    if served is not None:
        return ModelTarget(raw, "adapter", served)
    raise NotFound(f"model {raw!r} does not exist; known models: {_listing(rt)}")


def _listing(rt: Runtime) -> str:
    return ", ".join(repr(n) for n in model_names(rt))


def require_adapter(rt: Runtime, name: str) -> str:
    """Return the adapter name, or NotFound naming the adapters that are loaded."""
    names = known_adapters(rt)
    if name not in names and rt.local is not None:
        # A registered adapter (e.g. one just trained) is attached on first use.
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


def choose(
    rt: Runtime,
    *,
    engine: str | None = None,
    adapter: str | None = None,
    use_lora: bool | None = None,
) -> Selection:
    """The engine and adapter for a request's own fields; the shared selection fills the rest.

    An explicit engine or adapter wins, then the seed's use_lora flag, then the selection
    every worker shares (`switch_model`).
    """
    routed = deployments.route(rt, adapter) if adapter is not None else None
    if routed is not None:
        # A deployment target: the variant it routes to, on the engine it is deployed on.
        if routed.remote:
            return Selection(remote_name(rt), routed.adapter)
        return Selection("local", routed.adapter)
    if remote_engine.is_remote(engine):
        # With the remote engine, `adapter` names another model of its server (Ollama, vLLM LoRA).
        return remote_selection(rt, adapter)
    if adapter is not None:
        return Selection("local", require_adapter(rt, adapter))
    if engine == "local":
        return Selection("local", None)
    current = current_selection(rt)
    if use_lora is None:
        return current
    if use_lora is False:
        return current if remote_engine.is_remote(current.engine) else remote_selection(rt)
    if current.engine == "local" and current.adapter:
        return current
    return default_selection(rt, True)


def local_fallback(rt: Runtime) -> Selection:
    """What answers locally when the remote engine cannot: the shared selection when it is a
    local model, else the base model — never an adapter nobody chose."""
    current = current_selection(rt)
    if current.engine == "local":
        return current
    return Selection("local", None)


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
    if remote_engine.is_remote(engine):
        # A remote adapter (vLLM LoRA module) must be listed by the server now.
        sel = Selection(remote_name(rt), remote.require_remote_adapter(rt, adapter))
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


EntryKind = Literal["base", "adapter", "assistant", "remote"]


@dataclass(frozen=True)
class Entry:
    """One name a request can ask for, and where it comes from."""

    name: str
    kind: EntryKind
    parent: str | None = None
    path: str | None = None
    # Adapters: held by the local engine now (the others are attached on first use).
    attached: bool = True


def entries(rt: Runtime, *, registered: bool = True, remote_models: bool = True) -> list[Entry]:
    """Everything a request can name: the base model, the attached adapters, then (with
    `registered`) the registered adapters made for this base that are not attached yet,
    the assistants and (with `remote_models`) the remote server's models, which asks that
    server: one that is down lists none."""
    base = base_model_id(rt)
    paths = rt.local.adapter_paths() if rt.local is not None else {}
    out = [Entry(base, "base")]
    attached = known_adapters(rt)
    out += [Entry(n, "adapter", base, str(paths.get(n) or "")) for n in attached]
    if registered and rt.local is not None:
        newest = {rec.name: rec for rec in adapter_registry.list_adapters(rt)}
        for name, rec in newest.items():
            if name not in attached and _made_for(rec.base_model, rt.settings.base_model_name):
                out.append(Entry(name, "adapter", base, rec.path, attached=False))
    for a in assistants.list_assistants(rt):
        parent = a.adapter or (base if a.engine == "local" else rt.remote.model)
        out.append(Entry(assistants.MODEL_PREFIX + a.name, "assistant", parent, ""))
    try:
        remote_ids = remote.remote_model_ids(rt) if remote_models else []
    except EngineUnavailable:
        remote_ids = []  # /health says why
    out += [Entry(rid, "remote", None, "") for rid in remote_ids]
    return out


def _made_for(recorded: str, base: str) -> bool:
    """Whether an adapter's recorded base model (a hub id or a folder) is the configured one."""

    def last(s: str) -> str:
        return s.rstrip("/").rsplit("/", 1)[-1].lower()

    # A bundled base is recorded by the folder it was converted into.
    names = {last(base), last(BUNDLED_MODELS.get(base.strip().lower(), base))}
    return not recorded or recorded == base or last(recorded) in names


def list_models(rt: Runtime) -> list[dict[str, Any]]:
    """The API listing: the base model, the adapters (attached, then registered for this base
    and attached on first use), assistants and remote models."""
    return [
        {"id": e.name, "kind": e.kind, "parent": e.parent, "path": e.path, "attached": e.attached}
        for e in entries(rt)
    ]
