"""Where a job runs shows in the job view and the Training tab, for Ray jobs and local ones."""

from __future__ import annotations

from pathlib import Path

from loraflow.config import Settings
from loraflow.db import make_engine
from loraflow.services.train import jobs as training
from loraflow.training import jobs
from loraflow.ui.context import UIContext
from loraflow.ui.i18n import Labels
from loraflow.ui.training import followed_line, tasks_html


def _job(db, name: str) -> dict:
    return jobs.create_job(
        db,
        task_name=name,
        base_model="bundled:smollm2",
        dataset_file="d.json",
        dataset_type="alpaca",
        output_path=f"/tmp/{name}",
        training_params={"rank": 4},
    )


def test_the_views_say_where_a_job_runs(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    local, on_ray = _job(db, "here"), _job(db, "there")
    jobs.claim_next(db)
    jobs.claim_next(db, executor="ray")
    jobs.update_job(
        db,
        on_ray["id"],
        node="10.0.0.7/abc123",
        resources={"CPU": 1.0, "GPU": 1.0, "trainer": 1.0},
        ray_id="a1b2c3",
    )
    here = training.get_task(training.TrainingContext(Settings(data_dir=tmp_path), db), local["id"])
    there = training.get_task(
        training.TrainingContext(Settings(data_dir=tmp_path), db), on_ray["id"]
    )
    assert here["executor"] == "local" and here["node"] == jobs.HOST and here["ray_id"] is None
    assert here["heartbeat_at"] is not None
    assert there["executor"] == "ray" and there["resources"]["GPU"] == 1.0
    words = training.placement(there)
    assert words == "ray; node 10.0.0.7/abc123; CPU=1, GPU=1, trainer=1; actor a1b2c3"

    ctx = UIContext(runtime=lambda: None, settings=Settings(data_dir=tmp_path), t=Labels("en"))
    table = tasks_html(ctx, [there, here])
    assert "node 10.0.0.7/abc123" in table and "actor a1b2c3" in table
    assert table.count("lf-where") == 1  # a local job's row is as it was
    assert "actor a1b2c3" in followed_line(ctx, [there], there["task_id"])
    assert "(" not in followed_line(ctx, [here], here["task_id"]).split("**")[-1]
