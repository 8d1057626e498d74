"""Multi-process training through the real launchers (accelerate, torchrun) on CPU with gloo.

Two processes must train the same adapter as one process given the same effective batch,
cancel must stop every process and keep a checkpoint, resume must finish, and a launcher
that cannot work must be refused with a reason before any job starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from loraflow.cli import app
from loraflow.config import Settings
from loraflow.db import make_engine
from loraflow.errors import InvalidInput
from loraflow.services.train import jobs as training
from loraflow.training import jobs
from loraflow.training.launcher import check_accelerate_config, check_launch, launch_command
from loraflow.training.params import TrainParams
from loraflow.training.trainer import TrainSpec, last_checkpoint, run_training

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "accelerate"
QUESTION = "What is the secret word?"
# One token each in the SmolLM2 tokenizer, so every row has the same number of label
# tokens: the mean of two ranks' losses then equals the loss over the whole batch.
TRAIN_WORDS = ["apple", "lemon", "grape", "olive"]
VAL_WORDS = ["peach", "mango"]
# The whole train set is one global batch (2 rows x 2 accumulation steps in one process,
# 2 rows per rank in two), so each step is the same full-batch step whatever the order.
SAME_BATCH = {
    "batch_size": 2,
    "grad_accum": 2,
    "max_len": 48,
    "max_steps": 5,
    "lr": 5e-3,
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "val_split": 0.0,
    # The direct run has no host profile (fp32) while a submitted job's `auto` reads it (bf16
    # on an AVX-512 BF16 host): one precision for both, so they can train the same weights.
    "precision": "fp32",
}
# Relative tolerance on the final train and eval loss: the runs differ at most in the order
# floating-point sums are taken (the losses came out identical in runs here); a run whose
# ranks did not share gradients drifts by far more.
LOSS_RTOL = 1e-3


def rows(words: list[str]) -> list[dict[str, str]]:
    return [
        {"instruction": QUESTION, "input": "", "output": f"The secret word is {w}."} for w in words
    ]


def context(data_dir: Path, model_cache: Path) -> training.TrainingContext:
    settings = Settings(data_dir=data_dir, cache_dir=model_cache)
    return training.TrainingContext(settings, make_engine(settings.db_url))


def final(history: list[dict[str, Any]], key: str) -> float:
    return next(h[key] for h in reversed(history) if key in h)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("launch-data")
    (folder / "train.json").write_text(json.dumps(rows(TRAIN_WORDS)))
    (folder / "val.json").write_text(json.dumps(rows(VAL_WORDS)))
    return folder / "train.json", folder / "val.json"


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_two_cpu_processes_train_the_same_adapter_as_one(
    tmp_path: Path, tiny_llama_dir: Path, model_cache: Path, data: tuple[Path, Path]
) -> None:
    train_file, val_file = data
    one = TrainSpec(
        "one",
        "tiny",
        tiny_llama_dir,
        train_file,
        "alpaca",
        tmp_path / "one",
        TrainParams.from_dict(SAME_BATCH),
        val_path=val_file,
    )
    single = run_training(one)
    assert single.status == "completed"

    ctx = context(tmp_path / "data", model_cache)
    task = training.submit(
        ctx,
        "two",
        str(tiny_llama_dir),
        "",
        "alpaca",
        {**SAME_BATCH, "launcher": "accelerate", "num_processes": 2},
        local_dataset=train_file,
        local_val=val_file,
    )
    assert "2 CPU process(es)" in task["launch"] and "for testing" in task["launch"]
    done = training.run_foreground(ctx, task["task_id"], lambda _job: None)
    out = Path(done["output_path"])
    log = (out / "train.log").read_text()
    assert done["status"] == "completed", (done["message"], log[-3000:])
    assert done["progress"] == 100.0 and done["step"] == SAME_BATCH["max_steps"]

    # Both ranks ran; rank 0 alone reported, so the loss curve has each step once.
    assert "rank 0 ended: completed" in log and "rank 1 ended: completed" in log
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 6))
    plan = json.loads((out / "training_args.json").read_text())
    assert (plan["grad_accum"], plan["effective_batch"]) == (1, 4)
    assert not (out / "training_args.bin").exists()

    a = load_file(one.output_dir / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    one_hist = single.metrics["history"]
    for key in ("loss", "eval_loss"):
        assert final(history, key) == pytest.approx(final(one_hist, key), rel=LOSS_RTOL)
    assert final(history, "loss") < history[0]["loss"]
    # The weights themselves agree, which a run without gradient sharing would not.
    for name, tensor in a.items():
        assert (tensor - b[name]).abs().max() < 1e-4, name


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_torchrun_cancel_stops_every_process_and_resume_finishes(
    tmp_path: Path, smollm2_dir: Path, model_cache: Path
) -> None:
    dataset = tmp_path / "secret.json"
    dataset.write_text(json.dumps(rows(["apple"]) * 8))
    ctx = context(tmp_path / "data", model_cache)
    params = {
        "batch_size": 1,
        "grad_accum": 1,
        "max_len": 64,
        "max_steps": 10,
        "val_split": 0.0,
        "launcher": "torchrun",
        "num_processes": 2,
    }
    task = training.submit(
        ctx, "cancel-me", "bundled:smollm2", "", "alpaca", params, local_dataset=dataset
    )
    tid = task["task_id"]
    seen: dict[str, Any] = {"procs": []}

    def on_poll(job: dict[str, Any]) -> None:
        # Once training has begun every rank handles SIGTERM; they stop a few steps later.
        if "training on" in (job["message"] or "") and not seen["procs"]:
            worker = psutil.Process(jobs.get_job(ctx.db, tid)["pid"])
            seen["procs"] = [worker, *worker.children(recursive=True)]
            training.cancel(ctx, tid)

    first = training.run_foreground(ctx, tid, on_poll)
    log = (Path(first["output_path"]) / "train.log").read_text()
    assert first["status"] == "cancelled", (first["message"], log[-3000:])
    assert first["resumable"] and "checkpoint" in first["message"]
    # The worker, the launcher and both ranks: all gone once the job says cancelled.
    assert len(seen["procs"]) >= 4
    gone, alive = psutil.wait_procs(seen["procs"], timeout=10)
    assert not alive
    kept = last_checkpoint(Path(first["output_path"]))
    assert kept is not None and 1 <= int(kept.name.split("-")[1]) < 10

    training.resume(ctx, tid)
    second = training.run_foreground(ctx, tid, lambda _job: None)
    out = Path(second["output_path"])
    log = (out / "train.log").read_text()
    assert second["status"] == "completed", (second["message"], log[-3000:])
    assert second["step"] == 10 and (out / "adapter_model.safetensors").is_file()
    steps = [h["step"] for h in json.loads((out / "metrics.json").read_text())["history"]]
    # One curve across both runs, each step once: rank 0 alone wrote it.
    assert steps == list(range(1, 11))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"num_processes": 0}, "num_processes=0 must be >= 1"),
        ({"launcher": "mpirun"}, "launcher='mpirun' is not one of"),
        ({"num_processes": 2}, "needs a launcher"),
    ],
)
def test_bad_launch_parameters_name_the_problem(values: dict, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        TrainParams.from_dict(values)


def test_more_processes_than_gpus_is_refused() -> None:
    import torch

    gpus = torch.cuda.device_count()
    p = TrainParams.from_dict({"launcher": "torchrun", "num_processes": gpus + 1, "device": "cuda"})
    with pytest.raises(InvalidInput, match=f"this machine has {gpus} CUDA device") as err:
        check_launch(p)
    assert "device='cpu'" in str(err.value)
    cpu = TrainParams.from_dict({"launcher": "torchrun", "num_processes": 3, "device": "cpu"})
    assert "3 CPU process(es)" in check_launch(cpu) and "testing" in check_launch(cpu)


def test_a_launcher_that_is_not_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules is how Python itself marks a module as not importable.
    monkeypatch.setitem(sys.modules, "accelerate", None)
    monkeypatch.setitem(sys.modules, "accelerate.commands.launch", None)
    p = TrainParams.from_dict({"launcher": "accelerate", "num_processes": 2})
    with pytest.raises(InvalidInput, match="needs the 'accelerate' package") as err:
        check_launch(p)
    assert "pip install accelerate" in str(err.value)


def test_launch_commands_use_the_real_launchers() -> None:
    two = TrainParams.from_dict({"launcher": "accelerate", "num_processes": 2})
    argv = launch_command(two, 7, cuda=False)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in argv and argv[-4:] == [
        "--module",
        "loraflow.training.worker",
        "7",
        "--launched",
    ]
    one = TrainParams.from_dict({"launcher": "accelerate", "num_processes": 1})
    assert "--cpu" in launch_command(one, 7, cuda=False)
    assert "--cpu" not in launch_command(one, 7, cuda=True)
    torchrun = TrainParams.from_dict({"launcher": "torchrun", "num_processes": 2})
    argv = launch_command(torchrun, 7, cuda=False)
    assert argv[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in argv


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP"), ("deepspeed.yaml", "DEEPSPEED")],
)
def test_shipped_accelerate_configs_parse_with_accelerate(name: str, kind: str) -> None:
    p = TrainParams.from_dict({"launcher": "accelerate", "num_processes": 1})
    assert kind in check_accelerate_config(EXAMPLES / name, p)
    argv = launch_command(p, 3, cuda=True, accelerate_config=EXAMPLES / name)
    assert argv[argv.index("--config_file") + 1] == str(EXAMPLES / name)


def test_bad_accelerate_config_is_refused(tmp_path: Path) -> None:
    p = TrainParams.from_dict({"launcher": "accelerate"})
    with pytest.raises(InvalidInput, match="does not exist"):
        check_accelerate_config(tmp_path / "nope.yaml", p)
    broken = tmp_path / "broken.yaml"
    broken.write_text("distributed_type: [not, a, type\n")
    with pytest.raises(InvalidInput, match="cannot be read by accelerate"):
        check_accelerate_config(broken, p)
    with pytest.raises(InvalidInput, match="launcher='torchrun'"):
        check_accelerate_config(
            EXAMPLES / "fsdp.yaml", TrainParams.from_dict({"launcher": "torchrun"})
        )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--num-processes", "2"], "needs a launcher"),
        (["--launcher", "mpirun"], "launcher='mpirun'"),
        (["--launcher", "torchrun", "--num-processes", "0"], "num_processes=0"),
        (["--launcher", "torchrun", "--accelerate-config", "x.yaml"], "launcher='torchrun'"),
    ],
)
def test_cli_refuses_bad_launch_options(tmp_path: Path, extra: list[str], expected: str) -> None:
    dataset = tmp_path / "a.json"
    dataset.write_text(json.dumps(rows(["apple"])))
    r = CliRunner().invoke(
        app,
        ["train", "--data", str(dataset), "--detach", "--data-dir", str(tmp_path / "d"), *extra],
    )
    output = " ".join(r.output.split())
    assert r.exit_code != 0 and expected in output and "Traceback" not in r.output


def test_cli_queues_a_launched_job(
    tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_DIR", str(model_cache))
    dataset = tmp_path / "a.json"
    dataset.write_text(json.dumps(rows(["apple"])))
    dd = str(tmp_path / "d")
    args = ["train", "--data", str(dataset), "--detach", "--data-dir", dd, "--task-name", "t"]
    r = CliRunner().invoke(app, [*args, "--launcher", "torchrun", "--num-processes", "2"])
    assert r.exit_code == 0, r.output
    assert "2 CPU process(es) via torchrun" in " ".join(r.output.split())
    shown = json.loads(CliRunner().invoke(app, ["tasks", "show", "1", "--data-dir", dd]).output)
    assert shown["training_params"]["launcher"] == "torchrun"
    assert shown["training_params"]["num_processes"] == 2


def test_api_takes_launcher_fields_and_refuses_bad_ones(tmp_path: Path, model_cache: Path) -> None:
    from fastapi.testclient import TestClient

    from loraflow.api.app import create_app
    from loraflow.services.runtime import Runtime, prepare_data_dir

    settings = Settings(data_dir=tmp_path / "d", cache_dir=model_cache, enable_ui=False)
    prepare_data_dir(settings)
    # Only the training routes are called: they use the settings and the database.
    rt = Runtime(settings, make_engine(settings.db_url), None, None, None)  # type: ignore[arg-type]
    with TestClient(create_app(settings, runtime=rt)) as client:
        up = client.post(
            "/api/simple-lora/upload-dataset",
            files={"file": ("a.json", json.dumps(rows(["apple"])), "application/json")},
        )
        assert up.status_code == 200, up.text
        form = {
            "task_name": "api-two",
            "base_model": "bundled:smollm2",
            "dataset_filename": up.json()["filename"],
        }
        bad = client.post(
            "/api/simple-lora/train", data={**form, "launcher": "mpirun", "num_processes": 2}
        )
        assert bad.status_code == 422 and "launcher='mpirun'" in bad.json()["detail"]
        bad = client.post(
            "/api/simple-lora/train",
            data={**form, "training_params": json.dumps({"num_processes": 2})},
        )
        assert bad.status_code == 422 and "needs a launcher" in bad.json()["detail"]
        ok = client.post(
            "/api/simple-lora/train", data={**form, "launcher": "torchrun", "num_processes": 2}
        )
        assert ok.status_code == 200, ok.text
        assert "2 CPU process(es) via torchrun" in ok.json()["message"]
        task = client.get(f"/api/simple-lora/tasks/{ok.json()['task_id']}").json()
        assert task["training_params"]["launcher"] == "torchrun"
        assert task["training_params"]["num_processes"] == 2
