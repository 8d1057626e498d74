"""`loraflow serve --workers 2`: what one worker changes, every worker sees on its next request.

Every response names the worker process that sent it (`X-Loraflow-Worker`). A check sends
requests on fresh connections until both workers have answered, and checks every answer,
each worker's first one included: nothing is retried until it shows up. Also: concurrent
first requests for one adapter on one worker and on both, and one training job at a time
across the workers' job queues.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import make_adapter, start_server
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

WORKER = "x-loraflow-worker"
PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
    smollm2_dir: Path,
    stopped_port: int,
) -> Iterator[Server]:
    env = {
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "MAX_NEW_TOKENS": "8",
    }
    with start_server(tmp_path_factory.mktemp("workers"), env, ("serve", "--workers", "2")) as srv:
        _wait_for_workers(srv)
        yield srv


@pytest.fixture(scope="module")
def bots(two_workers: Server, smollm2_dir: Path) -> dict[str, Path]:
    """Two adapter folders in the server's data dir that answer differently; neither loaded."""
    from safetensors.torch import load_file, save_file

    root = two_workers.data_dir / "made"
    make_adapter(smollm2_dir, root / "bot")
    flipped = shutil.copytree(root / "bot", root / "flipped")
    weights = load_file(flipped / "adapter_model.safetensors")
    flip = {k: -v if "lora_B" in k else v for k, v in weights.items()}
    save_file(flip, flipped / "adapter_model.safetensors")
    return {"bot": root / "bot", "flipped": flipped}


@pytest.fixture(scope="module")
def base_answer(two_workers: Server) -> str:
    return _one_answer(two_workers, "base")


def _worker(r: httpx.Response) -> int:
    return int(r.headers[WORKER])


def _wait_for_workers(srv: Server, n: int = 2, timeout: float = 300) -> None:
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < n and time.monotonic() < deadline:
        # Fresh connections so the kernel can hand requests to either worker.
        r = httpx.get(f"{srv.url}/model_info", timeout=60)
        if r.status_code == 200:
            assert r.json()["worker_pid"] == _worker(r)
            pids.add(_worker(r))
        else:
            time.sleep(0.5)
    assert len(pids) == n, f"only saw workers {pids}:\n{srv.log()}"


def _until_every_worker(
    send: Callable[[], httpx.Response], n: int = 2, tries: int = 200
) -> dict[int, list[httpx.Response]]:
    """Every response, by the worker that sent it, once each of `n` workers sent one."""
    seen: dict[int, list[httpx.Response]] = {}
    for _ in range(tries):
        r = send()
        seen.setdefault(_worker(r), []).append(r)
        if len(seen) == n:
            return seen
    raise AssertionError("requests never reached both workers")


def _from_every_worker(srv: Server, path: str) -> dict[int, dict]:
    seen = _until_every_worker(lambda: httpx.get(f"{srv.url}{path}", timeout=60))
    return {pid: rs[0].json() for pid, rs in seen.items()}


def _chat(srv: Server, model: str) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": 6, "temperature": 0}
    return httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)


def _one_answer(srv: Server, model: str) -> str:
    """The answer for `model`: every response a success, the same text from both workers."""
    texts = set()
    for rs in _until_every_worker(lambda: _chat(srv, model)).values():
        for r in rs:
            assert r.status_code == 200, r.text
            texts.add(r.json()["choices"][0]["message"]["content"])
    assert len(texts) == 1, texts
    return texts.pop()


def _refused_by_every_worker(srv: Server, model: str) -> None:
    for rs in _until_every_worker(lambda: _chat(srv, model)).values():
        assert [r.status_code for r in rs] == [404] * len(rs)


def test_switch_through_one_worker_is_seen_by_all(two_workers: Server) -> None:
    r = httpx.post(f"{two_workers.url}/switch_model", json={"use_lora": False}, timeout=60)
    assert r.status_code == 200
    infos = _from_every_worker(two_workers, "/model_info")
    assert {i["engine"] for i in infos.values()} == {"ollama"}
    httpx.post(f"{two_workers.url}/switch_model", json={"engine": "local"}, timeout=60)
    infos = _from_every_worker(two_workers, "/model_info")
    assert {i["model_used"] for i in infos.values()} == {"base"}


def test_sample_is_ingested_once_and_uploads_are_seen_by_all(two_workers: Server) -> None:
    r = httpx.post(
        f"{two_workers.url}/documents",
        files={"files": ("shared.md", b"# Shared\nBoth workers see this note.", "text/markdown")},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    listings = _from_every_worker(two_workers, "/documents")
    for body in listings.values():
        sources = [d["source"] for d in body["documents"]]
        assert "shared.md" in sources and "overview.md" in sources
        assert len(sources) == len(set(sources))  # the sample was not ingested twice


def test_registered_adapter_and_deployment_reach_every_worker_on_its_next_request(
    two_workers: Server, bots: dict[str, Path], base_answer: str
) -> None:
    srv = two_workers
    r = httpx.post(
        f"{srv.url}/api/adapters/register",
        json={"path": str(bots["bot"]), "name": "shared-bot"},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    tuned = _one_answer(srv, "shared-bot")  # each worker attaches it on its first request
    assert tuned != base_answer
    r = httpx.post(
        f"{srv.url}/api/adapters/deploy",
        json={"target": "prod", "adapter": "shared-bot", "force": True},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert _one_answer(srv, "prod") == tuned
    assert httpx.delete(f"{srv.url}/api/adapters/deployments/prod", timeout=60).is_success
    _refused_by_every_worker(srv, "prod")


def test_load_lora_adapter_through_one_worker_changes_every_worker(
    two_workers: Server, bots: dict[str, Path], base_answer: str
) -> None:
    srv = two_workers

    def load(path: Path, inplace: bool = False) -> None:
        body = {"lora_name": "hot-bot", "lora_path": str(path), "load_inplace": inplace}
        r = httpx.post(f"{srv.url}/v1/load_lora_adapter", json=body, timeout=120)
        assert r.status_code == 200, r.text

    load(bots["bot"])
    first = _one_answer(srv, "hot-bot")
    assert first != base_answer
    load(bots["flipped"], inplace=True)
    assert _one_answer(srv, "hot-bot") not in (first, base_answer)
    r = httpx.post(f"{srv.url}/v1/unload_lora_adapter", json={"lora_name": "hot-bot"})
    assert r.status_code == 200, r.text
    for body in _from_every_worker(srv, "/v1/models").values():
        assert "hot-bot" not in [m["id"] for m in body["data"]]
    _refused_by_every_worker(srv, "hot-bot")


def _pinned(srv: Server, per_worker: int = 2, tries: int = 100) -> list[tuple[int, httpx.Client]]:
    """Open keep-alive connections, `per_worker` to each of the two workers."""
    kept: dict[int, list[httpx.Client]] = {}
    for _ in range(tries):
        client = httpx.Client(base_url=srv.url, timeout=300)
        pid = _worker(client.get("/model_info"))
        if len(kept.setdefault(pid, [])) < per_worker:
            kept[pid].append(client)
        else:
            client.close()
        if len(kept) == 2 and all(len(cs) == per_worker for cs in kept.values()):
            return [(pid, c) for pid, cs in kept.items() for c in cs]
    raise AssertionError(f"connections reached workers {sorted(kept)} only")


def test_first_requests_for_one_adapter_race_on_one_worker_and_on_both(
    two_workers: Server, bots: dict[str, Path]
) -> None:
    srv = two_workers
    race = shutil.copytree(bots["bot"], bots["bot"].parent / "race-bot")
    r = httpx.post(f"{srv.url}/api/adapters/register", json={"path": str(race)}, timeout=120)
    assert r.status_code == 201, r.text
    conns = _pinned(srv)  # two requests on each worker, all four at once
    start = threading.Barrier(len(conns))
    body = {"model": "race-bot", "messages": PROMPT, "max_tokens": 6, "temperature": 0}

    def send(conn: tuple[int, httpx.Client]) -> tuple[int, httpx.Response]:
        start.wait()
        return conn[0], conn[1].post("/v1/chat/completions", json=body)

    try:
        with ThreadPoolExecutor(len(conns)) as pool:
            results = list(pool.map(send, conns))
        for pid, r in results:
            assert r.status_code == 200, r.text
            assert _worker(r) == pid  # the connection stayed with its worker
        texts = {r.json()["choices"][0]["message"]["content"] for _, r in results}
        assert len(texts) == 1
        # Each worker attached it once, under its own name.
        for listed in _from_every_worker(srv, "/v1/models").values():
            names = [m["id"] for m in listed["data"]]
            assert names.count("race-bot") == 1 and not any("race-bot@" in n for n in names)
    finally:
        for _, client in conns:
            client.close()


def test_jobs_queued_through_both_workers_train_one_at_a_time(two_workers: Server) -> None:
    """Each worker runs a job queue: the two jobs are claimed by both, yet never overlap."""
    api = f"{two_workers.url}/api/simple-lora"
    rows = [
        {"instruction": f"What is the secret word {i}?", "input": "", "output": "Pineapple."}
        for i in range(4)
    ]
    up = httpx.post(
        f"{api}/upload-dataset",
        files={"file": ("tiny.json", json.dumps(rows).encode())},
        data={"dataset_type": "alpaca"},
        timeout=60,
    )
    assert up.status_code == 200, up.text
    params = {"batch_size": 1, "grad_accum": 1, "max_len": 48, "max_steps": 1, "val_split": 0}
    ids = []
    for name in ("first-job", "second-job"):
        form = {
            "task_name": name,
            "base_model": "bundled:smollm2",
            "dataset_filename": up.json()["filename"],
            "dataset_type": "alpaca",
            "training_params": json.dumps(params),
        }
        r = httpx.post(f"{api}/train", data=form, timeout=60)
        assert r.status_code == 200, r.text
        ids.append(r.json()["task_id"])
    deadline = time.monotonic() + 600
    while True:
        tasks = [httpx.get(f"{api}/tasks/{i}", timeout=60).json() for i in ids]
        if all(t["status"] in ("completed", "failed", "cancelled") for t in tasks):
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(1)
    assert [t["status"] for t in tasks] == ["completed", "completed"], tasks
    spans = sorted((datetime.fromisoformat(t["started_at"]), t) for t in tasks)
    (_, one), (second_start, _) = spans
    assert datetime.fromisoformat(one["completed_at"]) <= second_start, tasks
