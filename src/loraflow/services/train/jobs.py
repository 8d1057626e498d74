"""Fine-tuning jobs: submit, list, cancel, resume, metrics, and the queue runner."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from loraflow.config import Settings
from loraflow.datasets.formats import check_type, load_examples
from loraflow.datasets.prepare import split_train_val
from loraflow.errors import InvalidInput, LoraflowError, NotFound
from loraflow.models.resolve import resolve_base_model
from loraflow.services.runtime import Runtime
from loraflow.services.train.datasets import available_models, dataset_path
from loraflow.training import jobs
from loraflow.training.launcher import check_accelerate_config, check_launch
from loraflow.training.params import METHOD_DATASETS, TrainParams
from loraflow.training.runner import spawn_worker, supervise


class Context(Protocol):
    """What the training use cases need: a Runtime, or the CLI's light TrainingContext."""

    settings: Settings
    db: Engine


@dataclass
class TrainingContext:
    """Settings and database only: enough for the CLI to submit and follow jobs."""

    settings: Settings
    db: Engine


_TASK_NAME = re.compile(r"^[\w][\w.-]{0,63}$")


def submit(
    rt: Context,
    task_name: str,
    base_model: str,
    dataset: str,
    dataset_type: str,
    params: dict[str, Any] | None = None,
    *,
    local_dataset: Path | None = None,
    local_val: Path | None = None,
    val_dataset: str | None = None,
    accelerate_config: Path | None = None,
) -> dict[str, Any]:
    """Queue a job; an API dataset is an uploaded name, the CLI may pass local paths.

    `val_dataset` names an uploaded validation file (the API's), `local_val` a local one.
    """
    s = rt.settings
    if val_dataset and local_val is None:
        local_val = dataset_path(rt, val_dataset)
    name = (task_name or "").strip()
    if not _TASK_NAME.match(name):
        raise InvalidInput(
            f"task_name {task_name!r} must be 1-64 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit"
        )
    kind = check_type(dataset_type)
    path = local_dataset.resolve() if local_dataset else dataset_path(rt, dataset)
    if not path.is_file():
        raise NotFound(f"dataset file {str(path)!r} does not exist")
    defaults = {"device": s.training_device_used, "precision": s.training_precision}
    train_params = TrainParams.from_dict({**defaults, **(params or {})})
    # A launcher that is missing or more processes than GPUs: refused now, not as a failed job.
    if s.training_executor == "ray":
        # The cluster, not this host, runs the processes: Ray Train's TorchTrainer starts
        # num_processes workers (DDP) wherever the cluster has the resources.
        if accelerate_config is not None:
            raise InvalidInput(
                "an accelerate config file is not used with TRAINING_EXECUTOR=ray",
                hint="leave it out: the job's num_processes become Ray Train workers",
            )
        n = train_params.num_processes if train_params.launcher != "none" else 1
        launch = "one process on a Ray node" if n == 1 else f"{n} Ray Train workers (DDP)"
    else:
        launch = check_launch(train_params)
    if accelerate_config is not None:
        accelerate_config = accelerate_config.resolve()
        check_accelerate_config(accelerate_config, train_params)
    base_path = _base_model_path(rt, base_model)
    method_types = METHOD_DATASETS[train_params.method]
    if kind not in method_types:
        raise InvalidInput(
            f"method={train_params.method!r} trains on {' or '.join(method_types)} datasets, "
            f"not dataset_type {kind!r}",
            hint="preference methods (dpo, orpo, kto) need dataset_type 'preference' or 'kto'; "
            "sft needs alpaca, sharegpt or raw",
        )
    init_path = _init_adapter_path(rt, train_params.init_adapter, base_path)
    # Parse now, so a bad file is a clear error at submit time rather than a failed job.
    examples = load_examples(path, kind, train_params.chunk_size)
    if local_val is not None:
        load_examples(local_val, kind, train_params.chunk_size)
    else:
        held_out = split_train_val(examples, train_params.val_split, train_params.seed)[1]
        _check_early_stopping(train_params, len(held_out))
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    output = s.training_output_path / f"{name}_{stamp}"
    job = jobs.create_job(
        rt.db,
        task_name=name,
        base_model=base_model,
        dataset_file=path.name if local_dataset is None else str(path),
        dataset_type=kind,
        output_path=str(output),
        training_params={
            **train_params.to_dict(),
            "base_model_path": str(base_path),
            "dataset_path": str(path),
            "val_path": str(local_val.resolve()) if local_val else None,
            "accelerate_config": str(accelerate_config) if accelerate_config else None,
            "init_adapter_path": str(init_path) if init_path else None,
        },
    )
    return {**view(job), "launch": launch}


def _init_adapter_path(rt: Context, ref: str, base_path: Path) -> Path | None:
    """The folder of the registered adapter a job continues; it must be on the job's base."""
    if not ref.strip():
        return None
    from loraflow.services.registry.adapters import get_adapter

    rec = get_adapter(rt, ref.strip())
    if rec.type != "lora":
        raise InvalidInput(
            f"init_adapter {ref!r} is a {rec.type} adapter; only LoRA can be continued"
        )
    try:
        adapter_base = resolve_base_model(rec.base_model, rt.settings.cache_path).path
    except LoraflowError:
        adapter_base = None
    if adapter_base is None or adapter_base.resolve() != base_path.resolve():
        raise InvalidInput(
            f"init_adapter {ref!r} was trained on {rec.base_model!r}, not on this job's base model",
            hint="choose the adapter's base model for the job",
        )
    return Path(rec.path)


def _check_early_stopping(p: TrainParams, n_val: int) -> None:
    """Early stopping watches eval loss: without a validation set it could never act."""
    if p.early_stopping_patience <= 0 or n_val:
        return
    why = (
        "val_split=0 holds out nothing"
        if p.val_split == 0
        else f"val_split={p.val_split:g} holds out no example of so small a dataset"
    )
    raise InvalidInput(
        f"early_stopping_patience={p.early_stopping_patience} needs a validation set, and this "
        f"job has none: no validation file was given and {why}",
        hint="give a validation file (loraflow train --val-data FILE, or the API's "
        "val_filename) or hold out part of the "
        "data with a val_split above 0 (--val-split 0.1, or val_split in training_params)",
    )


def _base_model_path(rt: Context, base_model: str) -> Path:
    try:
        resolved = resolve_base_model(base_model, rt.settings.cache_path)
    except LoraflowError as exc:
        names = ", ".join(m["name"] for m in available_models(rt)) or "(none)"
        raise NotFound(
            f"base model {base_model!r} is not available; available: {names}",
            hint=exc.message,
        ) from exc
    if resolved.kind == "gguf":
        raise InvalidInput(
            f"base model {base_model!r} is a .gguf file, which cannot be fine-tuned",
            hint="use a safetensors model folder or bundled:smollm2",
        )
    return resolved.path


def view(job: dict[str, Any]) -> dict[str, Any]:
    """The seed's task shape (task_id, task_name, status, ...) plus loraflow's fields."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "task_id": job["id"],
        "task_name": job["task_name"],
        "status": job["status"],
        "progress": round(job["progress"] or 0.0, 1),
        "current_epoch": job["current_epoch"],
        "message": job["message"],
        "created_at": iso(job["created_at"]),
        "completed_at": iso(job["completed_at"]),
        "started_at": iso(job["started_at"]),
        "base_model": job["base_model"],
        "dataset_file": job["dataset_file"],
        "dataset_type": job["dataset_type"],
        "output_path": job["output_path"],
        "step": job["step"],
        "total_steps": job["total_steps"],
        "loss": job["loss"],
        "eval_loss": job["eval_loss"],
        "eta_seconds": job["eta_seconds"],
        "error": job["error"],
        "resumable": bool(job["resumable"]),
        "executor": job.get("executor"),
        "node": job.get("node"),
        "resources": job.get("resources"),
        "ray_id": job.get("ray_id"),
        "heartbeat_at": iso(job.get("heartbeat_at")),
        "val_file": _file_name(job["training_params"].get("val_path")),
        "training_params": {
            k: v
            for k, v in job["training_params"].items()
            if k
            not in (
                "base_model_path",
                "dataset_path",
                "val_path",
                "accelerate_config",
                "init_adapter_path",
            )
        },
    }


def placement(task: dict[str, Any]) -> str:
    """Where a task runs or ran, in words: executor, node, resources asked for, Ray actor."""
    if not task.get("executor"):
        return ""
    parts = [task["executor"]]
    if task.get("node"):
        parts.append(f"node {task['node']}")
    if task.get("resources"):
        parts.append(", ".join(f"{k}={v:g}" for k, v in task["resources"].items() if v))
    if task.get("ray_id"):
        parts.append(f"actor {task['ray_id']}")
    return "; ".join(parts)


def _file_name(path: str | None) -> str | None:
    # Only the name: a job view does not show where files live on the server.
    return Path(path).name if path else None


def list_tasks(rt: Context) -> list[dict[str, Any]]:
    return [view(j) for j in jobs.list_jobs(rt.db)]


def get_task(rt: Context, task_id: int) -> dict[str, Any]:
    return view(jobs.get_job(rt.db, task_id))


def cancel(rt: Context, task_id: int) -> dict[str, Any]:
    """Cancel a queued job at once, or ask a running one to stop (it keeps its checkpoint)."""
    job = jobs.get_job(rt.db, task_id)
    if job["status"] == "pending":
        jobs.update_job(
            rt.db,
            task_id,
            where_status=("pending",),
            status="cancelled",
            message="cancelled before it started",
            completed_at=jobs.now(),
            cancel_requested=True,
        )
    elif job["status"] == "running":
        jobs.update_job(rt.db, task_id, cancel_requested=True, message="cancelling...")
    else:
        raise InvalidInput(
            f"task {task_id} is {job['status']}; only pending or running tasks can be cancelled"
        )
    return get_task(rt, task_id)


def resume(rt: Context, task_id: int) -> dict[str, Any]:
    """Queue a cancelled or failed job again; it continues from its last checkpoint."""
    job = jobs.get_job(rt.db, task_id)
    if job["status"] not in ("cancelled", "failed"):
        raise InvalidInput(
            f"task {task_id} is {job['status']}; only cancelled or failed tasks can be resumed"
        )
    jobs.update_job(
        rt.db,
        task_id,
        where_status=("cancelled", "failed"),
        status="pending",
        cancel_requested=False,
        error=None,
        completed_at=None,
        message="queued to resume from the last checkpoint",
    )
    return get_task(rt, task_id)


def metrics(rt: Context, task_id: int) -> dict[str, Any]:
    """The loss curve so far: one entry per logged step, eval loss per epoch."""
    job = jobs.get_job(rt.db, task_id)
    path = Path(job["output_path"]) / "metrics.json"
    history: list[dict[str, Any]] = []
    accuracy = None
    if path.is_file():
        written = json.loads(path.read_text("utf-8"))
        history = written.get("history", [])
        accuracy = written.get("preference_accuracy")
    return {
        "task_id": task_id,
        "status": job["status"],
        "history": history,
        "loss": [h for h in history if "loss" in h],
        "eval_loss": [h for h in history if "eval_loss" in h],
        "preference_accuracy": accuracy,
    }


def start_runner(rt: Runtime) -> None:
    """Start this service's job queue (marking jobs a previous run left running resumable)."""
    from loraflow.training.runner import JobRunner

    if rt.training_runner is None:
        s = rt.settings
        executor = None
        if s.training_executor == "ray":
            from loraflow.training.ray_executor import RayExecutor

            executor = RayExecutor(
                rt.db,
                s.db_url,
                address=s.ray_address,
                num_cpus=s.ray_num_cpus,
                num_gpus=s.ray_num_gpus,
                resources=s.ray_resources,
                max_jobs=s.ray_max_jobs,
                lease_s=s.training_lease_seconds,
            )
        rt.training_runner = JobRunner(
            rt.db,
            s.db_url,
            s.data_path / ".training.lock",
            on_finished=lambda job: register_output(rt, job),
            executor=executor,
            lease_s=s.training_lease_seconds,
        )
        rt.training_runner.start()


def register_output(rt: Context, job: dict[str, Any]) -> None:
    """Put a completed job's adapter in the registry, so it can be served by name at once."""
    if job.get("status") == "completed":
        from loraflow.services.registry.adapters import sync_trained

        sync_trained(rt)


def stop_runner(rt: Runtime) -> None:
    """Stop the queue; a running job checkpoints and becomes resumable."""
    if rt.training_runner is not None:
        rt.training_runner.stop()
        rt.training_runner = None


def run_foreground(
    rt: Context, task_id: int, on_poll: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Run a queued job in a worker started here, or follow it if a service took it first."""
    s = rt.settings
    claimed = jobs.update_job(
        rt.db,
        task_id,
        where_status=("pending",),
        status="running",
        started_at=jobs.now(),
        owner=jobs.owner_id(),
        heartbeat_at=jobs.now(),
        executor="local",
        node=jobs.HOST,
        resources=None,
        ray_id=None,
    )
    if claimed:
        job = jobs.get_job(rt.db, task_id)
        lease_s = s.training_lease_seconds
        proc = spawn_worker(
            s.db_url, job, s.data_path / ".training.lock", follow_parent=False, lease_s=lease_s
        )
        done = supervise(rt.db, task_id, proc, on_poll=lambda j: on_poll(view(j)), lease_s=lease_s)
        register_output(rt, done)
        return view(done)
    while True:
        job = view(jobs.get_job(rt.db, task_id))
        on_poll(job)
        if job["status"] in jobs.FINISHED:
            return job
        time.sleep(1.0)
