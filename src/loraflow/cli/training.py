"""Training commands: prepare, train (foreground with a progress bar), tasks."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from loraflow.cli.common import DataDir, app, console, err, make_settings
from loraflow.errors import InvalidInput
from loraflow.training.params import PARAMS, Param, canonical_names

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
        str | None,
        typer.Option("--type", help="alpaca|sharegpt|raw|preference|kto (default: detect)."),
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
    dataset_type: Annotated[
        str,
        typer.Option(
            "--type", help="alpaca|sharegpt|raw; preference|kto for --method dpo/orpo/kto."
        ),
    ] = "alpaca",
    base_model: Annotated[
        str | None, typer.Option(help="Base model (default: BASE_MODEL_NAME).")
    ] = None,
    task_name: Annotated[
        str | None, typer.Option(help="Unique name (default: from --data).")
    ] = None,
    val_data: Annotated[Path | None, typer.Option(help="Validation file.")] = None,
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
    accelerate_config: Annotated[
        Path | None,
        typer.Option(help="accelerate config file (FSDP, DeepSpeed; see examples/accelerate/)."),
    ] = None,
    detach: Annotated[bool, typer.Option(help="Queue it for the service and return.")] = False,
    data_dir: DataDir = None,
    **options: Any,
) -> None:
    """Fine-tune a LoRA adapter; Ctrl-C leaves the job running in the background."""
    from loraflow.services.train import jobs as training

    params = {k: v for k, v in options.items() if v is not None}
    ctx = _context(data_dir)
    name = task_name or f"{data.stem}-{_stamp()}"
    base = base_model or ctx.settings.base_model_name
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


def _option(p: Param) -> inspect.Parameter:
    assert p.cli is not None, f"{p.name} has no CLI option"
    return inspect.Parameter(
        p.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[p.kind | None, typer.Option(*p.cli.flags, help=p.cli.help)],
    )


# The training parameters as options of `train` (rendered from PARAMS), in the order --help
# lists them: the common ones before --param, the rest after it.
_BEFORE_PARAM = (
    "method",
    "beta",
    "loss_type",
    "init_adapter",
    "val_split",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "rank",
    "alpha",
    "dropout",
    "max_len",
    "device",
    "quantization",
)
_AFTER_PARAM = (
    "max_steps",
    "target_modules",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "launcher",
    "num_processes",
)


def _declare_options() -> None:
    """Typer reads `train`'s options from its signature when the app runs: give it them all."""
    groups = {
        "param": [_option(PARAMS[n]) for n in _BEFORE_PARAM],
        "accelerate_config": [_option(PARAMS[n]) for n in _AFTER_PARAM],
    }
    signature = inspect.signature(train, eval_str=True)
    declared: list[inspect.Parameter] = []
    for given in signature.parameters.values():
        if given.kind is not inspect.Parameter.VAR_KEYWORD:
            declared.extend(groups.get(given.name, []))
            declared.append(given.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    train.__signature__ = signature.replace(parameters=declared)  # type: ignore[attr-defined]


_declare_options()


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
