"""Registered adapters on the local engine: attached on demand, detached least recently used."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select

from loraflow import db
from loraflow.adapters.registry import AdapterRecord
from loraflow.engines.base import LocalEngine
from loraflow.errors import EngineUnavailable
from loraflow.services.context import Context
from loraflow.services.registry.adapters import registry
from loraflow.services.runtime import Runtime, local_engine

log = logging.getLogger(__name__)


def deployed_refs(rt: Context) -> dict[str, str]:
    """Each adapter ref a deployment serves, keeps on standby or could roll back to, with the
    first such deployment (by target name)."""
    with rt.db.connect() as conn:
        rows = conn.execute(
            select(
                db.deployments.c.target, db.deployments.c.state, db.deployments.c.previous
            ).order_by(db.deployments.c.target)
        ).all()
    found: dict[str, str] = {}
    for target, state, previous in rows:
        for st in (state, previous or {}):
            refs = [v["adapter"] for v in st.get("variants", [])]
            refs += [st["standby"]["adapter"]] if st.get("standby") else []
            for ref in refs:
                found.setdefault(ref, str(target))
    return found


def in_use(rt: Context, ref: str) -> str | None:
    """The deployment that serves, keeps on standby or could roll back to `ref`, if any."""
    return deployed_refs(rt).get(ref)


def served_name(rec: AdapterRecord, engine: LocalEngine) -> str:
    """The engine name of a registered adapter: its name, or name@vN when that is taken."""
    paths = engine.adapter_paths()
    loaded = paths.get(rec.name)
    if loaded is None or Path(loaded).resolve() == Path(rec.path).resolve():
        return rec.name
    return rec.ref


def ensure_served(rt: Runtime, ref: str) -> str:
    """The engine name of a registered adapter, attaching it first (checksum verified).

    Attaching past MAX_LOADED_ADAPTERS first detaches the least recently used adapter that
    was attached this way, unless a deployment uses it, a request is decoding with it, or it
    was handed to a request that has not reached the engine yet.
    """
    engine = rt.local
    if engine is None:
        raise EngineUnavailable(f"the local model is not loaded: {rt.local_error}")
    reg = registry(rt)
    rec = reg.get(ref)
    name = served_name(rec, engine)
    if _attached(engine, name, rec):
        return _hand_out(rt, engine, name)
    with rt.serve_lock:
        # Decided again under the lock: another request may have taken the bare name.
        name = served_name(rec, engine)
        if _attached(engine, name, rec):
            return _hand_out(rt, engine, name)
        # Files are checked when they are attached: a changed folder is refused, not served.
        rec = reg.verify(rec.id)
        make_room(rt, rt.settings.max_loaded_adapters - 1)
        engine.load_adapter(name, Path(rec.path))
        rt.attached.add(name, rec.ref)
        return _hand_out(rt, engine, name)


def _hand_out(rt: Runtime, engine: LocalEngine, name: str) -> str:
    """Mark `name` used and, until the request reaches the engine, not to be detached."""
    rt.attached.touch(name)
    if name in rt.attached:
        if engine.on_request is None:
            engine.on_request = rt.attached.arrived  # the engine says when requests arrive
        rt.attached.hand_out(name)
    return name


def make_room(rt: Runtime, keep_at_most: int) -> list[str]:
    """Detach on-demand adapters (least recently used first) until `keep_at_most` remain.

    Adapters a deployment uses, a request in the batch decodes with, or one handed to a
    request still on its way to the engine are skipped.
    """
    engine = local_engine(rt)
    attached = set(engine.adapters())
    for name, _ in rt.attached.oldest_first():
        if name not in attached:  # unloaded through /v1/unload_lora_adapter or a failed deploy
            rt.attached.discard(name)
    busy = engine.adapters_in_use()
    busy |= rt.attached.handed_out()  # handed to requests still on their way to the engine
    # Read once, and only when something must go.
    pinned = deployed_refs(rt) if len(engine.adapters()) > keep_at_most else {}
    detached: list[str] = []
    for name, ref in rt.attached.oldest_first():
        if len(engine.adapters()) <= keep_at_most:
            break
        if name in busy or ref in pinned:
            continue
        engine.unload_adapter(name)
        rt.attached.discard(name)
        detached.append(name)
        log.info("detached adapter %s (least recently used; MAX_LOADED_ADAPTERS)", name)
    if len(engine.adapters()) > keep_at_most:
        log.warning(
            "%d adapters stay attached, above MAX_LOADED_ADAPTERS=%d: the others are deployed, "
            "decoding, or loaded explicitly",
            len(engine.adapters()),
            rt.settings.max_loaded_adapters,
        )
    return detached


def _attached(engine: LocalEngine, name: str, rec: AdapterRecord) -> bool:
    path = engine.adapter_paths().get(name)
    return path is not None and Path(path).resolve() == Path(rec.path).resolve()


def lookup_servable(rt: Runtime, name: str) -> str | None:
    """The engine name for `name` when it is a registered adapter that can be served."""
    rec = registry(rt).find(name)
    if rec is None:
        return None
    return ensure_served(rt, rec.id)
