"""`loraflow adapters ...`: registry, merge, export and validate, on the data dir directly.

No server is needed for these; deploy, rollback, promote, workflow and status live in
`loraflow.cli.deploy`. The helpers here are shared with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loraflow.cli.common import AsJson, DataDir, app, console, make_settings, print_json
from loraflow.errors import InvalidInput
from loraflow.safe_json import loads as bounded_loads

adapters_app = typer.Typer(
    help="Adapters: list, scan, register, merge, export, validate, deploy, rollback, workflow.",
    no_args_is_help=True,
)
app.add_typer(adapters_app, name="adapters")

Url = Annotated[
    str | None,
    typer.Option("--url", help="The loraflow server (default: API_HOST:API_PORT)."),
]


def ctx_for(data_dir: Path | None) -> Any:
    from loraflow import db
    from loraflow.services.train.jobs import TrainingContext

    s = make_settings(data_dir=data_dir)
    return TrainingContext(settings=s, db=db.make_engine(s.db_url))


def float_list(raw: str | None, flag: str) -> list[float] | None:
    if raw is None or not raw.strip():
        return None
    try:
        return [float(x) for x in raw.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise typer.BadParameter(
            f"{raw!r} is not a comma-separated list of numbers", param_hint=flag
        ) from exc


def _run_here(ctx: Any, kind: str, spec: dict[str, Any], as_json: bool) -> None:
    """Create and run a workflow in this process with a progress bar; exit 1 when it fails."""
    from loraflow.services.manage import workflows

    wf = workflows.create(ctx, kind, spec)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(kind, total=1.0)

        def on_step(step: dict[str, Any]) -> None:
            desc = f"{step['step']}: {step.get('message') or step['status']}"
            bar.update(task, completed=float(step.get("progress") or 0.0), description=desc[:70])

        done = workflows.run(ctx, wf["id"], on_step)
    report_workflow(done, as_json)


def report_workflow(wf: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(wf)
    else:
        console.print(f"workflow {wf['id']} ({wf['kind']}): [bold]{wf['status']}[/bold]")
        for step in wf["steps"]:
            line = f"  {step['step']:<9} {step['status']}"
            detail = step.get("detail") or {}
            keys = ("adapter_ref", "output_dir", "overall_score", "grade", "target")
            for key in (*keys, "deployment_id", "deployed_model_path", "start_command"):
                if key in detail:
                    line += f"  {key}={detail[key]}"
            if isinstance(detail.get("adapter"), dict):
                a = detail["adapter"]
                line += f"  adapter={a['name']}@v{a['version']}"
            if step.get("error"):
                line += f"  [red]{step['error']}[/red]"
            console.print(line)
            if step["step"] == "merge" and detail.get("checks"):
                print_merge_checks(detail)
        for rec in (wf.get("steps") or [{}])[-1].get("detail", {}).get("recommendations", []) or []:
            console.print(f"  - {rec}")
    if wf["status"] != "completed":
        raise typer.Exit(1)


def print_merge_checks(detail: dict[str, Any]) -> None:
    """How exact a merge result is: its factoring, its reference check, its warnings."""
    checks = detail["checks"]
    factoring = checks.get("factoring") or {}
    if factoring:
        line = f"            {factoring['how']}: rank {factoring['rank']}"
        if "tolerance" in factoring:
            line += (
                f", worst tensor error {factoring['max_relative_error']:.2e} "
                f"(bound {factoring['tolerance']:g}, {factoring['worst_tensor']})"
            )
        console.print(line)
    reference = checks.get("reference")
    if isinstance(reference, dict) and "max_relative_error" in reference:
        console.print(
            f"            reference check: {reference['tensors']} tensors, worst relative "
            f"error {reference['max_relative_error']:.2e} against the dense result"
        )
    elif reference is None:
        console.print("            reference check: none (this model result is mergekit's own)")
    if detail.get("seed") is not None:
        console.print(f"            seed {detail['seed']}")
    for warning in detail.get("warnings") or []:
        console.print(f"            [yellow]warning: {warning}[/yellow]")


# --- registry --------------------------------------------------------------------------------
@adapters_app.command("list")
def list_cmd(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List registered adapters (run `scan` first to pick up new folders)."""
    from loraflow.services.registry import adapters as svc

    items = [r.to_dict() for r in svc.list_adapters(ctx_for(data_dir))]
    if as_json:
        print_json(items)
        return
    table = Table("name", "ver", "rank", "targets", "MB", "source", "status", "path")
    for a in items:
        table.add_row(
            a["name"],
            str(a["version"]),
            str(a["rank"]),
            ",".join(a["target_modules"]),
            f"{a['file_size_mb']:.1f}",
            a["source"],
            a["status"],
            a["path"],
        )
    console.print(table)


@adapters_app.command("scan")
def scan_cmd(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Register new adapter folders in LORA_MODEL_PATH and TRAINING_OUTPUT_DIR."""
    from loraflow.services.registry import adapters as svc

    result = svc.scan(ctx_for(data_dir)).to_dict()
    if as_json:
        print_json(result)
        return
    for a in result["added"]:
        console.print(f"added    {a['name']}@v{a['version']}  {a['path']}")
    for a in result["changed"]:
        console.print(
            f"[red]changed[/red]  {a['name']}@v{a['version']}  files differ from checksum"
        )
    for a in result["missing"]:
        console.print(f"[yellow]missing[/yellow]  {a['name']}@v{a['version']}  {a['path']}")
    for path, why in result["skipped"].items():
        console.print(f"[yellow]skipped[/yellow]  {path}: {why}")
    console.print(f"{len(result['added'])} added, {result['unchanged']} unchanged")


@adapters_app.command("register")
def register_cmd(
    path: Annotated[Path, typer.Argument(help="Adapter folder (PEFT layout).")],
    name: Annotated[str | None, typer.Option("--name", "--adapter-name")] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Repeat for several.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Register one adapter folder (checked against the base model)."""
    from loraflow.services.registry import adapters as svc

    rec = svc.register(ctx_for(data_dir), path, name=name, description=description, tags=tag)
    console.print(f"registered {rec.ref} (id {rec.id}, rank {rec.rank})")


@adapters_app.command("show")
def show_cmd(
    ref: str,
    data_dir: DataDir = None,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Re-read every byte and check the registered checksum."),
    ] = False,
) -> None:
    """One adapter's record, compatibility with the base model and latest validation."""
    from loraflow.services.registry import adapters as svc

    ctx = ctx_for(data_dir)
    rec = svc.verify_adapter(ctx, ref) if verify else svc.get_adapter(ctx, ref)
    out = {
        **rec.to_dict(),
        "compatibility": svc.compatibility(ctx, rec.id),
        "latest_validation": svc.latest_validation(ctx, rec),
        # `loraflow adapters benchmark`: latency and tokens/s against the base model.
        "benchmark": rec.metrics.get("benchmark"),
    }
    print_json(out)


# --- merge / export / validate (here) --------------------------------------------------------
@adapters_app.command("merge")
def merge_cmd(
    adapters: Annotated[list[str], typer.Argument(help="Registered adapters to merge.")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "--merge-strategy",
            help="linear, slerp, task_arithmetic, ties, dare_ties or dare_linear.",
        ),
    ] = "linear",
    weights: Annotated[str | None, typer.Option(help="Comma-separated, one per adapter.")] = None,
    density: Annotated[float | None, typer.Option(help="Share kept (ties, dare).")] = None,
    t: Annotated[float | None, typer.Option("--t", help="SLERP factor in [0, 1].")] = None,
    lam: Annotated[float | None, typer.Option("--lambda", help="Task-vector scale.")] = None,
    max_rank: Annotated[
        int | None,
        typer.Option(
            "--max-rank", help="ties/dare adapters: highest rank (MAX_LORA_RANK caps it too)."
        ),
    ] = None,
    max_error: Annotated[
        float | None,
        typer.Option(
            "--max-error",
            help="ties/dare adapters: relative Frobenius error allowed per tensor [0.001].",
        ),
    ] = None,
    into: Annotated[str, typer.Option(help="adapter (registered) or model (full).")] = "adapter",
    name: Annotated[str, typer.Option("--name", "--adapter-name")] = "merged",
    seed: Annotated[
        int | None,
        typer.Option(help="DARE's seed: same seed, same result (drawn and recorded if unset)."),
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Merge adapters into a new adapter (registered) or a full model.

    --into model: mergekit merges base + each adapter, exact for every method.

    --into adapter: linear, task_arithmetic and slerp stack the adapters' ranks (exact).

    --into adapter, ties/dare_ties/dare_linear: mergekit's steps on the dense deltas, then a
    truncated SVD at the smallest rank keeping each tensor within --max-error (relative
    Frobenius error, default 0.001), capped by --max-rank and MAX_LORA_RANK. The error per
    tensor is printed and recorded; a warning says when the cap keeps it above the bound.

    The same adapter given twice (or a copy of it) is refused.
    """
    spec = {
        "adapters": adapters,
        "method": method,
        "weights": float_list(weights, "--weights"),
        "density": density,
        "t": t,
        "lambda": lam,
        "max_rank": max_rank,
        "max_error": max_error,
        "into": into,
        "name": name,
        "seed": seed,
    }
    _run_here(ctx_for(data_dir), "merge", {k: v for k, v in spec.items() if v is not None}, as_json)


@adapters_app.command("export")
def export_cmd(
    ref: str,
    fmt: Annotated[
        str,
        typer.Option("--format", help="merged (full model), gguf (+ Modelfile) or ollama."),
    ] = "merged",
    quantization: Annotated[
        str | None, typer.Option("--quantization", help="8bit or 4bit (merged only).")
    ] = None,
    ollama_model: Annotated[
        str | None, typer.Option(help="Model name to create in Ollama.")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Export an adapter: merged safetensors model, llama.cpp GGUF + Modelfile, or to Ollama."""
    spec = {
        "adapter": ref,
        "format": fmt,
        "quantization": quantization,
        "ollama_model": ollama_model,
    }
    _run_here(
        ctx_for(data_dir), "export", {k: v for k, v in spec.items() if v is not None}, as_json
    )


@adapters_app.command("validate")
def validate_cmd(
    ref: str,
    mode: Annotated[
        str, typer.Option("--mode", "--validation-mode", help="quick, standard, comprehensive.")
    ] = "standard",
    questions: Annotated[
        Path | None,
        typer.Option(help='JSON list of {"question", "answer", "match"} for the domain score.'),
    ] = None,
    val_file: Annotated[
        str | None, typer.Option(help="Validation split (Alpaca/ShareGPT) in the uploads folder.")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Score an adapter (basic 40%, domain 30%, safety 20%, performance 10%) and store it."""
    spec: dict[str, Any] = {"adapter": ref, "mode": mode}
    if val_file:
        spec["val_file"] = val_file
    if questions is not None:
        try:
            spec["questions"] = bounded_loads(questions.read_bytes(), where=str(questions))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"--questions {questions}: {exc}") from exc
    _run_here(ctx_for(data_dir), "validate", spec, as_json)
