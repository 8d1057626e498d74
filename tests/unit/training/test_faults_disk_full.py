"""Fault: the disk fills up while a training job saves its adapter.

The worker runs under RLIMIT_FSIZE (as tests/unit/test_backup.py does): its small epoch
checkpoints fit, the final adapter folder (with its 2 MB tokenizer.json) does not. The job
must fail with a message that says the disk is full, keep its checkpoints, leave no
half-written adapter where scanners look, and finish on resume once there is room.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loraflow.config import Settings
from loraflow.db import make_engine
from loraflow.services.train import jobs as training
from loraflow.training import jobs
from loraflow.training.trainer import last_checkpoint

pytestmark = pytest.mark.integration

LIMIT = 1_000_000  # bytes per file: checkpoints of a tiny LoRA fit, tokenizer.json does not
WRAPPER = r"""
import resource, runpy, signal, sys
# A full disk: writes past the limit fail with EFBIG instead of killing the process.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["worker", sys.argv[2]]
runpy.run_module("loraflow.training.worker", run_name="__main__")
"""
PARAMS = {
    "batch_size": 2,
    "grad_accum": 1,
    "max_len": 48,
    "epochs": 2,
    "rank": 4,
    "alpha": 8,
    "val_split": 0.0,
}


def test_a_full_disk_at_the_final_save_fails_clearly_and_resume_finishes(
    tmp_path: Path, model_cache: Path, tiny_llama_dir: Path
) -> None:
    rows = [
        {"instruction": "What is the secret word?", "input": "", "output": f"It is {w}."}
        for w in ("apple", "lemon", "grape", "olive")
    ]
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(rows))
    settings = Settings(data_dir=tmp_path / "data", cache_dir=model_cache)
    ctx = training.TrainingContext(settings, make_engine(settings.db_url))
    task = training.submit(
        ctx, "full-disk", str(tiny_llama_dir), "", "alpaca", PARAMS, local_dataset=dataset
    )
    tid = task["task_id"]
    jobs.update_job(ctx.db, tid, status="running", started_at=jobs.now())
    out = Path(task["output_path"])
    out.mkdir(parents=True)
    config = json.dumps({"db_url": settings.db_url, "lock": str(tmp_path / "train.lock")})
    with open(tmp_path / "worker.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, str(LIMIT), str(tid)],
            input=config + "\n",
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
            check=False,
        )
    log_text = (tmp_path / "worker.log").read_text()
    assert proc.returncode == 0, log_text[-3000:]

    failed = training.get_task(ctx, tid)
    assert failed["status"] == "failed", (failed, log_text[-3000:])
    assert "the disk is full" in failed["error"] and str(out) in failed["error"]
    assert "resume" in failed["error"] and failed["resumable"]
    assert "Traceback" not in failed["message"]
    # The epoch checkpoints written before the failure are intact and resumable ...
    kept = last_checkpoint(out)
    assert kept is not None and (kept / "adapter_model.safetensors").is_file()
    # ... and no adapter appears where the registry scans: not even half of one.
    assert not (out / "adapter_config.json").exists()
    assert not (out / "adapter_model.safetensors").exists()

    training.resume(ctx, tid)
    done = training.run_foreground(ctx, tid, lambda _job: None)
    assert done["status"] == "completed", done["message"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / ".final").exists()
