"""Training through the HTTP API of a real server: bad inputs, queue, cancel, resume, restart."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, cli_argv, free_port

pytestmark = pytest.mark.integration

API = "/api/simple-lora"
GOOD = [
    {"instruction": f"What is the secret word {i}?", "input": "", "output": "It is pineapple."}
    for i in range(10)
]
# Small and few steps so the whole lifecycle stays around two minutes on a laptop CPU.
FAST = {"batch_size": 1, "grad_accum": 1, "max_len": 48, "max_steps": 8, "val_split": 0.2}


class Instance:
    """A server on one data dir that the test can restart."""

    def __init__(self, data: Path, model_cache: Path) -> None:
        self.data, self.model_cache = data, model_cache
        self.server: Server | None = None

    def start(self) -> httpx.Client:
        port = free_port()
        env = {
            "CACHE_DIR": str(self.model_cache),
            "LOAD_LOCAL_MODEL": "false",
            "AUTO_INGEST_SAMPLE": "false",
            "MAX_UPLOAD_MB": "0.05",
        }
        self.server = Server(self.data, env, cli_argv("serve", "--port", str(port)), port)
        self.server.wait_ready()
        return httpx.Client(base_url=self.server.url, timeout=60)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path_factory.mktemp("train-server"), model_cache)
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture(scope="module")
def client(instance: Instance) -> Iterator[httpx.Client]:
    with instance.start() as c:
        yield c


def upload(client: httpx.Client, name: str, body: bytes, kind: str = "alpaca") -> httpx.Response:
    return client.post(
        f"{API}/upload-dataset", files={"file": (name, body)}, data={"dataset_type": kind}
    )


def train(client: httpx.Client, name: str, dataset: str, **params: Any) -> httpx.Response:
    form = {
        "task_name": name,
        "base_model": "bundled:smollm2",
        "dataset_filename": dataset,
        "dataset_type": "alpaca",
        "training_params": json.dumps({**FAST, **params}),
    }
    return client.post(f"{API}/train", data=form)


def wait_for(
    client: httpx.Client, tid: int, ok: Callable[[dict], bool], timeout: float = 240
) -> dict:
    deadline = time.monotonic() + timeout
    task: dict = {}
    while time.monotonic() < deadline:
        task = client.get(f"{API}/tasks/{tid}").json()
        if ok(task):
            return task
        time.sleep(0.5)
    raise AssertionError(f"task {tid} did not get there in {timeout}s: {task}")


def test_models_lists_the_bundled_model(client: httpx.Client) -> None:
    body = client.get(f"{API}/models").json()
    assert body["count"] == len(body["models"]) >= 1
    smol = next(m for m in body["models"] if m["name"] == "bundled:smollm2")
    assert smol["size_mb"] > 10 and smol["path"]


@pytest.mark.parametrize(
    ("name", "body", "kind", "status", "expected"),
    [
        ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{oops\n', "alpaca", 422, "line 2"),
        ("bad.json", b'[{"instruction": "a", "output": "b"},\n {]', "alpaca", 422, "line 2"),
        (
            "chat.json",
            b'[{"conversations": [{"from": "human", "value": "x"}]}]',
            "alpaca",
            422,
            "sharegpt",
        ),
        ("empty.json", b"", "alpaca", 422, "empty"),
        ("none.json", b"[]", "alpaca", 422, "no usable records"),
        ("half.json", b'[{"instruction": "a"}]', "alpaca", 422, "missing field 'output'"),
        (
            "big.json",
            b"[" + b'{"instruction": "a", "output": "b"},' * 3000 + b"]",
            "alpaca",
            413,
            "upload limit",
        ),
        ("table.csv", b"a,b", "alpaca", 415, ".csv"),
        ("a.json", json.dumps(GOOD).encode(), "llama", 422, "alpaca, sharegpt, raw"),
    ],
)
def test_bad_uploads_are_explained(
    client: httpx.Client,
    instance: Instance,
    name: str,
    body: bytes,
    kind: str,
    status: int,
    expected: str,
) -> None:
    before = sorted((instance.data / "uploads").glob("*"))
    r = upload(client, name, body, kind)
    assert r.status_code == status, r.text
    assert expected in r.json()["detail"]
    assert "Traceback" not in r.text
    # A rejected upload leaves nothing behind.
    assert sorted((instance.data / "uploads").glob("*")) == before


def test_upload_names_are_generated_and_never_overwrite(
    client: httpx.Client, instance: Instance
) -> None:
    first = upload(client, "../../evil.json", json.dumps(GOOD).encode()).json()
    second = upload(client, "../../evil.json", json.dumps(GOOD[:3]).encode()).json()
    for body in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}\.json", body["filename"])
        assert Path(body["path"]).parent == instance.data / "uploads"
        assert body["original_filename"] == "evil.json" and body["size_mb"] > 0
        assert "10 alpaca examples" in first["message"]
    assert first["filename"] != second["filename"]
    assert not (instance.data.parent / "evil.json").exists()


def test_bad_train_requests_are_explained(client: httpx.Client) -> None:
    ds = upload(client, "ok.json", json.dumps(GOOD).encode()).json()["filename"]
    r = client.post(
        f"{API}/train",
        data={"task_name": "x", "base_model": "no/such-model", "dataset_filename": ds},
    )
    assert r.status_code == 404 and "bundled:smollm2" in r.json()["detail"]
    r = train(client, "y", "../loraflow.db")
    assert r.status_code == 404 and "was not uploaded" in r.json()["detail"]
    assert train(client, "../escape", ds).status_code == 422
    r = train(client, "z", ds, rank=0)
    assert r.status_code == 422 and "rank=0" in r.json()["detail"]


def test_a_dataset_preview_shows_what_the_model_reads_and_is_trained_on(
    client: httpx.Client,
) -> None:
    rows = [
        {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
        {"instruction": "Summarise: " + "the tide comes in " * 40, "output": "Tides."},
    ]
    stored = upload(client, "preview.json", json.dumps(rows).encode()).json()["filename"]
    r = client.post(f"{API}/datasets/{stored}/preview", json={"max_len": 64, "rows": 2})
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["examples"] == shown["sequences"] == 2 and shown["max_len"] == 64
    first = shown["rows"][0]
    read = "".join(s["text"] for s in first["segments"] if not s["trained"])
    trained = "".join(s["text"] for s in first["segments"] if s["trained"])
    # The chat template is applied, the instruction is only read, the answer is trained on.
    assert "<|im_start|>user" in read and "Name the capital of France." in read
    assert trained.startswith("Paris.") and "France" not in trained
    assert not first["cut"] and first["trained_tokens"] > 0
    # The long row is over max_len: counted, flagged and in the histogram's last bin.
    assert shown["rows"][1]["cut"] and shown["rows"][1]["tokens"] > 64
    assert shown["tokens"]["over_max_len"] == 1
    assert shown["histogram"][-1] == {"from": 65, "to": None, "count": 1}
    assert sum(b["count"] for b in shown["histogram"]) == 2

    missing = client.post(f"{API}/datasets/{'0' * 32}.json/preview", json={})
    assert missing.status_code == 404
    wrong = client.post(f"{API}/datasets/{stored}/preview", json={"max_len": 0})
    assert wrong.status_code == 422


def test_job_lifecycle_queue_cancel_resume_and_restart(
    client: httpx.Client, instance: Instance
) -> None:
    ds = upload(client, "secret.json", json.dumps(GOOD).encode()).json()["filename"]
    r = train(client, "secret-job", ds)
    assert r.status_code == 200, r.text
    job = r.json()
    assert set(job) == {"task_id", "task_name", "status", "message"}
    assert job["status"] == "pending"
    tid = job["task_id"]
    dup = train(client, "secret-job", ds)
    assert dup.status_code == 422 and "already used" in dup.json()["detail"]
    # max_len so small that no answer token fits: this job fails when it runs.
    doomed = train(client, "doomed", ds, max_len=16).json()["task_id"]

    # The step counter moves before the step's loss is logged: wait for both.
    running = wait_for(
        client,
        tid,
        lambda t: t["status"] == "running" and t["step"] >= 1 and t["loss"] is not None,
    )
    assert running["total_steps"] == 8 and 0 < running["progress"] < 100
    assert "CPU" in running["message"] and running["loss"] is not None
    assert client.get(f"{API}/tasks/{doomed}").json()["status"] == "pending"  # one at a time

    assert client.post(f"{API}/tasks/{tid}/cancel").status_code == 200
    cancelled = wait_for(client, tid, lambda t: t["status"] == "cancelled", timeout=90)
    assert cancelled["resumable"] and "checkpoint" in cancelled["message"]
    checkpoints = list((Path(cancelled["output_path"]) / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    curve = client.get(f"{API}/tasks/{tid}/metrics").json()
    assert curve["loss"] and all("loss" in h for h in curve["loss"])

    # The queue moves on: the doomed job runs and fails with a readable reason.
    failed = wait_for(client, doomed, lambda t: t["status"] == "failed")
    assert "max_len" in failed["error"] and "Traceback" not in failed["error"]

    assert client.post(f"{API}/tasks/{tid}/resume").json()["status"] == "pending"
    stopped_at = cancelled["step"]
    wait_for(client, tid, lambda t: t["status"] == "running" and t["step"] > stopped_at)

    # Restart the service mid-job: the job is kept, marked failed and resumable.
    client.close()
    instance.stop()
    with instance.start() as again:
        task = again.get(f"{API}/tasks/{tid}").json()
        assert task["status"] == "failed" and task["resumable"], task
        assert "resume" in task["message"]
        assert again.post(f"{API}/tasks/{tid}/resume").status_code == 200
        done = wait_for(again, tid, lambda t: t["status"] in ("completed", "failed"))
        assert done["status"] == "completed", done
        assert done["progress"] == 100.0 and done["completed_at"]
        out = Path(done["output_path"])
        assert out.parent == instance.data / "Models" / "LoRA"
        assert out.name.startswith("secret-job_")
        for name in ("adapter_model.safetensors", "adapter_config.json", "loraflow.json"):
            assert (out / name).is_file()
        names = [t["task_name"] for t in again.get(f"{API}/tasks").json()["tasks"]]
        assert {"secret-job", "doomed"} <= set(names)
        curve = again.get(f"{API}/tasks/{tid}/metrics").json()
        assert curve["eval_loss"]
        # The finished adapter is registered under the task's name, ready to serve.
        rec = again.get("/api/adapters/secret-job").json()
        assert rec["source"] == "training" and rec["path"] == str(out)
        assert rec["compatibility"]["compatible"] is True
