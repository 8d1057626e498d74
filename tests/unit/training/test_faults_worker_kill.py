"""Fault: the training worker is SIGKILLed mid-epoch; the job fails resumable and resume
finishes with the same held-out loss as a run that was never interrupted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from loraflow.config import Settings
from loraflow.db import make_engine
from loraflow.services.train import jobs as training
from loraflow.training import jobs
from loraflow.training.trainer import last_checkpoint

pytestmark = pytest.mark.integration

WORDS = [f"word{i}" for i in range(16)]
# 16 rows, batch 1, 3 epochs: 48 steps with a checkpoint after each 16-step epoch, so a
# kill lands between checkpoints with steps left to lose.
PARAMS = {
    "batch_size": 1,
    "grad_accum": 1,
    "max_len": 48,
    "epochs": 3,
    "lr": 5e-3,
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "val_split": 0.0,
}
# Same seed, same data order, and optimizer, scheduler and RNG state restored from the
# checkpoint: the resumed run replays the lost steps exactly, so the only room for a
# difference is the order of floating-point sums (identical in runs here).
EVAL_LOSS_RTOL = 1e-3
SLICE_S = 0.02


def rows(words: list[str]) -> list[dict[str, str]]:
    return [
        {"instruction": "What is the secret word?", "input": "", "output": f"It is {w}."}
        for w in words
    ]


@pytest.fixture()
def ctx(tmp_path: Path, model_cache: Path) -> training.TrainingContext:
    settings = Settings(data_dir=tmp_path / "data", cache_dir=model_cache)
    return training.TrainingContext(settings, make_engine(settings.db_url))


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "train.json").write_text(json.dumps(rows(WORDS)))
    (tmp_path / "val.json").write_text(json.dumps(rows(["peach", "mango", "lemon"])))
    return tmp_path / "train.json", tmp_path / "val.json"


def submit(ctx: Any, name: str, model: Path, data: tuple[Path, Path]) -> int:
    task = training.submit(
        ctx, name, str(model), "", "alpaca", PARAMS, local_dataset=data[0], local_val=data[1]
    )
    return int(task["task_id"])


def eval_loss(task: dict[str, Any]) -> float:
    history = json.loads((Path(task["output_path"]) / "metrics.json").read_text())["history"]
    return next(h["eval_loss"] for h in reversed(history) if "eval_loss" in h)


@pytest.mark.timeout(900)
def test_killed_worker_fails_resumable_and_resume_matches_an_uninterrupted_run(
    ctx: training.TrainingContext, tiny_llama_dir: Path, data: tuple[Path, Path]
) -> None:
    baseline = training.run_foreground(
        ctx, submit(ctx, "whole", tiny_llama_dir, data), lambda _job: None
    )
    assert baseline["status"] == "completed", baseline["message"]

    tid = submit(ctx, "killed", tiny_llama_dir, data)
    killed: dict[str, Any] = {}

    def on_poll(job: dict[str, Any]) -> None:
        # Run the worker in short slices (SIGCONT, 20 ms, SIGSTOP) and look at it between
        # slices: a slice is far shorter than an epoch, so it is always caught past an epoch's
        # checkpoint with steps done since that the kill loses, however fast the machine.
        # Then kill it, as the OOM killer would, with no chance to save anything.
        pid = jobs.get_job(ctx.db, tid)["pid"]
        if killed or pid is None:
            return
        try:
            while True:
                now = jobs.get_job(ctx.db, tid)
                ckpt = last_checkpoint(Path(now["output_path"]))
                if now["status"] != "running":
                    return
                if ckpt is not None and int(ckpt.name.split("-")[1]) < now["step"]:
                    killed.update(pid=pid, step=now["step"], checkpoint=ckpt.name)
                    os.kill(pid, signal.SIGKILL)
                    return
                os.kill(pid, signal.SIGCONT)
                time.sleep(SLICE_S)
                os.kill(pid, signal.SIGSTOP)
        finally:
            if not killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    first = training.run_foreground(ctx, tid, on_poll)
    assert killed, "the job finished before it could be killed"
    assert first["step"] > int(killed["checkpoint"].split("-")[1])  # steps were lost
    assert first["status"] == "failed" and first["resumable"], first
    assert "killed" in first["error"] and "Traceback" not in first["message"]
    assert "train.log" in first["message"]
    out = Path(first["output_path"])
    assert not (out / "adapter_model.safetensors").exists()
    kept = last_checkpoint(out)
    assert kept is not None and int(kept.name.split("-")[1]) < first["total_steps"]

    # A kill during the next checkpoint's save leaves a folder without trainer_state.json;
    # resume must skip it and continue from the last complete one.
    torn = out / "checkpoints" / "checkpoint-999"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    assert last_checkpoint(out) == kept

    training.resume(ctx, tid)
    second = training.run_foreground(ctx, tid, lambda _job: None)
    log = (out / "train.log").read_text()
    assert second["status"] == "completed", (second["message"], log[-3000:])
    assert second["step"] == baseline["step"] == 48
    assert not torn.exists()
    history = json.loads((out / "metrics.json").read_text())["history"]
    steps = [h["step"] for h in history if "loss" in h]
    # One curve: the steps lost with the kill were trained again once, from the checkpoint.
    assert steps == list(range(1, 49))
    assert eval_loss(second) == pytest.approx(eval_loss(baseline), rel=EVAL_LOSS_RTOL)
