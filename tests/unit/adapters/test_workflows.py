"""Adapter workflows run here on a tiny base model: merge, validate, export, bad specs, restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow import db
from loraflow.cli import app
from loraflow.config import Settings
from loraflow.errors import InvalidInput, NotFound
from loraflow.services.manage import workflows
from loraflow.services.registry import adapters as svc
from loraflow.services.train.jobs import TrainingContext
from tests.unit.models.tiny import build_tiny_model, make_adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wf-models")
    base = build_tiny_model(root / "base", smollm2_dir, hidden=32)
    return {
        "base": base,
        "a": make_adapter(base, root / "a", seed=1),
        "b": make_adapter(base, root / "b", seed=2),
    }


@pytest.fixture()
def ctx(tmp_path: Path, tiny: dict[str, Path]) -> TrainingContext:
    data = tmp_path / "data"
    s = Settings(data_dir=data, base_model_name=str(tiny["base"]), load_local_model=False)
    shutil.copytree(tiny["a"], s.lora_path / "alpha")
    shutil.copytree(tiny["b"], s.lora_path / "beta")
    c = TrainingContext(settings=s, db=db.make_engine(s.db_url))
    svc.scan(c)
    return c


def test_merge_workflow_registers_a_new_adapter_with_its_checks(ctx: TrainingContext) -> None:
    wf = workflows.create(
        ctx, "merge", {"adapters": ["alpha", "beta"], "method": "linear", "name": "blend"}
    )
    assert wf["status"] == "pending" and [s["step"] for s in wf["steps"]] == ["merge"]
    seen: list[str] = []
    done = workflows.run(ctx, wf["id"], lambda step: seen.append(step["status"]))
    assert done["status"] == "completed", done["error"]
    assert seen[-1] == "completed"
    merged = svc.get_adapter(ctx, "blend")
    assert merged.source == "merge" and merged.version == 1
    assert Path(merged.path).parent == ctx.settings.lora_path
    assert done["result"]["adapter_ref"] == "blend@v1"
    assert done["steps"][0]["detail"]["checks"]


def test_validate_then_export_gguf(ctx: TrainingContext) -> None:
    done = workflows.run(
        ctx, workflows.create(ctx, "validate", {"adapter": "alpha", "mode": "quick"})["id"]
    )
    assert done["status"] == "completed", done["error"]
    detail = done["steps"][0]["detail"]
    assert 0 <= detail["overall_score"] <= 100 and detail["grade"] in (
        "excellent",
        "good",
        "fair",
        "poor",
    )
    rec = svc.get_adapter(ctx, "alpha")
    stored = svc.latest_validation(ctx, rec)
    assert stored is not None and stored["id"] == detail["validation_id"]
    assert stored["report"]["mode"] == "quick"

    done = workflows.run(
        ctx, workflows.create(ctx, "export", {"adapter": "alpha", "format": "gguf"})["id"]
    )
    assert done["status"] == "completed", done["error"]
    out = Path(done["steps"][0]["detail"]["output_dir"])
    assert (out / "alpha.gguf").stat().st_size > 0
    modelfile = (out / "Modelfile").read_text()
    assert "FROM " in modelfile and "ADAPTER" in modelfile and "alpha.gguf" in modelfile


def test_bad_specs_are_refused_before_anything_runs(ctx: TrainingContext) -> None:
    with pytest.raises(InvalidInput, match="unknown merge method 'average'"):
        workflows.create(ctx, "merge", {"adapters": ["alpha", "beta"], "method": "average"})
    with pytest.raises(NotFound, match="'ghost' is not registered"):
        workflows.create(ctx, "merge", {"adapters": ["alpha", "ghost"]})
    with pytest.raises(InvalidInput, match="needs a list"):
        workflows.create(ctx, "merge", {"adapters": []})
    with pytest.raises(InvalidInput, match="unknown validation mode"):
        workflows.create(ctx, "validate", {"adapter": "alpha", "mode": "thorough"})
    with pytest.raises(InvalidInput, match="unknown export format"):
        workflows.create(ctx, "export", {"adapter": "alpha", "format": "onnx"})
    with pytest.raises(InvalidInput, match="allowed: replace, blue_green, canary, ab"):
        workflows.create(
            ctx, "workflow", {"adapter": "alpha", "deploy": {"target": "p", "strategy": "x"}}
        )
    assert workflows.list_workflows(ctx) == []


def test_deploy_step_outside_the_service_fails_with_a_reason(ctx: TrainingContext) -> None:
    wf = workflows.create(ctx, "workflow", {"adapter": "alpha", "deploy": {"target": "prod"}})
    done = workflows.run(ctx, wf["id"])
    assert done["status"] == "failed"
    assert "needs the running service" in done["error"]
    assert done["steps"][0]["status"] == "failed"


def test_restart_interrupts_dead_runs_and_cancel_stops_pending(ctx: TrainingContext) -> None:
    orphan = workflows.create(ctx, "validate", {"adapter": "alpha", "mode": "quick"})
    workflows._update(ctx, orphan["id"], status="running", owner="ghost-host-pid:1")
    mine = workflows.create(ctx, "validate", {"adapter": "beta", "mode": "quick"})
    dead = workflows.create(ctx, "validate", {"adapter": "beta", "mode": "quick"})
    import socket

    workflows._update(ctx, dead["id"], owner=f"{socket.gethostname()}:999999999")
    assert workflows.recover(ctx) == 1  # only the dead local process's run
    assert workflows.get_workflow(ctx, dead["id"])["status"] == "interrupted"
    assert workflows.get_workflow(ctx, orphan["id"])["status"] == "running"  # other host
    cancelled = workflows.cancel(ctx, mine["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(Exception, match="already ended"):
        workflows.cancel(ctx, mine["id"])


def test_cli_lists_scans_and_merges(ctx: TrainingContext) -> None:
    runner = CliRunner()
    env = {"BASE_MODEL_NAME": ctx.settings.base_model_name}
    data = ["--data-dir", str(ctx.settings.data_path)]
    listed = runner.invoke(app, ["adapters", "list", *data], env=env)
    assert listed.exit_code == 0 and "alpha" in listed.output and "beta" in listed.output
    merged = runner.invoke(
        app,
        [
            "adapters",
            "merge",
            "alpha",
            "beta",
            "--method",
            "task_arithmetic",
            "--name",
            "ta",
            *data,
        ],
        env=env,
    )
    assert merged.exit_code == 0, merged.output
    assert "completed" in merged.output
    bad = runner.invoke(app, ["adapters", "merge", "alpha", "--method", "slerp", *data], env=env)
    assert bad.exit_code != 0 and "slerp" in bad.output
    status = runner.invoke(app, ["adapters", "status", *data], env=env)
    assert status.exit_code == 0 and "merge" in status.output
