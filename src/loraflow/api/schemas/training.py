"""Training: base models, dataset uploads, tasks and their loss curves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BaseModelFile(BaseModel):
    name: str
    kind: str = Field(description="bundled, hf_cache or hf_dir.")
    path: str
    size_mb: float


class BaseModelList(BaseModel):
    models: list[BaseModelFile]
    count: int


class DatasetUpload(BaseModel):
    filename: str = Field(description="The stored name; pass it as dataset_filename to /train.")
    path: str
    size_mb: float
    message: str
    original_filename: str
    dataset_type: str
    examples: int


class PreviewSegment(BaseModel):
    text: str
    trained: bool = Field(description="Whether the loss is computed on these tokens.")


class PreviewRow(BaseModel):
    tokens: int = Field(description="Length of the whole sequence in tokens.")
    trained_tokens: int = Field(description="Tokens trained on, after the cut at max_len.")
    cut: bool = Field(description="Longer than max_len: training sees its first max_len tokens.")
    segments: list[PreviewSegment]


class HistogramBin(BaseModel):
    from_: int = Field(alias="from", serialization_alias="from")
    to: int | None = Field(description="null for the bin of sequences over max_len.")
    count: int


class DatasetPreview(BaseModel):
    dataset_type: str
    base_model: str = Field(description="Whose tokenizer and chat template were applied.")
    max_len: int
    examples: int
    sequences: int = Field(description="Training sequences (long raw text gives several).")
    rows: list[PreviewRow]
    tokens: dict[str, int | float] = Field(
        description="sequences, total, mean, median, max and over_max_len."
    )
    histogram: list[HistogramBin]


class QueuedTask(BaseModel):
    task_id: int
    task_name: str
    status: str
    message: str


class TrainingTask(BaseModel):
    task_id: int
    task_name: str
    status: str = Field(description="pending, running, completed, failed or cancelled.")
    progress: float = Field(description="Percent done.")
    current_epoch: int
    message: str | None
    created_at: str | None
    completed_at: str | None
    started_at: str | None
    base_model: str
    dataset_file: str
    dataset_type: str
    output_path: str
    step: int
    total_steps: int
    loss: float | None
    eval_loss: float | None
    eta_seconds: float | None
    error: str | None
    resumable: bool
    executor: str | None = Field(
        description="Where the job runs or ran: local or ray (TRAINING_EXECUTOR)."
    )
    node: str | None = Field(
        description="The host (local) or Ray node (ip/node id) that trains the job."
    )
    resources: dict[str, float] | None = Field(
        description="What a Ray job asked of the cluster (CPU, GPU, custom resources)."
    )
    ray_id: str | None = Field(description="The Ray actor that trains the job.")
    heartbeat_at: str | None = Field(
        description="The last renewal of the running job's lease by its owner."
    )
    val_file: str | None = Field(description="The validation dataset's file name, if any.")
    training_params: dict[str, Any] = Field(description="The task's resolved parameters.")


class TaskList(BaseModel):
    tasks: list[TrainingTask]
    count: int


class TaskMetrics(BaseModel):
    task_id: int
    status: str
    history: list[dict[str, Any]] = Field(
        description="The trainer's log lines (step, epoch, loss, learning_rate, ...)."
    )
    loss: list[dict[str, Any]] = Field(description="The lines with a training loss.")
    eval_loss: list[dict[str, Any]] = Field(description="The lines with an evaluation loss.")
    preference_accuracy: dict[str, Any] | None = Field(
        description="Preference jobs (dpo, orpo, kto): the share of held-out pairs whose "
        "chosen answer has the higher log-probability, 'before' and 'after' training, and "
        "'held_out_pairs'. Their history lines also hold rewards_chosen, rewards_rejected, "
        "margin and accuracy per step.",
    )
