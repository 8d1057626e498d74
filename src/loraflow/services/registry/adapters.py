"""Adapter registry use cases: scan, register, inspect, serve on demand, validation records."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from loraflow import db
from loraflow.adapters.inspect import inspect_adapter
from loraflow.adapters.registry import (
    AdapterRecord,
    Registry,
    ScanResult,
    check_compatible,
    safe_name,
)
from loraflow.config import Settings
from loraflow.errors import Conflict, InvalidInput, LoraflowError, NotFound
from loraflow.models.resolve import resolve_base_model
from loraflow.services.context import Context
from loraflow.training import jobs

log = logging.getLogger(__name__)
# Finished training folders the registry refused (bad files), by path, in this process.
_REFUSED: set[str] = set()


def registry(ctx: Context) -> Registry:
    return Registry(ctx.db, max_rank=ctx.settings.max_lora_rank, root=ctx.settings.data_path)


def adapter_roots(ctx: Context) -> list[Path]:
    """Where adapters are found: LORA_MODEL_PATH and the training output folder."""
    s = ctx.settings
    return [s.lora_path, s.training_output_path]


def base_model_dir(ctx: Context) -> Path:
    """The folder of the configured base model (converted once for bundled models)."""
    s = ctx.settings
    return resolve_base_model(s.base_model_name, s.cache_path).path


def scan(ctx: Context) -> ScanResult:
    return registry(ctx).scan(adapter_roots(ctx))


def sync_trained(ctx: Context) -> list[AdapterRecord]:
    """Register the adapters of completed training jobs not registered yet (by task name)."""
    reg = registry(ctx)
    added = []
    for job in jobs.list_jobs(ctx.db):
        if job["status"] != "completed":
            continue
        out = Path(job["output_path"])
        key = str(out.resolve())
        if key in _REFUSED or reg.find_by_path(out) is not None or not out.is_dir():
            continue
        try:
            added.append(reg.register(out, name=safe_name(job["task_name"]), source="training"))
        except Conflict:
            continue  # registered by another worker meanwhile
        except LoraflowError as exc:
            _REFUSED.add(key)  # not hashed again on every listing
            log.warning("trained adapter at %s was not registered: %s", out, exc)
    return added


def list_adapters(ctx: Context, *, name: str | None = None) -> list[AdapterRecord]:
    sync_trained(ctx)
    return registry(ctx).list(name=name)


def get_adapter(ctx: Context, ref: str) -> AdapterRecord:
    reg = registry(ctx)
    if reg.find(ref) is None:
        sync_trained(ctx)  # a job may have finished a moment ago
    return reg.get(ref)


def verify_adapter(ctx: Context, ref: str) -> AdapterRecord:
    """The record after reading all its files again (no cached digest) against its checksum."""
    get_adapter(ctx, ref)  # a job that just finished is registered first
    return registry(ctx).verify(ref, fresh=True)


def register(
    ctx: Context,
    path: str | Path,
    *,
    name: str | None = None,
    description: str = "",
    tags: list[str] | None = None,
    source: str = "registered",
) -> AdapterRecord:
    """Register a folder inside the data dir or LORA_MODEL_PATH, checked against the base."""
    folder = inside_allowed(ctx, path)
    return registry(ctx).register(
        folder,
        name=name,
        description=description,
        tags=tags,
        source=source,
        base_dir=_base_dir_or_none(ctx),
    )


def inside_allowed(ctx: Context, raw: str | Path, *, field: str = "adapter path") -> Path:
    """An adapter folder path, refused when outside the data dir and LORA_MODEL_PATH.

    Relative paths are adapter folders under LORA_MODEL_PATH, like the ones found at start.
    """
    if not str(raw or "").strip():
        raise InvalidInput(f"{field} is empty; give an adapter folder")
    s = ctx.settings
    given = Path(str(raw)).expanduser()
    too_long = [p for p in given.parts if len(p.encode("utf-8", "surrogatepass")) > 255]
    if too_long:
        raise InvalidInput(
            f"{field} has a name of {len(too_long[0].encode('utf-8', 'surrogatepass'))} bytes; "
            "file systems allow at most 255 a name"
        )
    path = (given if given.is_absolute() else s.lora_path / given).resolve()
    roots = [s.data_path.resolve(), s.lora_path.resolve()]
    if not any(path.is_relative_to(r) for r in roots):
        allowed = " or ".join(str(r) for r in roots)
        raise InvalidInput(
            f"{field} {str(raw)!r} is outside the folders adapters may load from ({allowed})",
            hint="copy the adapter under LORA_MODEL_PATH",
        )
    return path


def _base_dir_or_none(ctx: Context) -> Path | None:
    try:
        return base_model_dir(ctx)
    except Exception:  # no base model here: compatibility is checked when it is loaded
        return None


def compatibility(ctx: Context, ref: str) -> dict[str, Any]:
    """Whether a registered adapter fits the configured base model, with the reasons."""
    rec = registry(ctx).get(ref)
    try:
        check_compatible(inspect_adapter(Path(rec.path)), base_model_dir(ctx))
    except (InvalidInput, NotFound) as exc:
        return {"adapter": rec.ref, "compatible": False, "reason": str(exc)}
    return {"adapter": rec.ref, "compatible": True, "reason": None}


# --- validation records ---------------------------------------------------------------------
def store_validation(
    ctx: Context, report: dict[str, Any], adapter: AdapterRecord | None = None
) -> str:
    """Keep a validation report (as JSON) of a registered adapter's current files; its id."""
    vid = str(report.get("id") or uuid.uuid4().hex)
    overall = report.get("overall")
    if not isinstance(overall, dict):
        overall = {}
    score = float(report.get("overall_score", overall.get("score", 0.0)) or 0.0)
    grade = str(report.get("grade", overall.get("grade", "poor")))
    with ctx.db.begin() as conn:
        conn.execute(
            db.adapter_validations.insert().values(
                id=vid,
                adapter_id=adapter.id if adapter else None,
                checksum_sha256=adapter.checksum_sha256 if adapter else None,
                mode=str(report.get("mode", "standard")),
                score=score,
                grade=grade,
                report=report,
                created_at=datetime.now(UTC),
            )
        )
    return vid


def validations(ctx: Context, adapter_id: str | None = None) -> list[dict[str, Any]]:
    """Stored reports, newest first (of one adapter when given)."""
    t = db.adapter_validations
    q = select(t).order_by(t.c.created_at.desc())
    if adapter_id is not None:
        q = q.where(t.c.adapter_id == adapter_id)
    with ctx.db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    for r in rows:
        r["created_at"] = r["created_at"].isoformat() if r["created_at"] else None
    return rows


def latest_validation(ctx: Context, rec: AdapterRecord) -> dict[str, Any] | None:
    """The newest report of this adapter whose checksum is the adapter's current one."""
    for row in validations(ctx, rec.id):
        if row.get("checksum_sha256") in (None, rec.checksum_sha256):
            return row
    return None


def gate_decision(settings: Settings, report: Any) -> dict[str, Any]:
    """The quality gate's decision on a report (or its `to_dict()`) under these settings."""
    from loraflow.adapters.validation_report import check_gate

    return check_gate(
        report,
        min_score=settings.validation_min_score,
        min_safety=settings.validation_min_safety_score,
        block_on_poor=settings.validation_block_on_poor,
    ).to_dict()
