"""The FastAPI application: `uvicorn loraflow.api.app:app` or `loraflow serve`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraflow import __version__
from loraflow.api.compat import renderer_for
from loraflow.api.metrics import install_metrics
from loraflow.api.routes import adapters as adapter_routes
from loraflow.api.routes import admin, ask, compare, documents, ollama_compat, openai_compat, system
from loraflow.api.routes import alerts as alert_routes
from loraflow.api.routes import assistants as assistant_routes
from loraflow.api.routes import collections as collection_routes
from loraflow.api.routes import memory as memory_routes
from loraflow.api.routes import training as training_routes
from loraflow.api.routes import write as write_routes
from loraflow.api.security import RequestGuards
from loraflow.api.worker import HEADER, WorkerHeader
from loraflow.config import Settings, get_settings
from loraflow.db import disk_full, unavailable_reason
from loraflow.errors import LoraflowError, from_os_error, is_disk_full
from loraflow.hardware import release_cpu_pool
from loraflow.locks import service_lock
from loraflow.services.catalog.selection import initialise_selection
from loraflow.services.know.documents import ingest_sample_if_empty
from loraflow.services.manage.fleet import start as start_fleet
from loraflow.services.ops.alerts import Monitor
from loraflow.services.registry.lora_records import sync as sync_lora_records
from loraflow.services.runtime import Runtime, build_runtime, prepare_data_dir
from loraflow.services.train.jobs import start_runner as start_training_runner
from loraflow.services.train.jobs import stop_runner as stop_training_runner

log = logging.getLogger("loraflow")


def _start(settings: Settings, use_lora: bool | None, first: bool = True) -> Runtime:
    logger = logging.getLogger("loraflow")
    logger.setLevel(settings.log_level)
    if not logging.getLogger().handlers and not logger.handlers:
        # Plain `uvicorn loraflow.api.app:app` configures only uvicorn's loggers.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
    rt = build_runtime(settings)
    # A worker (re)started beside running ones keeps the model they serve now.
    initialise_selection(rt, use_lora, keep_current=not first)
    ingest_sample_if_empty(rt)
    register_adapters(rt)
    # Adapters loaded by name through any worker, before or since a restart, are attached now.
    sync_lora_records(rt)
    # The vLLM replicas serve what the deployments table says, checked now and then polled.
    start_fleet(rt)
    start_training_runner(rt)
    if settings.alerts_enabled:
        rt.monitor = Monitor(settings, rt.db).start()
    # This thread loaded models and embedded the sample: its parallel workers go (see
    # release_cpu_pool), or the engine's batch thread decodes slower while they idle.
    release_cpu_pool()
    return rt


def register_adapters(rt: Runtime) -> None:
    """Scan the adapter folders into the registry; interrupt workflows of stopped processes."""
    from loraflow.services.manage import workflows
    from loraflow.services.registry import adapters

    try:
        found = adapters.scan(rt)
    except LoraflowError as exc:
        log.warning("adapter scan failed: %s", exc)
    else:
        for path, why in found.skipped.items():
            log.warning("adapter folder %s not registered: %s", path, why)
        for rec in found.changed:
            if rt.local is None:
                break
            # Attached from disk at start, but no longer what was registered: not served.
            for name, folder in rt.local.adapter_paths().items():
                if str(folder.resolve()) == rec.path:
                    rt.local.unload_adapter(name)
                    log.warning(
                        "adapter %s detached: its files changed since registration (%s)",
                        name,
                        rec.path,
                    )
        if found.added:
            log.info("registered adapters: %s", ", ".join(r.ref for r in found.added))
    workflows.recover(rt)


def _disk_full(what: str) -> JSONResponse:
    # A full disk (or quota, or file-size limit) is the operator's to fix, not a bug.
    log.error("disk full: %s", what)
    return JSONResponse(
        {
            "detail": f"the server's disk is full: {what}; nothing was saved",
            "hint": "free space in the data dir (LORAFLOW_DATA_DIR) and retry",
        },
        status_code=507,
    )


def create_app(
    settings: Settings | None = None,
    *,
    use_lora: bool | None = None,
    runtime: Runtime | None = None,
) -> FastAPI:
    """Build the app; heavy objects are created in the lifespan, not at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as held:
            if runtime is not None:
                app.state.runtime = runtime
            else:
                s = settings or get_settings()
                prepare_data_dir(s)
                # Held while this process serves: `loraflow restore` refuses the folder.
                # Off the event loop: it may wait a moment for workers starting together.
                first = await run_in_threadpool(held.enter_context, service_lock(s.data_path))
                app.state.runtime = await run_in_threadpool(_start, s, use_lora, first)
            async with AsyncExitStack() as stack:
                if app.state.runtime.settings.enable_ui:
                    # Gradio is imported only when the UI is on (ENABLE_UI).
                    from loraflow.ui.app import serve_ui

                    def current() -> Runtime | None:
                        return getattr(app.state, "runtime", None)

                    await stack.enter_async_context(serve_ui(app, current))
                yield
            if app.state.runtime is not None:
                await run_in_threadpool(stop_training_runner, app.state.runtime)
                # Stops the fleet's health polling; a runtime built without a remote engine
                # (an embedding-only one in tests, say) has nothing to close.
                close = getattr(app.state.runtime.remote, "close", None)
                if close is not None:
                    await run_in_threadpool(close)
                if app.state.runtime.monitor is not None:
                    await run_in_threadpool(app.state.runtime.monitor.stop)
            app.state.runtime = None

    app = FastAPI(
        title="loraflow",
        version=__version__,
        summary="RAG question answering with switchable local + LoRA and Ollama models.",
        description=(
            "Limits on what a request may carry: JSON bodies up to `MAX_BODY_MB`, uploads up "
            "to `MAX_UPLOAD_MB` (413 beyond); any JSON a user sends (bodies, dataset and "
            "document files, each JSONL line) up to `JSON_MAX_DEPTH` levels of nesting "
            "(default 64) and `JSON_MAX_ITEMS` values (default 1,000,000). NaN, Infinity, "
            "numbers out of range and lone surrogate escapes are refused. Refusals name the "
            "limit and where it was exceeded; `/v1` answers in OpenAI's error shape, the "
            'Ollama routes in Ollama\'s, the rest as `{"detail": ...}`.'
        ),
        lifespan=lifespan,
    )

    @app.exception_handler(LoraflowError)
    async def _loraflow_error(_request: Request, exc: LoraflowError) -> JSONResponse:
        body: dict[str, str] = {"detail": exc.message}
        if exc.hint:
            body["hint"] = exc.hint
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths (404) and methods (405) under the OpenAI and Ollama APIs answer in
        # their own error shape, as the routes do; loraflow's own keep {"detail": ...}.
        render = renderer_for(request.url.path)
        if render is None:
            return await http_exception_handler(request, exc)
        response = render(exc.status_code, str(exc.detail), exc)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        rt = getattr(request.app.state, "runtime", None)
        found = None
        if rt is not None:
            found = unavailable_reason(exc, rt.settings.db_url, rt.settings.db_busy_timeout)
        if found is None and disk_full(exc):
            return _disk_full("the database could not write")
        if found is None:
            return await _unexpected(request, exc)
        # Locked or down is an outage the client can retry, not a server bug.
        log.warning("database unavailable: %s", found[0])
        return JSONResponse(
            {"detail": found[0], "hint": found[1]}, status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if (user_error := from_os_error(exc)) is not None:
            return await _loraflow_error(request, user_error)
        if not is_disk_full(exc):
            return await _unexpected(request, exc)
        return _disk_full(str(exc.strerror))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Never a traceback to the user; the log keeps it for the operator.
        log.exception("unexpected error")
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}; see the server log"},
            status_code=500,
            # Sent by Starlette's outermost error layer, outside WorkerHeader: named here.
            headers={HEADER.decode(): str(os.getpid())},
        )

    app.add_middleware(RequestGuards)
    # Added after the guards, so it is outermost and counts refused requests too.
    install_metrics(app)
    # Outermost: every response, refused ones too, names the worker process that sent it.
    app.add_middleware(WorkerHeader)
    app.include_router(system.router)
    app.include_router(alert_routes.router)
    app.include_router(ask.router)
    app.include_router(compare.router)
    app.include_router(documents.router)
    app.include_router(training_routes.router)
    app.include_router(adapter_routes.router)
    app.include_router(collection_routes.router)
    app.include_router(assistant_routes.router)
    app.include_router(admin.router)
    app.include_router(openai_compat.router)
    app.include_router(ollama_compat.router)
    app.include_router(memory_routes.router)
    app.include_router(write_routes.router)
    return app


app = create_app()
