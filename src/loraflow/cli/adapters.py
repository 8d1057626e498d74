"""`loraflow adapters ...`: registry, merge, export, validate here; deploy through the server.

Registry, merge, export and validation work on the data dir directly (no server needed).
Deployments live in the running service, so deploy, rollback, promote and workflows that
deploy are sent to it (API_HOST:API_PORT, or --url).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loraflow.cli.common import DataDir, app, console, fail, make_settings
from loraflow.errors import EngineUnavailable, InvalidInput, LoraflowError

adapters_app = typer.Typer(
    help="Adapters: list, scan, register, merge, export, validate, deploy, rollback, workflow.",
    no_args_is_help=True,
)
app.add_typer(adapters_app, name="adapters")

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Url = Annotated[
    str | None,
    typer.Option("--url", help="The loraflow server (default: API_HOST:API_PORT)."),
]


def _ctx(data_dir: Path | None) -> Any:
    from loraflow import db
    from loraflow.services.training import TrainingContext

    s = make_settings(data_dir=data_dir)
    return TrainingContext(settings=s, db=db.make_engine(s.db_url))


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value, ensure_ascii=False, default=str))


def _floats(raw: str | None, flag: str) -> list[float] | None:
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
    from loraflow.services import workflows

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
    _report(done, as_json)


def _report(wf: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(wf)
    else:
        console.print(f"workflow {wf['id']} ({wf['kind']}): [bold]{wf['status']}[/bold]")
        for step in wf["steps"]:
            line = f"  {step['step']:<9} {step['status']}"
            detail = step.get("detail") or {}
            for key in ("adapter_ref", "output_dir", "overall_score", "grade", "target"):
                if key in detail:
                    line += f"  {key}={detail[key]}"
            if isinstance(detail.get("adapter"), dict):
                a = detail["adapter"]
                line += f"  adapter={a['name']}@v{a['version']}"
            if step.get("error"):
                line += f"  [red]{step['error']}[/red]"
            console.print(line)
        for rec in (wf.get("steps") or [{}])[-1].get("detail", {}).get("recommendations", []) or []:
            console.print(f"  - {rec}")
    if wf["status"] != "completed":
        raise typer.Exit(1)


def _server(url: str | None, data_dir: Path | None) -> tuple[str, dict[str, str]]:
    from loraflow.services.status import server_headers, server_url

    s = make_settings(data_dir=data_dir)
    return (url or server_url(s)).rstrip("/"), server_headers(s)


def _call(method: str, url: str | None, data_dir: Path | None, path: str, body: Any = None) -> Any:
    base, headers = _server(url, data_dir)
    try:
        r = httpx.request(method, base + path, json=body, headers=headers, timeout=3600)
    except httpx.HTTPError as exc:
        raise EngineUnavailable(
            f"the loraflow server at {base} does not answer ({exc})",
            hint="start it with `loraflow serve`, or pass --url",
        ) from exc
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise InvalidInput(f"the server refused: {detail} (HTTP {r.status_code})")
    return r.json()


# --- registry --------------------------------------------------------------------------------
@adapters_app.command("list")
def list_cmd(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List registered adapters (run `scan` first to pick up new folders)."""
    from loraflow.services import adapters as svc

    try:
        items = [r.to_dict() for r in svc.list_adapters(_ctx(data_dir))]
    except LoraflowError as exc:
        fail(exc)
        return
    if as_json:
        _print_json(items)
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
    from loraflow.services import adapters as svc

    try:
        result = svc.scan(_ctx(data_dir)).to_dict()
    except LoraflowError as exc:
        fail(exc)
        return
    if as_json:
        _print_json(result)
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
    from loraflow.services import adapters as svc

    try:
        rec = svc.register(_ctx(data_dir), path, name=name, description=description, tags=tag)
    except LoraflowError as exc:
        fail(exc)
        return
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
    from loraflow.services import adapters as svc

    ctx = _ctx(data_dir)
    try:
        rec = svc.verify_adapter(ctx, ref) if verify else svc.get_adapter(ctx, ref)
        out = {
            **rec.to_dict(),
            "compatibility": svc.compatibility(ctx, rec.id),
            "latest_validation": svc.latest_validation(ctx, rec),
        }
    except LoraflowError as exc:
        fail(exc)
        return
    _print_json(out)


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
    into: Annotated[str, typer.Option(help="adapter (registered) or model (full).")] = "adapter",
    name: Annotated[str, typer.Option("--name", "--adapter-name")] = "merged",
    seed: Annotated[int, typer.Option(help="DARE's random seed.")] = 0,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Merge adapters into a new adapter (registered) or a full model."""
    spec = {
        "adapters": adapters,
        "method": method,
        "weights": _floats(weights, "--weights"),
        "density": density,
        "t": t,
        "lambda": lam,
        "into": into,
        "name": name,
        "seed": seed,
    }
    try:
        _run_here(
            _ctx(data_dir), "merge", {k: v for k, v in spec.items() if v is not None}, as_json
        )
    except LoraflowError as exc:
        fail(exc)


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
    try:
        _run_here(
            _ctx(data_dir), "export", {k: v for k, v in spec.items() if v is not None}, as_json
        )
    except LoraflowError as exc:
        fail(exc)


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
    try:
        if questions is not None:
            try:
                spec["questions"] = json.loads(questions.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise InvalidInput(f"--questions {questions}: {exc}") from exc
        _run_here(_ctx(data_dir), "validate", spec, as_json)
    except LoraflowError as exc:
        fail(exc)


# --- through the server ----------------------------------------------------------------------
@adapters_app.command("deploy")
def deploy_cmd(
    ref: str,
    target: Annotated[
        str, typer.Option("--target", "--target-env", help="Model name clients will call.")
    ],
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy", "--deployment-strategy", help="replace, blue_green, canary or ab."
        ),
    ] = "replace",
    percent: Annotated[float | None, typer.Option(help="Canary's first share (%).")] = None,
    schedule: Annotated[str | None, typer.Option(help="Canary shares, e.g. 5,25,50.")] = None,
    step_requests: Annotated[int | None, typer.Option(help="Requests per canary step.")] = None,
    split: Annotated[str | None, typer.Option(help="A/B shares, e.g. 70,30.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Deploy despite the gate.")] = False,
    url: Url = None,
    data_dir: DataDir = None,
) -> None:
    """Deploy a registered adapter behind a target name on the running server."""
    body = {
        "adapter": ref,
        "target": target,
        "strategy": strategy,
        "percent": percent,
        "schedule": _floats(schedule, "--schedule"),
        "step_requests": step_requests,
        "split": _floats(split, "--split"),
        "force": force,
    }
    try:
        out = _call(
            "POST",
            url,
            data_dir,
            "/api/adapters/deploy",
            {k: v for k, v in body.items() if v is not None},
        )
    except LoraflowError as exc:
        fail(exc)
        return
    for step in out.get("steps", []):
        console.print(f"  {step['step']:<17} {'ok' if step.get('ok', True) else 'failed'}")
    shares = ", ".join(
        f"{v['name']}={v['adapter']} {v['weight']:g}%" for v in out["state"]["variants"]
    )
    console.print(f"deployed {target} (version {out['version']}): {shares}")


@adapters_app.command("rollback")
def rollback_cmd(target: str, url: Url = None, data_dir: DataDir = None) -> None:
    """Restore what the last deploy of a target replaced."""
    try:
        out = _call("POST", url, data_dir, f"/api/adapters/deployments/{target}/rollback")
    except LoraflowError as exc:
        fail(exc)
        return
    shares = ", ".join(f"{v['adapter']} {v['weight']:g}%" for v in out["state"]["variants"])
    console.print(f"rolled back {target}: {shares}")


@adapters_app.command("promote")
def promote_cmd(
    target: str,
    variant: Annotated[str | None, typer.Option(help="Default: the canary / B variant.")] = None,
    url: Url = None,
    data_dir: DataDir = None,
) -> None:
    """Give a canary or A/B variant all of a target's traffic."""
    try:
        out = _call(
            "POST",
            url,
            data_dir,
            f"/api/adapters/deployments/{target}/promote",
            {"variant": variant},
        )
    except LoraflowError as exc:
        fail(exc)
        return
    console.print(f"promoted {target}: {out['state']['variants'][0]['adapter']}")


@adapters_app.command("workflow")
def workflow_cmd(
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="Adapter to validate/deploy (no merge).")
    ] = None,
    merge: Annotated[
        str | None, typer.Option(help="Adapters to merge first, comma-separated.")
    ] = None,
    method: Annotated[str, typer.Option("--method", "--merge-strategy")] = "linear",
    weights: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str, typer.Option("--name", "--adapter-name")] = "merged",
    mode: Annotated[
        str | None, typer.Option("--validation-mode", help="quick, standard or comprehensive.")
    ] = "quick",
    target: Annotated[str | None, typer.Option("--target", "--target-env")] = None,
    strategy: Annotated[str, typer.Option("--strategy", "--deployment-strategy")] = "replace",
    force: Annotated[bool, typer.Option("--force")] = False,
    url: Url = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Merge -> validate -> deploy as one workflow on the server; waits and prints each step."""
    body: dict[str, Any] = {"wait": True}
    if merge:
        body["merge"] = {
            "adapters": [a for a in merge.split(",") if a],
            "method": method,
            "name": name,
            **({"weights": _floats(weights, "--weights")} if weights else {}),
        }
    if adapter:
        body["adapter"] = adapter
    if mode:
        body["validate"] = {"mode": mode}
    if target:
        body["deploy"] = {"target": target, "strategy": strategy, "force": force}
    try:
        wf = _call("POST", url, data_dir, "/api/adapters/workflows", body)
    except LoraflowError as exc:
        fail(exc)
        return
    _report(wf, as_json)


@adapters_app.command("status")
def status_cmd(
    workflow_id: Annotated[
        str | None, typer.Argument(help="A workflow id; none: an overview.")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Workflows and deployments, read from the database."""
    from loraflow.services import workflows

    ctx = _ctx(data_dir)
    try:
        if workflow_id:
            _report(workflows.get_workflow(ctx, workflow_id), as_json)
            return
        flows = workflows.list_workflows(ctx, limit=20)
        deps = _deployments(ctx)
    except LoraflowError as exc:
        fail(exc)
        return
    if as_json:
        _print_json({"workflows": flows, "deployments": deps})
        return
    for d in deps:
        shares = ", ".join(f"{v['adapter']} {v['weight']:g}%" for v in d["state"]["variants"])
        console.print(f"deployment {d['target']:<16} {d['strategy']:<10} v{d['version']}  {shares}")
    for wf in flows:
        steps = " -> ".join(f"{s['step']}:{s['status']}" for s in wf["steps"])
        console.print(f"workflow   {wf['id'][:12]} {wf['kind']:<9} {wf['status']:<11} {steps}")
    if not deps and not flows:
        console.print("no deployments or workflows yet")


def _deployments(ctx: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from loraflow import db

    with ctx.db.connect() as conn:
        rows = conn.execute(select(db.deployments).order_by(db.deployments.c.target)).all()
    return [dict(r._mapping) for r in rows]
