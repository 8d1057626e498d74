"""CLI: train/tasks commands queue, list and cancel jobs; bad input is an error, not a trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraflow.cli import app


@pytest.fixture()
def env(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"}] * 3))
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_detached_job_is_listed_and_cancelled(env: Path) -> None:
    dd = str(env / "data")
    r = invoke(
        "train",
        "--data",
        str(env / "a.json"),
        "--task-name",
        "hello",
        "--detach",
        "--epochs",
        "1",
        "--data-dir",
        dd,
    )
    assert r.exit_code == 0, r.output
    assert "task 1 (hello)" in r.output
    listed = invoke("tasks", "list", "--data-dir", dd)
    assert "hello" in listed.output and "pending" in listed.output
    shown = json.loads(invoke("tasks", "show", "1", "--data-dir", dd).output)
    assert shown["training_params"]["epochs"] == 1.0 and shown["status"] == "pending"
    assert "cancelled" in invoke("tasks", "cancel", "1", "--data-dir", dd).output
    again = invoke("tasks", "cancel", "1", "--data-dir", dd)
    assert again.exit_code != 0 and "only pending or running" in text(again)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--base-model", "no/such"], "available: "),
        (["--type", "sharegpt"], "alpaca"),
        (["--rank", "0"], "rank=0"),
        (["--task-name", "../up"], "task_name"),
    ],
)
def test_bad_train_input_is_a_clear_error(env: Path, extra: list[str], expected: str) -> None:
    r = invoke(
        "train", "--data", str(env / "a.json"), "--detach", "--data-dir", str(env / "data"), *extra
    )
    assert r.exit_code != 0
    assert expected in text(r) and "Traceback" not in r.output


def test_missing_dataset_file(env: Path) -> None:
    r = invoke("train", "--data", str(env / "nope.json"), "--data-dir", str(env / "data"))
    assert r.exit_code != 0 and "does not exist" in text(r)


def test_hugging_face_flags_and_params_are_taken_and_unknown_ones_refused(env: Path) -> None:
    dd = str(env / "data")
    common = ["train", "--data", str(env / "a.json"), "--detach", "--data-dir", dd]
    r = invoke(
        *common,
        "--task-name",
        "aliases",
        "--num-train-epochs",
        "1",
        "--learning-rate",
        "1e-4",
        "-p",
        "lora_dropout=0.1",
        "-p",
        "seed=7",
    )
    assert r.exit_code == 0, r.output
    shown = json.loads(invoke("tasks", "show", "1", "--data-dir", dd).output)
    params = shown["training_params"]
    assert (params["epochs"], params["lr"], params["dropout"], params["seed"]) == (1, 1e-4, 0.1, 7)
    assert shown["task_name"] == "aliases"
    r = invoke(*common, "--task-name", "typo", "-p", "num_epochs=1")
    assert r.exit_code != 0 and "unknown training parameter(s) ['num_epochs']" in text(r)
    assert "num_train_epochs (= epochs)" in text(r)
    r = invoke(*common, "--task-name", "twice", "--epochs", "2", "-p", "num_train_epochs=1")
    assert r.exit_code != 0 and "epochs is given twice" in text(r)


def test_device_quantization_and_dropout_flags_reach_the_job(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DEVICE", "TRAINING_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    dd = str(env / "data")
    common = ["train", "--data", str(env / "a.json"), "--detach", "--data-dir", dd]
    flags = ["--device", "cpu", "--quantization", "none", "--dropout", "0.1"]
    assert invoke(*common, "--task-name", "flags", *flags).exit_code == 0
    params = json.loads(invoke("tasks", "show", "1", "--data-dir", dd).output)["training_params"]
    assert (params["device"], params["quantization"], params["dropout"]) == ("cpu", "none", 0.1)
    # Without flags a job trains on the GPU when there is one (auto), with QLoRA's auto preset.
    assert invoke(*common, "--task-name", "plain").exit_code == 0
    params = json.loads(invoke("tasks", "show", "2", "--data-dir", dd).output)["training_params"]
    assert (params["device"], params["quantization"]) == ("auto", "auto")
    monkeypatch.setenv("DEVICE", "cpu")
    assert invoke(*common, "--task-name", "follows").exit_code == 0
    params = json.loads(invoke("tasks", "show", "3", "--data-dir", dd).output)["training_params"]
    assert params["device"] == "cpu"
