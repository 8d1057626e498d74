"""One-click LoRA training with the seed's paths: models, dataset upload, tasks."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from loraflow.api.deps import RuntimeDep
from loraflow.errors import InvalidInput
from loraflow.services import datasets, training

router = APIRouter(prefix="/api/simple-lora", tags=["training"])


@router.get("/models", summary="Base models available for fine-tuning")
def models(rt: RuntimeDep) -> dict[str, Any]:
    found = datasets.available_models(rt)
    return {"models": found, "count": len(found)}


@router.post("/upload-dataset", summary="Upload an Alpaca, ShareGPT or raw-text dataset")
def upload_dataset(
    rt: RuntimeDep,
    file: UploadFile = File(...),
    dataset_type: str = Form("alpaca"),
) -> dict[str, Any]:
    return datasets.save_dataset_upload(rt, file.filename or "", file.file, dataset_type)


@router.post("/train", summary="Queue a LoRA fine-tuning task")
def train(
    rt: RuntimeDep,
    task_name: str = Form(...),
    base_model: str = Form(...),
    dataset_filename: str = Form(...),
    dataset_type: str = Form("alpaca"),
    val_filename: str | None = Form(
        None, description="an uploaded dataset to evaluate on, instead of a val_split share"
    ),
    epochs: float | None = Form(None),
    batch_size: int | None = Form(None),
    learning_rate: float | None = Form(None),
    lora_r: int | None = Form(None),
    lora_alpha: int | None = Form(None),
    max_length: int | None = Form(None),
    max_steps: int | None = Form(None),
    target_modules: str | None = Form(None),
    launcher: str | None = Form(None, description="none, accelerate or torchrun"),
    num_processes: int | None = Form(None, description="DDP processes (one per GPU)"),
    training_params: str | None = Form(None, description="JSON object of any other parameter"),
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if training_params:
        try:
            extra = json.loads(training_params)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"training_params is not valid JSON: {exc.msg}") from exc
        if not isinstance(extra, dict):
            raise InvalidInput("training_params must be a JSON object")
    fields = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": learning_rate,
        "rank": lora_r,
        "alpha": lora_alpha,
        "max_len": max_length,
        "max_steps": max_steps,
        "target_modules": target_modules,
        "launcher": launcher,
        "num_processes": num_processes,
    }
    params = {**extra, **{k: v for k, v in fields.items() if v is not None}}
    task = training.submit(
        rt, task_name, base_model, dataset_filename, dataset_type, params, val_dataset=val_filename
    )
    message = f"task {task['task_name']!r} queued; output will be {task['output_path']}"
    if task["training_params"].get("launcher", "none") != "none":
        message += f"; {task['launch']}"
    return {
        "task_id": task["task_id"],
        "task_name": task["task_name"],
        "status": task["status"],
        "message": message,
    }


@router.get("/tasks", summary="All training tasks, newest first")
def tasks(rt: RuntimeDep) -> dict[str, Any]:
    found = training.list_tasks(rt)
    return {"tasks": found, "count": len(found)}


@router.get("/tasks/{task_id}", summary="One task's status and progress")
def task(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.get_task(rt, task_id)


@router.post("/tasks/{task_id}/cancel", summary="Cancel a task (its checkpoints are kept)")
def cancel(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.cancel(rt, task_id)


@router.post("/tasks/{task_id}/resume", summary="Resume a cancelled or failed task")
def resume(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.resume(rt, task_id)


@router.get("/tasks/{task_id}/metrics", summary="Loss curve of a task")
def metrics(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.metrics(rt, task_id)
