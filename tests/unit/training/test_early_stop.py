"""Early stopping on eval loss: patience, min delta, the reason it gives, a real job that
stops early, and patience without a validation set refused at submit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from loraflow.cli import app
from loraflow.errors import InvalidInput
from loraflow.training.early_stop import EarlyStopOnEvalLoss
from loraflow.training.params import TrainParams


def _feed(cb: EarlyStopOnEvalLoss, losses: list[float]) -> int | None:
    """Evaluate each loss in turn; return the evaluation number that stopped training."""
    for i, loss in enumerate(losses, start=1):
        control = SimpleNamespace(should_training_stop=False)
        cb.on_evaluate(None, SimpleNamespace(epoch=float(i)), control, metrics={"eval_loss": loss})
        if control.should_training_stop:
            return i
    return None


def test_stops_after_patience_evaluations_without_improvement() -> None:
    cb = EarlyStopOnEvalLoss(patience=2)
    assert _feed(cb, [2.0, 1.5, 1.6, 1.55, 1.0]) == 4
    assert "epoch 4.00" in cb.reason and "best 1.5000" in cb.reason


def test_improvements_smaller_than_min_delta_do_not_count() -> None:
    cb = EarlyStopOnEvalLoss(patience=1, min_delta=0.1)
    assert _feed(cb, [2.0, 1.95]) == 2
    cb = EarlyStopOnEvalLoss(patience=1, min_delta=0.1)
    assert _feed(cb, [2.0, 1.85, 1.7]) is None


def test_off_by_default_and_bad_values_rejected() -> None:
    assert _feed(EarlyStopOnEvalLoss(patience=0), [1.0, 2.0, 3.0, 4.0]) is None
    assert TrainParams().early_stopping_patience == 0
    with pytest.raises(InvalidInput, match="early_stopping"):
        TrainParams.from_dict({"early_stopping_patience": -1})


def _rows(*answers: str) -> str:
    return json.dumps(
        [{"instruction": "What is the secret word?", "input": "", "output": a} for a in answers]
    )


def _train(*args: str):
    result = CliRunner().invoke(app, ["train", *args])
    return result, " ".join(result.output.split())


@pytest.mark.integration
def test_a_real_job_stops_early_and_says_why(
    tmp_path: Path, model_cache: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    (tmp_path / "train.json").write_text(_rows("It is apple.", "It is pear."))
    (tmp_path / "val.json").write_text(_rows("It is plum."))
    dd = str(tmp_path / "data")
    # 2 steps an epoch over 4 epochs; no eval loss can fall by 10, so epoch 2 ends the run.
    # A tiny random Llama with SmolLM2's tokenizer: the whole job path at a small cost.
    small = ["--base-model", str(tiny_llama_dir), "--rank", "4", "--max-len", "64"]
    small += ["--batch-size", "1", "--grad-accum", "1"]
    r, out = _train(
        "--data", str(tmp_path / "train.json"), "--val-data", str(tmp_path / "val.json"),
        "--task-name", "early", "--epochs", "4", *small,
        "--patience", "1", "--min-delta", "10", "--data-dir", dd,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    job = json.loads(CliRunner().invoke(app, ["tasks", "show", "1", "--data-dir", dd]).output)
    assert job["status"] == "completed", job
    assert job["current_epoch"] == 2 and job["step"] == 4 < job["total_steps"] == 8
    assert "stopped early at epoch 2.00" in job["message"] and "stopped early" in out
    assert "min_delta=10" in job["message"] and "patience=1" in job["message"]
    assert (Path(job["output_path"]) / "adapter_model.safetensors").is_file()


def test_patience_without_a_validation_set_is_refused_at_submit(
    tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    (tmp_path / "a.json").write_text(_rows("It is apple.", "It is pear."))
    (tmp_path / "one.json").write_text(_rows("It is apple."))
    dd = str(tmp_path / "data")
    base = ["--detach", "--data-dir", dd, "--patience", "2"]
    r, out = _train("--data", str(tmp_path / "a.json"), "--val-split", "0", *base)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "early_stopping_patience=2 needs a validation set" in out
    assert "val_split=0 holds out nothing" in out and "--val-data FILE" in out
    # The default 10% of a one-example dataset is no example either.
    r, out = _train("--data", str(tmp_path / "one.json"), *base)
    assert r.exit_code != 0 and "holds out no example" in out
    listed = CliRunner().invoke(app, ["tasks", "list", "--data-dir", dd])
    assert "pending" not in listed.output  # nothing was queued
    # A validation file, or a held-out share, is what it takes.
    r, _ = _train("--data", str(tmp_path / "a.json"), "--val-split", "0.5", *base)
    assert r.exit_code == 0, r.output
    r, _ = _train(
        "--data", str(tmp_path / "one.json"), "--val-data", str(tmp_path / "a.json"), *base
    )
    assert r.exit_code == 0, r.output


def test_api_refuses_patience_without_a_validation_set(tmp_path: Path, model_cache: Path) -> None:
    from fastapi.testclient import TestClient

    from loraflow.api.app import create_app
    from loraflow.config import Settings
    from loraflow.db import make_engine
    from loraflow.services.runtime import Runtime, prepare_data_dir

    settings = Settings(data_dir=tmp_path / "d", cache_dir=model_cache, enable_ui=False)
    prepare_data_dir(settings)
    # Only the training routes are called: they use the settings and the database.
    rt = Runtime(settings, make_engine(settings.db_url), None, None, None)  # type: ignore[arg-type]
    with TestClient(create_app(settings, runtime=rt)) as client:
        up = client.post(
            "/api/simple-lora/upload-dataset",
            files={"file": ("a.json", _rows("It is apple.", "It is pear."), "application/json")},
        )
        form = {
            "task_name": "api-early",
            "base_model": "bundled:smollm2",
            "dataset_filename": up.json()["filename"],
        }
        params = {"early_stopping_patience": 1, "val_split": 0}
        bad = client.post(
            "/api/simple-lora/train", data={**form, "training_params": json.dumps(params)}
        )
        assert bad.status_code == 422, bad.text
        assert "needs a validation set" in bad.json()["detail"]
        assert "val_split" in bad.json()["hint"]
        assert client.get("/api/simple-lora/tasks").json()["count"] == 0
        # An uploaded validation file is a validation set too.
        val = client.post(
            "/api/simple-lora/upload-dataset",
            files={"file": ("v.json", _rows("It is plum."), "application/json")},
        ).json()["filename"]
        with_val = {**form, "training_params": json.dumps(params)}
        missing = client.post("/api/simple-lora/train", data={**with_val, "val_filename": "x.json"})
        assert missing.status_code == 404, missing.text
        ok = client.post("/api/simple-lora/train", data={**with_val, "val_filename": val})
        assert ok.status_code == 200, ok.text
        job = client.get(f"/api/simple-lora/tasks/{ok.json()['task_id']}").json()
        assert job["val_file"] == val
        params["val_split"] = 0.5
        form["task_name"] = "api-early-split"
        ok = client.post(
            "/api/simple-lora/train", data={**form, "training_params": json.dumps(params)}
        )
        assert ok.status_code == 200, ok.text


@pytest.mark.integration
def test_patience_with_a_validation_set_that_encodes_to_nothing_fails_the_job_clearly(
    tmp_path: Path, model_cache: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    (tmp_path / "train.json").write_text(_rows("It is apple.", "It is pear."))
    # The question alone is longer than max_len: the answer, the only trainable part, is cut.
    long_question = " ".join(["word"] * 200)
    val = [{"instruction": long_question, "input": "", "output": "plum"}]
    (tmp_path / "val.json").write_text(json.dumps(val))
    dd = str(tmp_path / "data")
    r, out = _train(
        "--data", str(tmp_path / "train.json"), "--val-data", str(tmp_path / "val.json"),
        "--task-name", "empty-val", "--base-model", str(tiny_llama_dir), "--rank", "4",
        "--max-len", "64", "--patience", "1", "--data-dir", dd,
    )  # fmt: skip
    assert r.exit_code != 0 and "Traceback" not in r.output
    job = json.loads(CliRunner().invoke(app, ["tasks", "show", "1", "--data-dir", dd]).output)
    assert job["status"] == "failed", job
    assert "no validation example has trainable tokens within max_len=64" in job["error"]
