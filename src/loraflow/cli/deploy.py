"""`loraflow adapters deploy|rollback|promote|workflow|status`: deployments and workflows.

Deployments live in the running service, so deploy, rollback, promote and workflows that
deploy are sent to it (API_HOST:API_PORT, or --url); status reads the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from loraflow.cli.adapters import Url, adapters_app, ctx_for, float_list, report_workflow
from loraflow.cli.common import AsJson, DataDir, console, make_settings, print_json
from loraflow.errors import EngineUnavailable, InvalidInput


def _server(url: str | None, data_dir: Path | None) -> tuple[str, dict[str, str]]:
    from loraflow.services.ops.status import server_headers, server_url

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
    engine: Annotated[
        str, typer.Option(help="local, or remote: the vLLM replicas (loaded at run time).")
    ] = "local",
    max_error_rate: Annotated[
        float | None, typer.Option(help="Error rate (0-1) that rolls the canary / B back.")
    ] = None,
    max_latency_ratio: Annotated[
        float | None, typer.Option(help="p95 latency over the stable's that rolls back (1.2).")
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option(help="Requests a variant serves before it is judged.")
    ] = None,
    health_retries: Annotated[int | None, typer.Option(help="Health-check attempts.")] = None,
    health_timeout: Annotated[
        float | None, typer.Option(help="Seconds each health check may take.")
    ] = None,
    switch_delay: Annotated[
        float | None, typer.Option(help="Blue-green: seconds from passing checks to switch.")
    ] = None,
    ab_duration: Annotated[
        float | None,
        typer.Option(help="A/B: seconds the test runs before the better variant takes all."),
    ] = None,
    url: Url = None,
    data_dir: DataDir = None,
) -> None:
    """Deploy a registered adapter behind a target name on the running server.

    Thresholds, health check, switch delay and A/B duration default to the DEPLOY_*
    settings; the ones given here are stored with this deployment.
    """
    body = {
        "adapter": ref,
        "target": target,
        "strategy": strategy,
        "percent": percent,
        "schedule": float_list(schedule, "--schedule"),
        "step_requests": step_requests,
        "split": float_list(split, "--split"),
        "force": force,
        "engine": engine,
        "max_error_rate": max_error_rate,
        "max_latency_ratio": max_latency_ratio,
        "min_requests": min_requests,
        "health_retries": health_retries,
        "health_timeout": health_timeout,
        "switch_delay": switch_delay,
        "ab_duration": ab_duration,
    }
    out = _call(
        "POST",
        url,
        data_dir,
        "/api/adapters/deploy",
        {k: v for k, v in body.items() if v is not None},
    )
    for step in out.get("steps", []):
        console.print(f"  {step['step']:<17} {'ok' if step.get('ok', True) else 'failed'}")
    shares = ", ".join(
        f"{v['name']}={v['adapter']} {v['weight']:g}%" for v in out["state"]["variants"]
    )
    console.print(f"deployed {target} (version {out['version']}): {shares}")
    console.print("  settings: " + settings_text(out["state"]))


def settings_text(state: dict[str, Any]) -> str:
    """A deployment's own settings on one line (older deployments: the global ones)."""
    found = state.get("settings")
    if not found:
        return "global DEPLOY_* settings"
    text = ", ".join(f"{k}={v:g}" for k, v in found.items())
    if state.get("ab_ends_at"):
        text += f"; A/B ends {state['ab_ends_at'][:19]} judged by " + ", ".join(
            state.get("success_metrics") or []
        )
    return text


@adapters_app.command("rollback")
def rollback_cmd(target: str, url: Url = None, data_dir: DataDir = None) -> None:
    """Restore what the last deploy of a target replaced."""
    out = _call("POST", url, data_dir, f"/api/adapters/deployments/{target}/rollback")
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
    out = _call(
        "POST",
        url,
        data_dir,
        f"/api/adapters/deployments/{target}/promote",
        {"variant": variant},
    )
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
            **({"weights": float_list(weights, "--weights")} if weights else {}),
        }
    if adapter:
        body["adapter"] = adapter
    if mode:
        body["validate"] = {"mode": mode}
    if target:
        body["deploy"] = {"target": target, "strategy": strategy, "force": force}
    wf = _call("POST", url, data_dir, "/api/adapters/workflows", body)
    report_workflow(wf, as_json)


@adapters_app.command("status")
def status_cmd(
    workflow_id: Annotated[
        str | None, typer.Argument(help="A workflow id; none: an overview.")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Workflows and deployments, read from the database."""
    from loraflow.services.manage import workflows

    ctx = ctx_for(data_dir)
    if workflow_id:
        report_workflow(workflows.get_workflow(ctx, workflow_id), as_json)
        return
    flows = workflows.list_workflows(ctx, limit=20)
    deps = _deployments(ctx)
    if as_json:
        print_json({"workflows": flows, "deployments": deps})
        return
    for d in deps:
        shares = ", ".join(f"{v['adapter']} {v['weight']:g}%" for v in d["state"]["variants"])
        console.print(f"deployment {d['target']:<16} {d['strategy']:<10} v{d['version']}  {shares}")
        console.print(f"           settings: {settings_text(d['state'])}")
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
