"""Training commands: prepare, train (foreground with a progress bar), tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from loraflow.cli.common import DataDir, app, console, err, make_settings
from loraflow.errors import InvalidInput
from loraflow.training.params import canonical_names

tasks_app = typer.Typer(help="List, show, cancel and resume training tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


def _context(data_dir: Path | None) -> Any:
    from loraflow.db import make_engine
    from loraflow.services.train.jobs import TrainingContext

    settings = make_settings(data_dir=data_dir)
    return TrainingContext(settings, make_engine(settings.db_url))


@app.command()
def prepare(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders (default: DATA_DIR/raw).")
    ] = None,
    sample: Annotated[bool, typer.Option(help="Write example novels to DATA_DIR/raw.")] = False,
    chunk_size: Annotated[int, typer.Option(help="Characters per raw-text chunk.")] = 2048,
    val_split: Annotated[float, typer.Option(help="Share held out for validation.")] = 0.1,
    dataset_type: Annotated[
        str | None, typer.Option("--type", help="alpaca|sharegpt|raw (default: detect).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (DATA_DIR/processed).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Turn datasets or raw novels into train.jsonl / val.jsonl and print statistics."""
    from loraflow.services.train.datasets import prepare_dataset

    report, warning = prepare_dataset(
        make_settings(data_dir=data_dir),
        inputs,
        out,
        sample=sample,
        dataset_type=dataset_type,
        chunk_size=chunk_size,
        val_split=val_split,
    )
    for name, kind in report.files.items():
        console.print(f"read {name} ({kind})")
    console.print(f"train: {report.n_train} examples -> {report.train_path}")
    console.print(f"val:   {report.n_val} examples -> {report.val_path}")
    if report.tokens:
        t = report.tokens
        console.print(
            f"tokens: {t['total']} in {t['sequences']} sequences; mean {t.get('mean')}, "
            f"median {t.get('median')}, max {t.get('max')}; "
            f"{t.get('over_max_len', 0)} longer than 512"
        )
    if warning:
        err.print(f"[yellow]{warning}[/yellow]")


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="Dataset file (.json/.jsonl/.txt).")],
    dataset_type: Annotated[str, typer.Option("--type", help="alpaca|sharegpt|raw.")] = "alpaca",
    base_model: Annotated[
        str | None, typer.Option(help="Base model (default: BASE_MODEL_NAME).")
    ] = None,
    task_name: Annotated[
        str | None, typer.Option(help="Unique name (default: from --data).")
    ] = None,
    val_data: Annotated[Path | None, typer.Option(help="Validation file.")] = None,
    val_split: Annotated[
        float | None,
        typer.Option(help="Share of --data held out for eval loss without --val-data (0.1)."),
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", "--num-train-epochs", help="Epochs (3).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "--per-device-train-batch-size", help="Micro-batch size (4)."),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(
            "--grad-accum", "--gradient-accumulation-steps", help="Gradient accumulation (4)."
        ),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", "--learning-rate", help="Learning rate (2e-4).")
    ] = None,
    rank: Annotated[
        int | None, typer.Option("--rank", "--lora-rank", "--lora-r", help="LoRA rank (16).")
    ] = None,
    alpha: Annotated[
        int | None, typer.Option("--alpha", "--lora-alpha", help="LoRA alpha (32).")
    ] = None,
    dropout: Annotated[
        float | None, typer.Option("--dropout", "--lora-dropout", help="LoRA dropout (0.05).")
    ] = None,
    max_len: Annotated[
        int | None,
        typer.Option(
            "--max-len", "--cutoff-len", "--max-length", help="Max sequence tokens (512)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu | cuda | auto (default: TRAINING_DEVICE).")
    ] = None,
    quantization: Annotated[
        str | None, typer.Option(help="auto (4-bit on CUDA with bitsandbytes) | 4bit | none.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Any other training parameter as NAME=VALUE (repeatable), by loraflow's name "
            "or the Hugging Face / LLaMA-Factory one: -p seed=7 -p num_train_epochs=1. "
            "An unknown name is refused with the list of accepted ones.",
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N steps (0: all).")] = None,
    target_modules: Annotated[str | None, typer.Option(help="q,v | all-linear | names.")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping: evaluations without improvement (0: off).")
    ] = None,
    min_delta: Annotated[
        float | None, typer.Option(help="Early stopping: smallest eval-loss drop that counts.")
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(help="none | accelerate | torchrun: train in num-processes DDP processes."),
    ] = None,
    num_processes: Annotated[
        int | None, typer.Option(help="Processes (one per GPU; on CPU only for testing).")
    ] = None,
    accelerate_config: Annotated[
        Path | None,
        typer.Option(help="accelerate config file (FSDP, DeepSpeed; see examples/accelerate/)."),
    ] = None,
    detach: Annotated[bool, typer.Option(help="Queue it for the service and return.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Fine-tune a LoRA adapter; Ctrl-C leaves the job running in the background."""
    from loraflow.services.train import jobs as training

    params = {
        "epochs": epochs,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "max_len": max_len,
        "device": device,
        "quantization": quantization,
        "max_steps": max_steps,
        "target_modules": target_modules,
        "val_split": val_split,
        "early_stopping_patience": patience,
        "early_stopping_min_delta": min_delta,
        "launcher": launcher,
        "num_processes": num_processes,
    }
    ctx = _context(data_dir)
    name = task_name or f"{data.stem}-{_stamp()}"
    base = base_model or ctx.settings.base_model_name
    params = {k: v for k, v in params.items() if v is not None}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--param {item!r} is not NAME=VALUE")
        for field, given in canonical_names({key.strip(): value.strip()}).items():
            if field in params:
                raise InvalidInput(f"{field} is given twice: by its option and by -p {item!r}")
            params[field] = given
    task = training.submit(
        ctx,
        name,
        base,
        "",
        dataset_type,
        params,
        local_dataset=data,
        local_val=val_data,
        accelerate_config=accelerate_config,
    )
    tid = task["task_id"]
    console.print(f"task {tid} ({task['task_name']}) -> {task['output_path']}")
    if task["training_params"].get("launcher", "none") != "none":
        console.print(f"launch: {task['launch']}")
    if detach:
        console.print("queued; the service runs it. Follow it with `loraflow tasks show ID`.")
        return
    _follow(ctx, tid)


def _follow(ctx: Any, tid: int) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from loraflow.services.train import jobs as training

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
    try:
        with Progress(*columns, TimeRemainingColumn(), console=console) as bar:
            row = bar.add_task("training", total=100, info="")

            def on_poll(job: dict[str, Any]) -> None:
                loss = f"loss {job['loss']:.3f}" if job["loss"] is not None else ""
                info = f"step {job['step']}/{job['total_steps']} {loss}"
                bar.update(row, completed=job["progress"], info=info, description=job["status"])

            final = training.run_foreground(ctx, tid, on_poll)
    except KeyboardInterrupt:
        console.print(
            f"\ntask {tid} keeps running in the background; `loraflow tasks cancel {tid}` stops it"
        )
        raise typer.Exit(130) from None
    _print_outcome(final)


def _stamp() -> str:
    from datetime import datetime

    return datetime.now().strftime("%Y%m%d%H%M%S")


def _print_outcome(job: dict[str, Any]) -> None:
    style = {"completed": "green", "cancelled": "yellow"}.get(job["status"], "red")
    status, message = job["status"], job["message"] or ""
    # Messages of ended jobs often start with their status ("failed: out of memory ...").
    message = message.removeprefix(f"{status}:").strip()
    console.print(f"[{style}]{status}[/{style}]: {message}")
    if job["status"] != "completed":
        raise typer.Exit(1)


@tasks_app.command("list")
def tasks_list(data_dir: DataDir = None) -> None:
    """List training tasks, newest first."""
    from loraflow.services.train.jobs import list_tasks

    rows = list_tasks(_context(data_dir))
    table = Table()
    for col in ("id", "name", "status", "progress", "epoch", "loss", "message"):
        table.add_column(col)
    for t in rows:
        loss = f"{t['loss']:.3f}" if t["loss"] is not None else ""
        table.add_row(
            str(t["task_id"]),
            t["task_name"],
            t["status"],
            f"{t['progress']:.0f}%",
            str(t["current_epoch"]),
            loss,
            t["message"] or "",
        )
    console.print(table)


@tasks_app.command("show")
def tasks_show(task_id: int, data_dir: DataDir = None) -> None:
    """Show one task as JSON."""
    import json

    from loraflow.services.train.jobs import get_task

    console.print_json(json.dumps(get_task(_context(data_dir), task_id)))


@tasks_app.command("cancel")
def tasks_cancel(task_id: int, data_dir: DataDir = None) -> None:
    """Cancel a task; a running one stops within seconds and keeps its checkpoint."""
    from loraflow.services.train.jobs import cancel

    console.print(cancel(_context(data_dir), task_id)["message"])


@tasks_app.command("resume")
def tasks_resume(
    task_id: int,
    detach: Annotated[bool, typer.Option(help="Queue it for the service and return.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Continue a cancelled or failed task from its last checkpoint."""
    from loraflow.services.train.jobs import resume

    ctx = _context(data_dir)
    console.print(resume(ctx, task_id)["message"])
    if not detach:
        _follow(ctx, task_id)
