"""The integration workflow on a merged full model: register, merge, validate, deploy.

An adapter folder is registered on the fly, merged into its base (the given folder or the
configured base) as a standalone safetensors model, optionally quantized to 8/4 bits with
bitsandbytes, validated against its base, and deployed to a server that can load a whole
model: Ollama (a new model created from the folder's files) or a loraflow instance / vLLM
replica started on the folder (the record gives the command; loraflow does not start it).
Each part is a step of an `integrate` workflow, so its status survives the process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraflow import db
from loraflow.errors import Conflict, InvalidInput
from loraflow.services.registry import adapters as adapter_svc

# For one adapter merged into its own base at weight 1 these give the same weights.
MERGE_STRATEGIES = ("linear", "task_arithmetic")
SERVE_WITH = ("ollama", "loraflow", "vllm")
# A merged model is a new model: it replaces what a target served, or stands beside it
# until clients switch (blue-green). Traffic splits are made between adapters on one base.
MODEL_STRATEGIES = ("replace", "blue_green")
QUANTIZATION_BITS = {8: "8bit", 4: "4bit"}


def _now() -> datetime:
    return datetime.now(UTC)


def planned_steps(spec: dict[str, Any]) -> list[str]:
    steps = ["register_adapter"] if spec.get("adapter_path") else []
    steps += ["merge_model"] if spec.get("merge") is not None else []
    steps += ["validate_model"] if spec.get("validate") is not None else []
    steps += ["deploy_model"] if spec.get("deploy") is not None else []
    return steps


def check_spec(ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Refuse a bad integrate spec before anything runs."""
    from loraflow.adapters.deploy import check_strategy

    spec = dict(spec)
    if not planned_steps(spec):
        raise InvalidInput("an integration needs at least one of merge, validate, deploy")
    m = spec.get("merge")
    if m is not None:
        if not spec.get("adapter_path") and not spec.get("adapter"):
            raise InvalidInput("a merge needs --adapter-path (or a registered adapter)")
        method = str(m.get("strategy") or "linear")
        if method not in MERGE_STRATEGIES:
            raise InvalidInput(
                f"merge strategy {method!r} cannot merge one adapter into its base; allowed: "
                f"{', '.join(MERGE_STRATEGIES)} (both add the adapter's full delta)",
                hint="SLERP, TIES and DARE combine several adapters: loraflow adapters merge",
            )
        bits = m.get("quantization_bits")
        if bits is not None and int(bits) not in QUANTIZATION_BITS:
            raise InvalidInput(f"quantization bits {bits!r} must be 8 or 4")
    elif spec.get("validate") is not None and not spec.get("model_path"):
        raise InvalidInput("validating a model needs --output-path (the model folder)")
    v = spec.get("validate")
    if v is not None and v.get("mode", "standard") not in ("quick", "standard", "comprehensive"):
        raise InvalidInput(
            f"unknown validation mode {v.get('mode')!r}; allowed: quick, standard, comprehensive"
        )
    d = spec.get("deploy")
    if d is not None:
        if d.get("serve_with", "loraflow") not in SERVE_WITH:
            raise InvalidInput(
                f"a merged model is served by {', '.join(SERVE_WITH)}, not {d.get('serve_with')!r}"
            )
        strategy = check_strategy(str(d.get("strategy", "replace")))
        if strategy not in MODEL_STRATEGIES:
            raise InvalidInput(
                f"a merged model deploys with {' or '.join(MODEL_STRATEGIES)}, not {strategy}: "
                "canary and A/B split traffic between adapters on one base",
                hint="deploy the adapter itself: loraflow adapters deploy --strategy canary",
            )
        if not d.get("target"):
            raise InvalidInput("a deployment needs --target-env (the name clients call)")
    return spec


def _base_dir(ctx: Any, spec: dict[str, Any], model_dir: Path | None = None) -> Path:
    given = spec.get("base_model_path")
    if given:
        path = Path(str(given)).expanduser().resolve()
        if not path.exists():
            raise InvalidInput(f"--base-model-path {given} does not exist")
        return path
    if model_dir is not None:  # a merge made here records its base
        from loraflow.adapters.inspect import read_metadata

        recorded = read_metadata(model_dir).get("base_model")
        if recorded and Path(recorded).exists():
            return Path(recorded)
    return adapter_svc.base_model_dir(ctx)


def register_step(ctx: Any, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    """Register the adapter folder, or reuse its record when it is registered already."""
    folder = Path(str(spec["adapter_path"])).expanduser().resolve()
    adapter_svc.sync_trained(ctx)
    known = adapter_svc.registry(ctx).find_by_path(folder)
    if known is not None:
        carry["adapter"] = known.id
        return {"adapter": known.to_dict(), "registered": False}
    # Checked against the base it will be merged into, which may not be the configured one.
    rec = adapter_svc.registry(ctx).register(
        adapter_svc.inside_allowed(ctx, folder),
        name=spec.get("adapter_name"),
        description=spec.get("description") or "",
        tags=[t for t in [spec.get("adapter_type")] if t],
        source="registered",
        base_dir=_base_dir(ctx, spec),
    )
    carry["adapter"] = rec.id
    return {"adapter": rec.to_dict(), "registered": True}


def merge_step(ctx: Any, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    """Merge the adapter into the base model as a folder, one writer per output at a time."""
    from loraflow.adapters.export import export_merged_model
    from loraflow.locks import file_lock

    m = spec["merge"]
    rec = adapter_svc.registry(ctx).verify(str(carry.get("adapter") or spec["adapter"]))
    base = _base_dir(ctx, spec)
    out = m.get("output_path")
    stamp = _now().strftime("%Y%m%d_%H%M%S")
    output = (
        Path(str(out)).expanduser().resolve()
        if out
        else ctx.settings.data_path / "models" / "merged" / f"{rec.name}_{stamp}"
    )
    bits = m.get("quantization_bits")
    quantization = QUANTIZATION_BITS[int(bits or 8)] if m.get("quantization") else None

    def busy() -> None:
        raise Conflict(
            f"another merge is writing {output} right now",
            hint="wait for it to finish or choose another --output-path",
        )

    lock = output.parent / f".{output.name}.merge.lock"
    with file_lock(lock, on_wait=busy):
        result = export_merged_model(
            Path(rec.path),
            base,
            output,
            quantization=quantization,
            progress=lambda msg, done, total: progress(msg, done / total if total else 0.0),
        )
    carry["model_dir"] = str(output)
    return {
        "output_dir": str(output),
        "adapter_ref": rec.ref,
        "base_model_path": str(base),
        "merge_strategy": str(m.get("strategy") or "linear"),
        "checks": result.to_dict(),
    }


def validate_step(ctx: Any, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    """Score the model folder against its base; the quality gate decides on deploying."""
    from loraflow.adapters.validate import validate_model

    v = spec.get("validate") or {}
    model_dir = Path(str(carry.get("model_dir") or spec["model_path"])).expanduser().resolve()
    base = _base_dir(ctx, spec, model_dir)
    report = validate_model(
        model_dir, base, mode=v.get("mode", "standard"), device="cpu", progress=progress
    )
    decision = adapter_svc.gate_decision(ctx.settings, report)
    data = report.to_dict()
    carry["model_dir"] = str(model_dir)
    carry["gate"] = decision
    vital = ("loads", "generates_text", "finite_logits")
    basic = [c for c in report.dimensions["basic"].checks if c.name in vital]
    carry["basic_passed"] = len(basic) == len(vital) and all(c.passed for c in basic)
    return {
        "model_path": str(model_dir),
        "base_model_path": str(base),
        "overall_score": data["overall_score"],
        "grade": data["grade"],
        "gate": decision,
        "recommendations": data["recommendations"],
        "report": data,
    }


def deploy_step(ctx: Any, kind: str, spec: dict, carry: dict, progress: Callable) -> dict:
    """Deploy the model folder; the deployment record (id, path, endpoints, times)."""
    from loraflow.adapters.ollama_deploy import deploy_model_to_ollama

    d = spec["deploy"]
    model_dir = Path(str(carry.get("model_dir") or spec.get("model_path"))).resolve()
    gate = carry.get("gate")
    if gate is not None and not gate["passed"] and not d.get("force"):
        raise InvalidInput(
            f"the model at {model_dir} does not pass the quality gate: "
            + "; ".join(gate["reasons"]),
            hint="improve the adapter, or deploy with --force",
        )
    s = ctx.settings
    target, serve_with = str(d["target"]), str(d.get("serve_with", "loraflow"))
    started, t0 = _now(), time.monotonic()
    record: dict[str, Any] = {
        "deployment_id": f"deploy_{uuid.uuid4().hex[:12]}",
        "target_env": target,
        "serve_with": serve_with,
        "deployment_strategy": str(d.get("strategy", "replace")).replace("-", "_"),
        "deployed_model_path": str(model_dir),
        "start_time": started.isoformat(),
    }
    progress(f"deploying {model_dir.name} with {serve_with}", 0.2)
    if serve_with == "ollama":
        created = deploy_model_to_ollama(
            s.ollama_base_url,
            str(d.get("ollama_model") or target),
            model_dir,
            timeout=s.ollama_timeout,
            quantize=d.get("ollama_quantize"),
        )
        base = s.ollama_base_url.rstrip("/")
        record["ollama"] = asdict(created)
        record["service_endpoints"] = [f"{base}/api/chat", f"{base}/api/generate"]
        record["health_check_results"] = {
            "healthy": created.status == "success",
            "checks": {"model_created": {"status": created.status}},
        }
    else:
        port = int(d.get("port") or 8000)
        base = f"http://{d.get('host') or '127.0.0.1'}:{port}"
        if serve_with == "loraflow":
            command = (
                f"BASE_MODEL_NAME={model_dir} API_PORT={port} "
                "LORAFLOW_DATA_DIR=<a data dir of its own> loraflow serve"
            )
        else:
            command = f"vllm serve {model_dir} --served-model-name {target} --port {port}"
        record["start_command"] = command
        record["service_endpoints"] = [f"{base}/v1/chat/completions", f"{base}/health"]
        basic = carry.get("basic_passed")
        record["health_check_results"] = {
            "healthy": bool(basic) if basic is not None else None,
            "checks": {
                "model_loading": {
                    "status": "not checked (validate it first)"
                    if basic is None
                    else ("healthy" if basic else "unhealthy"),
                    "source": "the validation's basic checks (loads, generates, finite logits)",
                }
            },
            "note": "start the server with start_command; loraflow does not start it",
        }
    finished = _now()
    record["success"] = True
    record["completion_time"] = finished.isoformat()
    record["deployment_duration_seconds"] = round(time.monotonic() - t0, 3)
    with ctx.db.begin() as conn:
        conn.execute(
            db.deployment_events.insert().values(
                target=target,
                action="deploy_model",
                status="ok",
                detail=record,
                created_at=finished,
            )
        )
    carry["deployment"] = record
    return record
