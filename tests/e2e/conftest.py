"""One real server per test run: bundled SmolLM2 + a PEFT adapter made here + MiniLM + FAISS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, cli_argv, free_port, uvicorn_argv
from tests.e2e.ui_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, open_ui

ADAPTER_NAME = "support-bot"


def make_adapter(base_dir: Path, out_dir: Path, seed: int = 0, rank: int = 8) -> None:
    """A real PEFT LoRA adapter on SmolLM2 with non-zero weights, so it changes the output.

    Adapters made with different seeds differ (a merge refuses two copies of one adapter).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=rank, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def stopped_port() -> Iterator[int]:
    """A loopback port with nothing listening (an Ollama that is down).

    The port stays bound (never listening) for the whole run, so connections to it are refused
    and no server started later in the run can be handed the same port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture(scope="session")
def server_env(model_cache: Path, stopped_port: int) -> dict[str, str]:
    """Settings every test server shares: the test model cache, a stopped Ollama, short answers."""
    return {
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "OLLAMA_TIMEOUT": "3",
        "MAX_NEW_TOKENS": "24",
        "TEMPERATURE": "0",
    }


def llamacpp_env(model_cache: Path, engine: str) -> dict[str, str]:
    """A server on the bundled GGUF with LOCAL_ENGINE `engine` (llamacpp or hybrid): greedy,
    short answers, nothing else loaded, no Ollama."""
    return {
        "CACHE_DIR": str(model_cache),
        "LOCAL_ENGINE": engine,
        "HYBRID_PROMPT_TOKENS": "128",
        "LLAMACPP_THREADS": "1",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "OLLAMA_TIMEOUT": "3",
        "MAX_NEW_TOKENS": "24",
        "TEMPERATURE": "0",
        "AUTO_INGEST_SAMPLE": "false",
        "ENABLE_UI": "false",
    }


@contextmanager
def start_server(
    data: Path,
    env: dict[str, str],
    args: tuple[str, ...] = ("serve", "--use-lora", "true"),
    *,
    uvicorn: bool = False,
) -> Iterator[Server]:
    """A `loraflow <args>` server on a free loopback port with data dir `data`, stopped after.

    With `uvicorn`, plain `uvicorn loraflow.api.app:app` is started instead (`args` unused).
    """
    port = free_port()
    argv = uvicorn_argv(port) if uvicorn else cli_argv(*args, "--port", str(port))
    srv = Server(data, env, argv, port)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, server_env: dict[str, str]
) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("server-data")
    make_adapter(smollm2_dir, data / "lora_adapters" / ADAPTER_NAME)
    with start_server(data, {**server_env, "MAX_UPLOAD_MB": "1"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, stopped_port: int) -> Iterator[Server]:
    """A server for generated and hostile requests: Ollama-only (down), no local model, so no
    request can start a long generation or a training run."""
    env = {
        "LOAD_LOCAL_MODEL": "false",
        "USE_LORA_DEFAULT": "false",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "OLLAMA_TIMEOUT": "2",
        "MAX_UPLOAD_MB": "1",
        # Low enough for the hostile-input corpus to reach it with small bodies.
        "JSON_MAX_ITEMS": "300000",
    }
    with start_server(tmp_path_factory.mktemp("fuzz"), env, uvicorn=True) as srv:
        yield srv


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium for the web UI tests."""
    from playwright.sync_api import expect, sync_playwright

    # Page updates come from server events; on a busy 2-core machine they can take seconds.
    expect.set_options(timeout=30_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any, ui_server: Server) -> Iterator[Any]:
    """The UI's page in a fresh browser context; `ui_server` is the test module's server."""
    p = open_ui(browser, ui_server)
    try:
        yield p
    finally:
        p.context.close()
