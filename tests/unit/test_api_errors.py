"""An unexpected server error: a plain message, no traceback, and the worker that sent it."""

from __future__ import annotations

import os
from pathlib import Path


def test_an_unexpected_error_is_a_500_that_names_its_worker(
    tmp_path: Path, model_cache: Path
) -> None:
    from fastapi.testclient import TestClient

    from loraflow.api.app import create_app
    from loraflow.config import Settings
    from loraflow.db import make_engine
    from loraflow.services.runtime import Runtime, prepare_data_dir

    settings = Settings(data_dir=tmp_path / "d", cache_dir=model_cache, enable_ui=False)
    prepare_data_dir(settings)
    # A runtime without a vector store: listing documents fails in a way no handler expects.
    rt = Runtime(settings, make_engine(settings.db_url), None, None, None)  # type: ignore[arg-type]
    app = create_app(settings, runtime=rt)
    with TestClient(app, raise_server_exceptions=False) as client:
        failed = client.get("/documents")
        fine = client.get("/health")
    assert failed.status_code == 500
    assert failed.json()["detail"] == "internal error: AttributeError; see the server log"
    assert "Traceback" not in failed.text
    assert failed.headers.get_list("x-loraflow-worker") == [str(os.getpid())]
    assert fine.headers["x-loraflow-worker"] == str(os.getpid())


def test_the_worker_header_is_never_doubled() -> None:
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from loraflow.api.worker import WorkerHeader

    pid = str(os.getpid())

    def named(_request: object) -> JSONResponse:
        # What the app's error handler sends for a handled OSError or database error.
        return JSONResponse({}, status_code=500, headers={"X-Loraflow-Worker": pid})

    def plain(_request: object) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/named", named), Route("/plain", plain)])
    with TestClient(WorkerHeader(app)) as client:
        for path in ("/named", "/plain"):
            assert client.get(path).headers.get_list("x-loraflow-worker") == [pid]


def test_ollama_error_shape_covers_exactly_the_ollama_routes() -> None:
    from loraflow.api.compat import OLLAMA_PATHS, ollama_error, openai_error, renderer_for
    from loraflow.api.routes import ollama_compat

    assert {r.path for r in ollama_compat.router.routes} == OLLAMA_PATHS
    assert renderer_for("/api/chat") is ollama_error
    assert renderer_for("/v1/models") is openai_error
    assert renderer_for("/api/simple-lora/train") is None


def test_a_name_too_long_for_the_file_system_is_the_users_error() -> None:
    import errno

    from loraflow.errors import InvalidInput, from_os_error

    found = from_os_error(OSError(errno.ENAMETOOLONG, "File name too long"))
    assert isinstance(found, InvalidInput) and "255 bytes" in found.message
    assert from_os_error(OSError(errno.EIO, "I/O error")) is None
