"""`loraflow integrate --action workflow|merge|validate|status`: the integration tool.

Merges one adapter folder into its base as a full model, validates the model folder against
its base and deploys it (Ollama, or a loraflow / vLLM server started on it), in this
process, as an `integrate` workflow whose status `--action status` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loraflow.cli.adapters import _run_here, ctx_for, report_workflow
from loraflow.cli.common import AsJson, DataDir, app, console, print_json
from loraflow.errors import InvalidInput

ACTIONS = ("workflow", "merge", "validate", "status")


@app.command("integrate")
def integrate_cmd(
    action: Annotated[str, typer.Option(help="workflow, merge, validate or status.")],
    adapter_path: Annotated[
        Path | None, typer.Option(help="Adapter folder (registered on the fly).")
    ] = None,
    base_model_path: Annotated[
        Path | None, typer.Option(help="Base model folder (default: the configured base).")
    ] = None,
    adapter_name: Annotated[str | None, typer.Option(help="Registry name.")] = None,
    adapter_type: Annotated[str | None, typer.Option(help="Kept as a tag.")] = None,
    validation_mode: Annotated[
        str, typer.Option(help="quick, standard or comprehensive.")
    ] = "standard",
    deployment_strategy: Annotated[str, typer.Option(help="replace or blue_green.")] = "replace",
    target_env: Annotated[
        str | None, typer.Option(help="Deployment name (Ollama model name); none: no deploy.")
    ] = None,
    serve_with: Annotated[
        str, typer.Option(help="ollama, loraflow or vllm (the last two: start command).")
    ] = "loraflow",
    output_path: Annotated[
        Path | None, typer.Option(help="Merged model folder (written, or validated).")
    ] = None,
    merge_strategy: Annotated[str, typer.Option(help="linear or task_arithmetic.")] = "linear",
    quantization: Annotated[
        bool, typer.Option("--quantization", help="Quantize the merged model (bitsandbytes).")
    ] = False,
    quantization_bits: Annotated[int, typer.Option(help="8 or 4.")] = 8,
    workflow_id: Annotated[str | None, typer.Option(help="For --action status.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Deploy despite the gate.")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Merge an adapter folder into its base model, validate the result, deploy it."""
    if action not in ACTIONS:
        raise InvalidInput(f"unknown --action {action!r}; allowed: {', '.join(ACTIONS)}")
    ctx = ctx_for(data_dir)
    if action == "status":
        _status(ctx, workflow_id, as_json)
        return
    spec: dict[str, Any] = {
        "adapter_name": adapter_name,
        "adapter_type": adapter_type,
        "base_model_path": str(base_model_path) if base_model_path else None,
    }
    if action in ("workflow", "merge"):
        if adapter_path is None:
            raise InvalidInput(f"--action {action} needs --adapter-path")
        spec["adapter_path"] = str(adapter_path)
        spec["merge"] = {
            "strategy": merge_strategy,
            "output_path": str(output_path) if output_path else None,
            "quantization": quantization,
            "quantization_bits": quantization_bits,
        }
    if action in ("workflow", "validate"):
        spec["validate"] = {"mode": validation_mode}
    if action == "validate":
        if output_path is None:
            raise InvalidInput("--action validate needs --output-path (the model folder)")
        spec["model_path"] = str(output_path)
    if action == "workflow" and target_env:
        spec["deploy"] = {
            "target": target_env,
            "strategy": deployment_strategy,
            "serve_with": serve_with,
            "force": force,
        }
    _run_here(ctx, "integrate", {k: v for k, v in spec.items() if v is not None}, as_json)


def _status(ctx: Any, workflow_id: str | None, as_json: bool) -> None:
    from loraflow.services.manage import workflows

    if workflow_id:
        report_workflow(workflows.get_workflow(ctx, workflow_id), as_json)
        return
    flows = [w for w in workflows.list_workflows(ctx, limit=50) if w["kind"] == "integrate"]
    if as_json:
        print_json({"workflows": flows})
        return
    for wf in flows:
        steps = " -> ".join(f"{s['step']}:{s['status']}" for s in wf["steps"])
        console.print(f"{wf['id'][:12]} {wf['status']:<11} {steps}")
    if not flows:
        console.print("no integration workflows yet")
