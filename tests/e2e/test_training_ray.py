"""TRAINING_EXECUTOR=ray on a real local Ray cluster, driven through the HTTP API.

The cluster is a head node (no `trainer` resource) and a worker node with `trainer: 2`;
jobs ask for `trainer: 1`, so every job must land on the worker node. Covered: placement,
progress and an adapter that vanilla PEFT loads and the service serves by name; cancel; the
worker node killed mid-job (failed and resumable, then resumed on a new node to the same
loss as an uninterrupted run); a service restart while a job trains on the cluster; and two
services sharing PostgreSQL that run each of four queued jobs exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, cli_argv, free_port

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'loraflow[ray]'")

from tests.e2e.ray_cluster import RayCluster  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

API = "/api/simple-lora"
ROWS = [
    {"instruction": f"What is the secret word {i}?", "input": "", "output": f"It is word{i}."}
    for i in range(10)
]
# 8 training rows, batch 1, 3 epochs: 24 steps with a checkpoint after each epoch, so a
# node killed mid-epoch loses steps that resume must replay.
PARAMS = {
    "batch_size": 1,
    "grad_accum": 1,
    "max_len": 48,
    "epochs": 3,
    "lr": 5e-3,
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "val_split": 0.2,
}
# As tests/unit/training/test_faults_worker_kill.py: a resumed run replays the lost steps.
EVAL_LOSS_RTOL = 1e-3
LEASE_S = "6"


def ray_env(cluster: RayCluster) -> dict[str, str]:
    return {
        "TRAINING_EXECUTOR": "ray",
        "RAY_ADDRESS": cluster.address,
        "RAY_NUM_CPUS": "1",
        "RAY_RESOURCES": json.dumps({"trainer": 1}),
        "TRAINING_LEASE_SECONDS": LEASE_S,
        "AUTO_INGEST_SAMPLE": "false",
    }


class Instance:
    """A service on one data dir that the test can restart."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data, self.env = data, env
        self.server: Server | None = None

    def launch(self) -> None:
        """Start the server process without waiting for it (others may start meanwhile)."""
        port = free_port()
        self.server = Server(self.data, self.env, cli_argv("serve", "--port", str(port)), port)

    def ready(self) -> httpx.Client:
        """Wait for the launched server to answer; a client of it."""
        assert self.server is not None
        self.server.wait_ready()
        return httpx.Client(base_url=self.server.url, timeout=120)

    def start(self) -> httpx.Client:
        self.launch()
        return self.ready()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory, server_env: dict[str, str]
) -> Iterator[tuple[RayCluster, Instance]]:
    """The cluster and the module's service, started side by side.

    The service needs the cluster only once it runs a job, so it imports and loads its model
    while the Ray nodes start; tests wait for it through `client`.
    """
    c = RayCluster()
    inst = Instance(tmp_path_factory.mktemp("ray-server"), {**server_env, **ray_env(c)})
    try:
        inst.launch()
        c.start_head(num_cpus=1)
        c.add_worker("a", num_cpus=2, resources={"trainer": 2})
        yield c, inst
    finally:
        inst.stop()
        c.stop()


@pytest.fixture(scope="module")
def cluster(started: tuple[RayCluster, Instance]) -> RayCluster:
    return started[0]


@pytest.fixture(scope="module")
def driver(cluster: RayCluster) -> Iterator[Any]:
    """This test process connected to the cluster, to look at its actors."""
    ray.init(address=cluster.address, namespace="loraflow", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def instance(started: tuple[RayCluster, Instance]) -> Instance:
    return started[1]


@pytest.fixture(scope="module")
def client(instance: Instance) -> Iterator[httpx.Client]:
    with instance.ready() as c:
        yield c


@pytest.fixture(scope="module")
def dataset(client: httpx.Client) -> str:
    r = client.post(
        f"{API}/upload-dataset",
        files={"file": ("secret.json", json.dumps(ROWS).encode())},
        data={"dataset_type": "alpaca"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["filename"])


def train(client: httpx.Client, name: str, dataset: str, **params: Any) -> int:
    form = {
        "task_name": name,
        "base_model": "bundled:smollm2",
        "dataset_filename": dataset,
        "dataset_type": "alpaca",
        "training_params": json.dumps({**PARAMS, **params}),
    }
    r = client.post(f"{API}/train", data=form)
    assert r.status_code == 200, r.text
    return int(r.json()["task_id"])


def wait_for(
    client: httpx.Client, tid: int, ok: Callable[[dict], bool], timeout: float = 300
) -> dict:
    deadline = time.monotonic() + timeout
    task: dict = {}
    while time.monotonic() < deadline:
        task = client.get(f"{API}/tasks/{tid}").json()
        if ok(task):
            return task
        if task["status"] in ("completed", "failed", "cancelled"):
            break  # it will not get there any more
        time.sleep(0.3)
    raise AssertionError(f"task {tid} did not get there (in {timeout}s): {task}")


def final_eval_loss(client: httpx.Client, tid: int) -> float:
    curve = client.get(f"{API}/tasks/{tid}/metrics").json()
    return float(curve["eval_loss"][-1]["eval_loss"])


def node_id(task: dict) -> str:
    return str(task["node"]).split("/")[-1]


@pytest.fixture(scope="module")
def baseline(client: httpx.Client, dataset: str, cluster: RayCluster) -> dict:
    """An uninterrupted job, followed while it runs."""
    tid = train(client, "ray-whole", dataset)
    running = wait_for(client, tid, lambda t: t["step"] >= 1 and t["loss"] is not None)
    done = wait_for(client, tid, lambda t: t["status"] in ("completed", "failed"))
    assert done["status"] == "completed", done
    return {"running": running, "done": done, "eval_loss": final_eval_loss(client, tid)}


def test_a_job_runs_on_the_node_with_the_resource_and_its_adapter_is_served(
    client: httpx.Client, baseline: dict, cluster: RayCluster, smollm2_dir: Path
) -> None:
    running, done = baseline["running"], baseline["done"]
    # Placed on the worker node, the only one with the `trainer` resource it asked for.
    assert running["executor"] == "ray" and node_id(running) == cluster.node_id("a")
    assert running["resources"] == {"CPU": 1.0, "GPU": 0.0, "trainer": 1.0}
    assert running["ray_id"] and running["total_steps"] == 24
    assert 0 < running["progress"] < 100 and "training on" in running["message"]
    assert done["progress"] == 100.0 and done["step"] == 24 and done["eval_loss"] is not None
    curve = client.get(f"{API}/tasks/{done['task_id']}/metrics").json()
    assert len(curve["loss"]) >= 3 and curve["eval_loss"]

    # Vanilla PEFT loads the adapter the cluster wrote.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, done["output_path"])
    assert any("lora_A" in name for name, _ in model.named_parameters())

    # Registered under the task's name and served by it.
    rec = client.get("/api/adapters/ray-whole").json()
    assert rec["source"] == "training" and rec["path"] == done["output_path"]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "ray-whole", "messages": [{"role": "user", "content": "Secret word 3?"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_the_configuration_check_finds_a_node_for_the_jobs(
    cluster: RayCluster, driver: Any
) -> None:
    from loraflow.training.ray_executor import check_cluster

    ok, detail = check_cluster(cluster.address, {"CPU": 1, "trainer": 1})
    assert ok and "2 node(s), 1 with CPU=1, trainer=1" in detail, detail
    ok, detail = check_cluster(cluster.address, {"CPU": 1, "GPU": 1})
    assert not ok and "none with CPU=1, GPU=1" in detail, detail


def test_cancel_stops_the_ray_task_and_keeps_its_checkpoint(
    client: httpx.Client, dataset: str, driver: Any, instance: Instance
) -> None:
    tid = train(client, "ray-cancel", dataset, epochs=50)
    running = wait_for(client, tid, lambda t: t["status"] == "running" and t["step"] >= 2)
    # `loraflow status` says where it runs: executor, node, resources, Ray actor.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLOW")}
    env.update(LORAFLOW_DATA_DIR=str(instance.data), API_PORT=str(free_port()), COLUMNS="400")
    shown = subprocess.run(cli_argv("status"), env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith(f"running  #{tid}"))
    assert f"ray; node {running['node']}" in line and "trainer=1" in line, line
    assert f"actor {running['ray_id']}" in line
    assert client.post(f"{API}/tasks/{tid}/cancel").status_code == 200
    cancelled = wait_for(client, tid, lambda t: t["status"] == "cancelled", timeout=60)
    assert cancelled["resumable"] and "checkpoint" in cancelled["message"], cancelled
    assert list((Path(cancelled["output_path"]) / "checkpoints").glob("checkpoint-*"))
    # The actor is gone from the cluster: nothing trains on.
    deadline = time.monotonic() + 30
    while True:
        try:
            driver.get_actor(f"loraflow-job-{tid}", namespace="loraflow")
        except ValueError:
            break
        assert time.monotonic() < deadline, "the cancelled job's actor still runs"
        time.sleep(0.5)


def test_a_job_of_two_processes_runs_as_two_ray_train_workers(
    client: httpx.Client, dataset: str, cluster: RayCluster, driver: Any
) -> None:
    """launcher + num_processes under Ray: a TorchTrainer with that many DDP workers."""
    tid = train(client, "ray-ddp", dataset, launcher="torchrun", num_processes=2, epochs=1)
    done = wait_for(client, tid, lambda t: t["status"] in ("completed", "failed", "cancelled"))
    assert done["status"] == "completed", done
    assert done["resources"] == {"CPU": 1.0, "GPU": 0.0, "trainer": 1.0, "workers": 2.0}
    assert node_id(done) == cluster.node_id("a")  # rank 0's node, with the resource
    # 8 training rows, batch 1: each of the 2 ranks takes half, so an epoch is 4 steps.
    assert done["step"] == done["total_steps"] == 4
    assert Path(done["output_path"], "adapter_model.safetensors").is_file()
    assert not Path(done["output_path"], "ray_train").exists()  # not in the adapter's folder
    assert client.get(f"{API}/tasks/{tid}/metrics").json()["eval_loss"]
    # The run gives its workers' resources back to the cluster.
    deadline = time.monotonic() + 60
    while driver.available_resources().get("trainer", 0) < 2:
        pgs = [(p["state"], p["bundles"]) for p in driver.util.placement_group_table().values()]
        assert time.monotonic() < deadline, (driver.available_resources(), pgs)
        time.sleep(0.5)


def test_a_dead_node_fails_the_job_resumable_and_resume_matches_an_uninterrupted_run(
    client: httpx.Client, dataset: str, baseline: dict, cluster: RayCluster
) -> None:
    from loraflow.training.trainer import last_checkpoint

    tid = train(client, "ray-node-dies", dataset)

    def past_a_checkpoint(task: dict) -> bool:
        ckpt = last_checkpoint(Path(task["output_path"]))
        return ckpt is not None and int(ckpt.name.split("-")[1]) < task["step"]

    before = wait_for(client, tid, past_a_checkpoint)
    assert node_id(before) == cluster.node_id("a")
    cluster.kill_worker("a")
    failed = wait_for(client, tid, lambda t: t["status"] != "running", timeout=120)
    assert failed["status"] == "failed" and failed["resumable"], failed
    assert "node" in failed["error"] and "died" in failed["error"], failed["error"]
    assert "resume" in failed["message"]

    # Another node joins; the job resumes there from the checkpoint the dead node wrote.
    cluster.add_worker("b", num_cpus=2, resources={"trainer": 2})
    assert client.post(f"{API}/tasks/{tid}/resume").status_code == 200
    done = wait_for(client, tid, lambda t: t["status"] in ("completed", "failed", "cancelled"))
    assert done["status"] == "completed", done
    assert node_id(done) == cluster.node_id("b") and done["step"] == 24
    assert final_eval_loss(client, tid) == pytest.approx(baseline["eval_loss"], rel=EVAL_LOSS_RTOL)


def test_a_service_restart_does_not_fail_a_job_alive_on_the_cluster(
    client: httpx.Client, dataset: str, instance: Instance, cluster: RayCluster, driver: Any
) -> None:
    if not cluster.workers:
        cluster.add_worker("c", num_cpus=2, resources={"trainer": 2})
    # Long enough to outlast the restart; it is cancelled once the new service follows it.
    tid = train(client, "ray-restart", dataset, epochs=40)
    before = wait_for(client, tid, lambda t: t["status"] == "running" and t["step"] >= 1)
    instance.stop()  # the job's actor trains on, renewing the job's lease itself
    with instance.start() as again:
        task = again.get(f"{API}/tasks/{tid}").json()
        assert task["status"] == "running" and task["error"] is None, task
        assert task["node"] == before["node"] and task["ray_id"] == before["ray_id"]
        assert instance.server is not None
        assert f"following training job {tid}" in instance.server.log()
        moved = wait_for(again, tid, lambda t: t["step"] > task["step"])
        assert moved["status"] == "running"
        # The new service passes a cancel on to the actor it took over.
        assert again.post(f"{API}/tasks/{tid}/cancel").status_code == 200
        done = wait_for(again, tid, lambda t: t["status"] == "cancelled", timeout=60)
        assert done["resumable"] and "checkpoint" in done["message"], done
    deadline = time.monotonic() + 30
    while True:
        try:
            driver.get_actor(f"loraflow-job-{tid}", namespace="loraflow")
        except ValueError:
            break
        assert time.monotonic() < deadline, "the cancelled job's actor still runs"
        time.sleep(0.5)


POSTGRES_URL = os.environ.get("LORAFLOW_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL, reason="PostgreSQL is not running (scripts/postgres.sh)")
def test_two_services_sharing_postgresql_run_each_of_four_jobs_once(
    tmp_path: Path, cluster: RayCluster, server_env: dict[str, str], dataset: str
) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(str(POSTGRES_URL))
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()
    if not cluster.workers:
        cluster.add_worker("d", num_cpus=2, resources={"trainer": 2})
    env = {
        **server_env,
        **ray_env(cluster),
        "DATABASE_URL": str(POSTGRES_URL),
        "LOAD_LOCAL_MODEL": "false",
        "RAY_MAX_JOBS": "1",  # each service holds one job at a time: both must take some
    }
    one, two = Instance(tmp_path / "one", env), Instance(tmp_path / "two", env)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    try:
        one.launch()  # both start at once: each takes seconds to import and migrate
        two.launch()
        a = one.ready()
        b = two.ready()
        r = a.post(
            f"{API}/upload-dataset",
            files={"file": ("tiny.json", json.dumps(ROWS[:4]).encode())},
            data={"dataset_type": "alpaca"},
        )
        ds = r.json()["filename"]
        # Two rounds of two at once: both services claim from the queue together at the start
        # and again while each one's first actor ends.
        ids = [train(a, f"shared-{i}", ds, epochs=1, max_steps=2, val_split=0.0) for i in range(4)]
        done = [wait_for(b, tid, lambda t: t["status"] in ("completed", "failed")) for tid in ids]
        assert [t["status"] for t in done] == ["completed"] * 4, done
        # Each job's actor started exactly once (each start writes one line to its log).
        for task in done:
            log = (Path(task["output_path"]) / "train.log").read_text()
            assert log.count("started on Ray node") == 1, (task["task_name"], log)
        engine = sa.create_engine(str(POSTGRES_URL))
        with engine.connect() as conn:
            owners = conn.execute(sa.text("SELECT DISTINCT owner FROM simple_lora_tasks")).all()
        engine.dispose()
        assert len(owners) == 2, owners  # both services took jobs from the one queue
        a.close()
        b.close()
    finally:
        one.stop()
        two.stop()
