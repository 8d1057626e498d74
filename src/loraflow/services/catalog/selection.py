"""Which model answers requests that name none: stored in the database, switched at run time."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, cast

from loraflow import db
from loraflow.engines import remote as remote_engine
from loraflow.errors import LoraflowError
from loraflow.services.catalog import remote
from loraflow.services.registry import lora_records
from loraflow.services.registry.attach import lookup_servable
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


def remote_name(rt: Runtime) -> EngineName:
    """The remote engine's name as a selection stores it: "ollama" or "openai"."""
    return cast(EngineName, rt.remote.name)


def known_adapters(rt: Runtime) -> list[str]:
    """The adapters attached here, after making the loads other workers recorded."""
    if rt.local is None:
        return []
    lora_records.sync(rt)
    return rt.local.adapters()


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
    if remote_engine.is_remote(engine):
        # Stored under the backend of the time; REMOTE_BACKEND may have changed since.
        return Selection(remote_name(rt), adapter if rt.remote.name == engine else None)
    # An adapter removed since the switch is not silently used: fall back to the base.
    if adapter is not None and adapter not in known_adapters(rt):
        adapter = _servable_or_none(rt, adapter)
    return Selection(engine, adapter)


def remote_selection(rt: Runtime, adapter: str | None = None) -> Selection:
    """The remote engine (REMOTE_BACKEND), with one of its server's adapters or none."""
    return Selection(remote_name(rt), remote.remote_adapter(rt, adapter))


def _servable_or_none(rt: Runtime, name: str) -> str | None:
    """A registered adapter another worker switched to, attached here; None when gone."""
    if rt.local is None:
        return None
    try:
        return lookup_servable(rt, name)
    except LoraflowError:
        return None
