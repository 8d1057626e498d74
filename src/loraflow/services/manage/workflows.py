"""Persisted adapter operations: merge, validate, export, and merge -> validate -> deploy.

Every operation is a row in `adapter_workflows` with its steps, so its status survives the
process: the service runs them in background threads, the CLI in the foreground, and a
service restart marks the ones it left running as interrupted (still readable).
"""

from __future__ import annotations

import re
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from loraflow import db
from loraflow.errors import Conflict, InvalidInput, LoraflowError, NotFound
from loraflow.services.context import Context
from loraflow.services.infra.owners import owner, owner_alive
from loraflow.services.manage import integration
from loraflow.services.registry import adapters as adapter_svc

if TYPE_CHECKING:
    from loraflow.services.runtime import Runtime

KINDS = ("merge", "validate", "export", "workflow", "integrate")
FINISHED = ("completed", "failed", "cancelled", "interrupted")
EXPORT_FORMATS = ("merged", "gguf", "ollama")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Cancelled(LoraflowError):
    """The workflow was cancelled between two steps."""


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d_%H%M%S")


# --- records ---------------------------------------------------------------------------------
def _view(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    for key in ("created_at", "updated_at"):
        d[key] = d[key].isoformat() if d[key] else None
    d["workflow_id"] = d["id"]
    d["success"] = d["status"] == "completed"
    return d


def get_workflow(ctx: Context, wf_id: str) -> dict[str, Any]:
    with ctx.db.connect() as conn:
        row = conn.execute(
            select(db.adapter_workflows).where(db.adapter_workflows.c.id == wf_id)
        ).first()
    if row is None:
        raise NotFound(f"no workflow with id {wf_id!r}")
    return _view(row)


def list_workflows(ctx: Context, *, status: str | None = None, limit: int = 100) -> list[dict]:
    t = db.adapter_workflows
    q = select(t).order_by(t.c.created_at.desc()).limit(limit)
    if status is not None:
        q = q.where(t.c.status == status)
    with ctx.db.connect() as conn:
        return [_view(r) for r in conn.execute(q)]


def _update(ctx: Context, wf_id: str, **values: Any) -> None:
    values["updated_at"] = _now()
    with ctx.db.begin() as conn:
        conn.execute(
            db.adapter_workflows.update().where(db.adapter_workflows.c.id == wf_id).values(**values)
        )


def cancel(ctx: Context, wf_id: str) -> dict[str, Any]:
    wf = get_workflow(ctx, wf_id)
    if wf["status"] in FINISHED:
        raise Conflict(f"workflow {wf_id} already ended ({wf['status']}); nothing to cancel")
    if wf["status"] == "pending":
        _update(ctx, wf_id, status="cancelled", cancel_requested=True, error="cancelled")
    else:
        _update(ctx, wf_id, cancel_requested=True)
    return get_workflow(ctx, wf_id)


def recover(ctx: Context) -> int:
    """Mark workflows whose process stopped while they were pending or running as interrupted."""
    t = db.adapter_workflows
    with ctx.db.connect() as conn:
        rows = conn.execute(
            select(t.c.id, t.c.owner).where(t.c.status.in_(("pending", "running")))
        ).all()
    dead = [r.id for r in rows if not owner_alive(r.owner)]
    if dead:
        with ctx.db.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id.in_(dead), t.c.status.in_(("pending", "running")))
                .values(
                    status="interrupted",
                    error="the process running this workflow stopped; submit it again",
                    updated_at=_now(),
                )
            )
    return len(dead)


# --- submitting ------------------------------------------------------------------------------
def create(ctx: Context, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Check a spec and store it as a pending workflow (run it with `run` or `start`)."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown workflow kind {kind!r}; allowed: {', '.join(KINDS)}")
    spec = check_spec(ctx, kind, spec)
    wf_id = uuid.uuid4().hex
    now = _now()
    with ctx.db.begin() as conn:
        conn.execute(
            db.adapter_workflows.insert().values(
                id=wf_id,
                kind=kind,
                status="pending",
                owner=owner(),
                spec=spec,
                steps=[{"step": s, "status": "pending"} for s in planned_steps(kind, spec)],
                created_at=now,
                updated_at=now,
            )
        )
    return get_workflow(ctx, wf_id)


def start(rt: Runtime, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Create a workflow and run it in a background thread of the service."""
    wf = create(rt, kind, spec)
    thread = threading.Thread(
        target=run, args=(rt, wf["id"]), daemon=True, name=f"workflow-{wf['id'][:8]}"
    )
    rt.workflow_threads[wf["id"]] = thread
    thread.start()
    return wf


def wait(rt: Runtime, wf_id: str, timeout: float | None = None) -> dict[str, Any]:
    thread = rt.workflow_threads.get(wf_id)
    if thread is not None:
        thread.join(timeout)
    return get_workflow(rt, wf_id)


def planned_steps(kind: str, spec: dict[str, Any]) -> list[str]:
    if kind == "integrate":
        return integration.planned_steps(spec)
    if kind != "workflow":
        return [kind]
    steps = ["merge"] if spec.get("merge") else []
    if spec.get("validate") is not None:
        steps.append("validate")
    if spec.get("deploy"):
        steps.append("deploy")
    return steps


def check_spec(ctx: Context, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Catch bad input before anything runs (unknown adapters, methods, strategies)."""
    from loraflow.adapters.deploy import check_strategy

    if not isinstance(spec, dict):
        raise InvalidInput("a workflow spec is a JSON object")
    if kind == "integrate":
        return integration.check_spec(ctx, spec)
    spec = dict(spec)
    reg = adapter_svc.registry(ctx)
    if kind == "merge" or (kind == "workflow" and spec.get("merge")):
        m = spec if kind == "merge" else dict(spec["merge"])
        refs = m.get("adapters") or []
        if not isinstance(refs, list) or not refs:
            raise InvalidInput("a merge needs a list of registered adapters to merge, got none")
        ids: dict[str, str] = {}
        for ref in refs:
            rec = reg.get(str(ref))
            if rec.id in ids:
                raise InvalidInput(
                    f"adapter {rec.ref} is given twice ({ids[rec.id]!r} and {str(ref)!r}); "
                    f"merging an adapter with itself only rescales it, so it is refused",
                    hint="to scale one adapter, merge it alone with task_arithmetic and a lambda",
                )
            ids[rec.id] = str(ref)
        _check_method(str(m.get("method") or "linear"), len(refs))
        if m.get("into", "adapter") not in ("adapter", "model"):
            raise InvalidInput(f"into={m.get('into')!r} must be 'adapter' or 'model'")
        name = m.get("name") or "merged"
        if not _NAME.match(str(name)):
            raise InvalidInput(f"merge name {name!r} must be 1-64 letters, digits, '.', '_', '-'")
        if kind == "workflow" and m.get("into", "adapter") != "adapter" and spec.get("deploy"):
            raise InvalidInput("only a merge into an adapter can be deployed (into='adapter')")
        if kind == "workflow":
            spec["merge"] = m
    if kind in ("validate", "export") or (kind == "workflow" and not spec.get("merge")):
        ref = spec.get("adapter")
        if not ref:
            raise InvalidInput(f"a {kind} needs 'adapter' (a registered adapter name or id)")
        reg.get(str(ref))
    if kind == "validate" or (kind == "workflow" and spec.get("validate") is not None):
        v = spec if kind == "validate" else (spec.get("validate") or {})
        mode = v.get("mode", "standard")
        if mode not in ("quick", "standard", "comprehensive"):
            raise InvalidInput(
                f"unknown validation mode {mode!r}; allowed: quick, standard, comprehensive"
            )
    if kind == "export":
        fmt = spec.get("format", "merged")
        if fmt not in EXPORT_FORMATS:
            raise InvalidInput(
                f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}"
            )
        if spec.get("quantization") not in (None, "8bit", "4bit"):
            raise InvalidInput(
                f"quantization {spec.get('quantization')!r} must be 8bit, 4bit or empty"
            )
    if kind == "workflow":
        if not spec.get("merge") and not spec.get("validate") and not spec.get("deploy"):
            raise InvalidInput("a workflow needs at least one of merge, validate, deploy")
        d = spec.get("deploy")
        if d:
            if not isinstance(d, dict) or not d.get("target"):
                raise InvalidInput("deploy needs a target (the model name clients call)")
            check_strategy(str(d.get("strategy", "replace")))
    return spec


def _check_method(method: str, n: int) -> None:
    from loraflow.adapters.merge import METHODS

    if method not in METHODS:
        raise InvalidInput(f"unknown merge method {method!r}; allowed: {', '.join(METHODS)}")
    METHODS[method].check_count(n)


# --- running ---------------------------------------------------------------------------------
def run(ctx: Context, wf_id: str, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict:
    """Run a pending workflow to its end here; the final record (never raises for a step)."""
    wf = get_workflow(ctx, wf_id)
    if wf["status"] != "pending":
        return wf
    _update(ctx, wf_id, status="running")
    steps = list(wf["steps"])
    carry: dict[str, Any] = {}
    try:
        for i, step in enumerate(steps):
            if get_workflow(ctx, wf_id)["cancel_requested"]:
                raise Cancelled("cancelled before step " + step["step"])
            steps[i] = {**step, "status": "running", "started_at": _now().isoformat()}
            _update(ctx, wf_id, steps=steps)

            def progress(msg: str, frac: float, i: int = i) -> None:
                steps[i] = {**steps[i], "message": msg, "progress": round(float(frac), 3)}
                _update(ctx, wf_id, steps=steps)
                if on_step is not None:
                    on_step(steps[i])

            detail = _STEPS[step["step"]](ctx, wf["kind"], wf["spec"], carry, progress)
            steps[i] = {
                **steps[i],
                "status": "completed",
                "progress": 1.0,
                "finished_at": _now().isoformat(),
                "detail": detail,
            }
            _update(ctx, wf_id, steps=steps)
            if on_step is not None:
                on_step(steps[i])
    except Exception as exc:
        status = "cancelled" if isinstance(exc, Cancelled) else "failed"
        message = str(exc) if isinstance(exc, LoraflowError) else _unexpected(exc)
        for i, step in enumerate(steps):
            if step["status"] == "running":
                steps[i] = {**step, "status": status, "error": message}
        _update(ctx, wf_id, status=status, steps=steps, error=message, result=carry or None)
        return get_workflow(ctx, wf_id)
    _update(ctx, wf_id, status="completed", steps=steps, result=carry)
    return get_workflow(ctx, wf_id)


def _unexpected(exc: Exception) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return f"unexpected error: {last}"


def _merge_step(ctx: Context, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    from loraflow.adapters.merge import merge_adapters

    m = spec if kind == "merge" else spec["merge"]
    reg = adapter_svc.registry(ctx)
    recs = [reg.verify(str(r)) for r in m["adapters"]]
    into = m.get("into", "adapter")
    name = str(m.get("name") or "merged")
    s = ctx.settings
    root = s.lora_path if into == "adapter" else s.data_path / "models" / "merged"
    out = root / f"{name}_{_stamp()}"
    result = merge_adapters(
        [Path(r.path) for r in recs],
        base_model_dir=adapter_svc.base_model_dir(ctx),
        method=str(m.get("method") or "linear"),
        weights=m.get("weights"),
        density=m.get("density"),
        t=m.get("t"),
        lambda_=m.get("lambda"),
        max_rank=m.get("max_rank"),
        max_error=m.get("max_error"),
        into=into,
        output_dir=out,
        seed=None if m.get("seed") is None else int(m["seed"]),
        engine_max_rank=s.max_lora_rank,
        progress=progress,
    )
    detail: dict[str, Any] = {
        "output_dir": str(out),
        "into": into,
        "seed": result.seed,
        "warnings": list(result.warnings),
        "checks": result.checks,
    }
    if into == "adapter":
        rec = reg.register(
            out,
            name=name,
            description=m.get("description")
            or f"{m.get('method', 'linear')} merge of " + ", ".join(r.ref for r in recs),
            tags=["merged"],
            source="merge",
        )
        detail["adapter"] = rec.to_dict()
        carry["adapter"] = rec.id
        carry["adapter_ref"] = rec.ref
    else:
        carry["model_dir"] = str(out)
    return detail


def _validate_step(ctx: Context, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    from loraflow.adapters.validate import validate_adapter

    v = spec if kind == "validate" else (spec.get("validate") or {})
    reg = adapter_svc.registry(ctx)
    rec = reg.verify(str(carry.get("adapter") or spec.get("adapter")))
    val_file = v.get("val_file")
    report = validate_adapter(
        Path(rec.path),
        adapter_svc.base_model_dir(ctx),
        mode=v.get("mode", "standard"),
        questions=v.get("questions"),
        val_file=_inside_data(ctx, val_file) if val_file else _own_val_file(rec),
        device="cpu",
        progress=progress,
    )
    data = report.to_dict()
    vid = adapter_svc.store_validation(ctx, data, rec)
    decision = adapter_svc.gate_decision(ctx.settings, report)
    reg.set_metrics(rec.id, {"validation_score": data["overall_score"], "grade": data["grade"]})
    carry["validation_id"] = vid
    carry["adapter"] = rec.id
    return {
        "validation_id": vid,
        "overall_score": data["overall_score"],
        "grade": data["grade"],
        "gate": decision,
        "recommendations": data["recommendations"],
    }


def _own_val_file(rec: adapter_svc.AdapterRecord) -> Path | None:
    """The validation split a training run left beside its adapter, if any."""
    folder = Path(rec.path)
    for name in ("val.jsonl", "val.json", "validation.jsonl"):
        for candidate in (folder / name, folder.parent / name):
            if candidate.is_file():
                return candidate
    return None


def _inside_data(ctx: Context, raw: str) -> Path:
    """A validation split uploaded like a training dataset (a generated upload name)."""
    from loraflow.services.train.datasets import dataset_path

    return dataset_path(ctx, raw)


def _deploy_step(ctx: Context, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    from loraflow.adapters.deploy import SETTINGS
    from loraflow.services.manage import deployments
    from loraflow.services.runtime import Runtime

    # The CLI runs workflows with settings and a database only: no engine to deploy to.
    remote = spec["deploy"].get("engine") == "remote"
    if not isinstance(ctx, Runtime) or (ctx.local is None and not remote):
        raise InvalidInput(
            "deploying needs the running service with its local model loaded",
            hint="run the workflow through the server (loraflow adapters workflow --url ...)",
        )
    d = dict(spec["deploy"])
    ref = str(carry.get("adapter") or spec.get("adapter"))
    progress(f"deploying {ref} to {d['target']}", 0.1)
    result = deployments.deploy(
        ctx,
        str(d["target"]),
        ref,
        str(d.get("strategy", "replace")),
        percent=d.get("percent"),
        schedule=d.get("schedule"),
        step_requests=d.get("step_requests"),
        split=d.get("split"),
        force=bool(d.get("force", False)),
        settings={k: d[k] for k in SETTINGS if d.get(k) is not None},
        engine=d.get("engine"),
    )
    carry["deployment"] = {"target": result["target"], "version": result["version"]}
    return {"target": result["target"], "version": result["version"], "steps": result["steps"]}


def _export_step(ctx: Context, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    from loraflow.adapters import export as exporter
    from loraflow.adapters.gguf import export_gguf_adapter
    from loraflow.adapters.ollama_deploy import deploy_to_ollama, write_modelfile

    s = ctx.settings
    rec = adapter_svc.registry(ctx).verify(str(spec["adapter"]))
    base = adapter_svc.base_model_dir(ctx)
    fmt = spec.get("format", "merged")
    out = s.data_path / "exports" / f"{rec.name}-v{rec.version}_{fmt}_{_stamp()}"
    if fmt == "merged":
        result = exporter.export_merged_model(
            Path(rec.path),
            base,
            out,
            quantization=spec.get("quantization"),
            progress=lambda msg, done, total: progress(msg, done / total if total else 0.0),
        )
        carry["export_dir"] = str(out)
        return {"output_dir": str(out), "checks": result.to_dict()}
    out.mkdir(parents=True, exist_ok=False)
    gguf_path = export_gguf_adapter(Path(rec.path), base, out / f"{rec.name}.gguf")
    base_ref = str(spec.get("ollama_base") or s.ollama_model)
    modelfile = write_modelfile(out / "Modelfile", base=base_ref, adapter_file=gguf_path.name)
    detail: dict[str, Any] = {
        "output_dir": str(out),
        "gguf": str(gguf_path),
        "modelfile": str(modelfile),
    }
    carry["export_dir"] = str(out)
    if fmt == "ollama":
        progress("creating the model on the Ollama server", 0.6)
        model_name = str(spec.get("ollama_model") or f"{rec.name}:v{rec.version}")
        created = deploy_to_ollama(
            s.ollama_base_url,
            model_name,
            base=base_ref,
            adapter_gguf=gguf_path,
            timeout=s.ollama_timeout,
        )
        detail["ollama"] = asdict(created)
    return detail


_STEPS: dict[str, Callable[..., dict]] = {
    "merge": _merge_step,
    "validate": _validate_step,
    "deploy": _deploy_step,
    "export": _export_step,
    "register_adapter": integration.register_step,
    "merge_model": integration.merge_step,
    "validate_model": integration.validate_step,
    "deploy_model": integration.deploy_step,
}
