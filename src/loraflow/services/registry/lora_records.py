"""Adapters loaded or unloaded by name, recorded in the database for every server worker.

`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` change the worker that takes the
request at once and write one row per adapter name: its folder (none once unloaded) and a
fresh token. Whenever a worker looks at its adapters (every request that names or lists
models does) it compares those rows with the tokens it has applied, so the next request
each worker takes sees the load, the in-place swap or the unload. The rows outlive a
restart: a restarted server attaches the adapters loaded this way again.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from loraflow import db
from loraflow.services.registry.adapters import inside_allowed
from loraflow.services.registry.attach import make_room
from loraflow.services.runtime import Runtime, local_engine

log = logging.getLogger(__name__)
PREFIX = "loaded_lora:"


def record(rt: Runtime, name: str, folder: Path | None) -> None:
    """Record that this worker now serves the adapter in `folder` as `name` (None: unloaded)."""
    token = uuid.uuid4().hex
    value = {"path": None if folder is None else str(folder), "token": token}
    db.set_state(rt.db, PREFIX + name, value)
    rt.lora_tokens[name] = token


def _pending(rt: Runtime) -> dict[str, dict[str, Any]]:
    """Records this worker has not applied yet, by adapter name."""
    try:
        rows = db.states_with_prefix(rt.db, PREFIX)
    except SQLAlchemyError as exc:
        # A database that cannot be read now leaves the adapters as they are.
        log.debug("adapter records not read: %s", exc)
        return {}
    found = {key[len(PREFIX) :]: value for key, value in rows.items()}
    return {n: v for n, v in found.items() if rt.lora_tokens.get(n) != v.get("token")}


def sync(rt: Runtime) -> None:
    """Attach, swap or detach what other workers loaded or unloaded by name since last time."""
    if rt.local is None:
        return
    if not _pending(rt):
        return
    with rt.serve_lock:
        # Read again under the lock: a load through this worker meanwhile recorded a newer
        # token, and the older record must not undo it.
        for name, value in sorted(_pending(rt).items()):
            try:
                _apply(rt, name, value.get("path"))
            except Exception as exc:  # one bad record must not fail every request here
                # Not retried on every request: the next load or unload makes a new record.
                log.warning("adapter %r recorded by another worker not attached: %s", name, exc)
            rt.lora_tokens[name] = value.get("token")


def _apply(rt: Runtime, name: str, path: str | None) -> None:
    engine = local_engine(rt)
    attached = name in engine.adapters()
    if path is None:
        if attached:
            engine.unload_adapter(name)
            log.info("adapter %s unloaded (recorded by another worker)", name)
        rt.attached.discard(name)
        return
    # The record may come from another configuration (a restored data dir, another
    # LORA_MODEL_PATH): its folder is checked like one given to /v1/load_lora_adapter.
    folder = inside_allowed(rt, path)
    if not attached:
        make_room(rt, rt.settings.max_loaded_adapters - 1)
    engine.load_adapter(name, folder, replace=attached)
    # Loaded by name: it stays until unloaded, like on the worker that loaded it.
    rt.attached.discard(name)
    log.info("adapter %s attached from %s (recorded by another worker)", name, path)
