"""One-click LoRA training with the seed's paths: models, dataset upload, tasks."""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

from fastapi import Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import training as S
from loraflow.errors import InvalidInput
from loraflow.safe_json import loads as bounded_loads
from loraflow.services.train import datasets
from loraflow.services.train import jobs as training
from loraflow.training.params import ALIASES, PARAMS, FormField, TrainParams, canonical_names

router = json_router(prefix="/api/simple-lora", tags=["training"])


@router.get(
    "/models", response_model=S.BaseModelList, summary="Base models available for fine-tuning"
)
def models(rt: RuntimeDep) -> dict[str, Any]:
    found = datasets.available_models(rt)
    return {"models": found, "count": len(found)}


@router.post(
    "/upload-dataset",
    response_model=S.DatasetUpload,
    summary="Upload an Alpaca, ShareGPT, raw-text, preference or KTO dataset",
)
def upload_dataset(
    rt: RuntimeDep,
    file: UploadFile = File(...),
    dataset_type: str = Form(
        "alpaca",
        description="alpaca, sharegpt or raw (method sft); preference (chosen/rejected pairs, "
        "for dpo, orpo and kto) or kto (prompt, completion, label)",
    ),
) -> dict[str, Any]:
    return datasets.save_dataset_upload(rt, file.filename or "", file.file, dataset_type)


class PreviewBody(BaseModel):
    dataset_type: str = Field("alpaca", description="alpaca, sharegpt or raw.")
    base_model: str | None = Field(
        None, description="Whose tokenizer and chat template to apply; default BASE_MODEL_NAME."
    )
    max_len: int = Field(512, ge=1, le=32768, description="The job's max sequence length.")
    rows: int = Field(3, ge=0, le=20, description="How many rows to show.")


@router.post(
    "/datasets/{filename}/preview",
    response_model=S.DatasetPreview,
    response_model_by_alias=True,
    summary="An uploaded dataset as the model will see it: rows, trained tokens, lengths",
)
def preview_dataset(filename: str, body: PreviewBody, rt: RuntimeDep) -> dict[str, Any]:
    return datasets.preview_dataset(
        rt,
        filename,
        body.dataset_type,
        base_model=body.base_model,
        max_len=body.max_len,
        rows=body.rows,
    )


# Form fields of /train that are not training parameters.
_JOB_FIELDS = (
    "task_name",
    "base_model",
    "dataset_filename",
    "dataset_type",
    "val_filename",
    "training_params",
)


async def _form_params(request: Request) -> dict[str, Any]:
    """Every training parameter sent as a form field, declared below or not.

    The form is already parsed (and cached) by FastAPI for the declared fields; fields
    the route does not declare (Hugging Face or LLaMA-Factory names, any TrainParams field)
    are passed on too, so a misspelt one is refused instead of silently ignored.
    """
    form = await request.form()
    return {k: v for k, v in form.items() if k not in _JOB_FIELDS and isinstance(v, str)}


# The training parameters declared as typed, documented form fields of /train, in the form's
# order (rendered from PARAMS); any other one is taken as a form field too (_form_params).
FORM_PARAMS = (
    "method",
    "beta",
    "loss_type",
    "init_adapter",
    "epochs",
    "batch_size",
    "lr",
    "rank",
    "alpha",
    "max_len",
    "max_steps",
    "target_modules",
    "launcher",
    "num_processes",
    "device",
    "quantization",
)


def _declared_params(**fields: Any) -> dict[str, Any]:
    """The declared parameter fields by their form names, and training_params (a JSON text)."""
    return fields


def _form_field(name: str, annotation: Any, description: str | None) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=Form(None, description=description),
        annotation=annotation,
    )


_declared_params.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        *(
            _form_field(f.name or p.name, p.kind | None, f.description)
            for p in (PARAMS[name] for name in FORM_PARAMS)
            for f in [p.form or FormField()]
        ),
        _form_field("training_params", str | None, "JSON object of any other parameter"),
    ]
)


@router.post(
    "/train",
    response_model=S.QueuedTask,
    summary="Queue a LoRA fine-tuning task",
    description="Training parameters may be sent as form fields or in `training_params` (a "
    "JSON object), under loraflow's names ("
    + ", ".join(TrainParams.accepted_names()[: -len(ALIASES)])
    + ") or the Hugging Face / LLaMA-Factory aliases ("
    + ", ".join(f"`{a}`" for a in ALIASES)
    + "). Any other field is refused with a 422 that lists the accepted names.",
)
def train(
    rt: RuntimeDep,
    form_params: Annotated[dict[str, Any], Depends(_form_params)],
    declared: Annotated[dict[str, Any], Depends(_declared_params)],
    task_name: str = Form(...),
    base_model: str = Form(...),
    dataset_filename: str = Form(...),
    dataset_type: str = Form("alpaca"),
    val_filename: str | None = Form(
        None, description="an uploaded dataset to evaluate on, instead of a val_split share"
    ),
) -> dict[str, Any]:
    typed = dict(declared)
    training_params = typed.pop("training_params")
    extra: dict[str, Any] = {}
    if training_params:
        try:
            extra = bounded_loads(
                training_params, rt.settings.json_limits(), where="training_params"
            )
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"training_params is not valid JSON: {exc.msg}") from exc
        if not isinstance(extra, dict):
            raise InvalidInput("training_params must be a JSON object")
    # The declared fields arrive typed; the others as the strings the form carried.
    form = {k: v for k, v in form_params.items() if k not in typed}
    form.update({k: v for k, v in typed.items() if v is not None})
    params = {**canonical_names(extra), **canonical_names(form)}
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


@router.get("/tasks", response_model=S.TaskList, summary="All training tasks, newest first")
def tasks(rt: RuntimeDep) -> dict[str, Any]:
    found = training.list_tasks(rt)
    return {"tasks": found, "count": len(found)}


@router.get(
    "/tasks/{task_id}", response_model=S.TrainingTask, summary="One task's status and progress"
)
def task(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.get_task(rt, task_id)


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=S.TrainingTask,
    summary="Cancel a task (its checkpoints are kept)",
)
def cancel(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.cancel(rt, task_id)


@router.post(
    "/tasks/{task_id}/resume",
    response_model=S.TrainingTask,
    summary="Resume a cancelled or failed task",
)
def resume(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.resume(rt, task_id)


@router.get(
    "/tasks/{task_id}/metrics", response_model=S.TaskMetrics, summary="Loss curve of a task"
)
def metrics(task_id: int, rt: RuntimeDep) -> dict[str, Any]:
    return training.metrics(rt, task_id)
