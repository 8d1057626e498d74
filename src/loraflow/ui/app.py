"""The web UI: one Gradio page with a tab per area, mounted into the API app at /ui."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Mount

from loraflow.config import Settings
from loraflow.services.runtime import Runtime
from loraflow.ui import ask, assistants, chat, create, memory, models, status, training
from loraflow.ui.context import UIContext
from loraflow.ui.i18n import Labels

log = logging.getLogger("loraflow.ui")

UI_PATH = "/ui"
# (label key, module with build(ctx, demo, tab)), in the order the tabs appear.
TABS = (
    ("tab_ask", ask),
    ("tab_chat", chat),
    ("tab_assistants", assistants),
    ("tab_create", create),
    ("tab_memory", memory),
    ("tab_training", training),
    ("tab_models", models),
    ("tab_status", status),
)
CSS = """
.lf-tasks { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.lf-tasks th, .lf-tasks td { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary);
  text-align: left; vertical-align: middle; }
.lf-bar { display: inline-block; width: 120px; height: 10px; margin-right: 6px;
  background: var(--neutral-200); border-radius: 5px; overflow: hidden; vertical-align: middle; }
.lf-bar > div { height: 100%; background: var(--color-accent); }
.lf-compare { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr));
  gap: 12px; }
.lf-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px; }
.lf-card h4 { margin: 0 0 6px 0; } .lf-answer { white-space: pre-wrap; }
.lf-meta { color: var(--body-text-color-subdued); font-size: 0.85em; margin: 6px 0 0 0; }
.lf-row { white-space: pre-wrap; font-size: 0.85em; max-height: 220px; overflow: auto;
  padding: 6px; border: 1px solid var(--border-color-primary); border-radius: 6px; }
.lf-row mark { background: #fde68a; }
.lf-hist td { padding: 1px 6px; font-size: 0.85em; }
.lf-completed { color: #15803d; } .lf-failed { color: #b91c1c; } .lf-running { color: #1d4ed8; }
"""


# Gradio translates its own strings (buttons, "Use via API", upload hints) into the browser's
# language; this makes them follow UI_LANGUAGE instead.
BROWSER_LOCALE = {"zh": "zh-CN"}


def language_script(language: str) -> bytes:
    """A <script> that makes the page report `language` as the browser's (empty for English)."""
    locale = BROWSER_LOCALE.get(language)
    if locale is None:
        return b""
    return (
        "<script>(() => { for (const [key, value] of "
        f"[['language', '{locale}'], ['languages', ['{locale}']]]) "
        "Object.defineProperty(navigator, key, {get: () => value, configurable: true}); "
        f"document.documentElement.lang = '{locale}'; }})();</script>"
    ).encode()


class HeadScript:
    """ASGI wrapper of the UI: puts `script` first in the <head> of the UI's page, so it runs
    before Gradio's own (deferred) scripts read the browser's language."""

    def __init__(self, app: Any, script: bytes) -> None:
        self.app, self.script = app, script

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        page = scope["type"] == "http" and scope["path"].rstrip("/") == UI_PATH
        if not page or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body = bytearray()

        async def held(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body" or not start:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            given = {k.lower(): v for k, v in start.get("headers", [])}
            headers = [h for h in start.get("headers", []) if h[0].lower() != b"content-length"]
            kind, encoded = given.get(b"content-type", b""), given.get(b"content-encoding")
            out = bytes(body)
            if kind.startswith(b"text/html") and not encoded and b"<head>" in out:
                out = out.replace(b"<head>", b"<head>" + self.script, 1)
            headers.append((b"content-length", str(len(out)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": out})

        await self.app(scope, receive, held)


def build_ui(runtime: Callable[[], Runtime | None], settings: Settings) -> gr.Blocks:
    """The UI's Blocks; handlers fetch the Runtime with `runtime()` when they run."""
    t = Labels(settings.ui_language)
    ctx = UIContext(runtime, settings, t)
    with gr.Blocks(title=t("app_title"), analytics_enabled=False) as demo:
        gr.Markdown(f"# {t('app_title')}\n{t('app_intro')}")
        with gr.Tabs():
            for key, module in TABS:
                with gr.Tab(t(key), id=key, elem_id=f"tab-{key.removeprefix('tab_')}") as tab:
                    module.build(ctx, demo, tab)
    # Generation events raise their own limits; the engine batches concurrent requests.
    demo.queue(default_concurrency_limit=4)
    return demo


def _key_login(keys: list[str]) -> Callable[[str, str], bool]:
    """Gradio's login check: any user name, one of the API keys as the password."""
    encoded = [k.encode() for k in keys]

    def check(_user: str, password: str) -> bool:
        given = (password or "").encode()
        return any(hmac.compare_digest(given, k) for k in encoded)

    return check


def _login_hint(settings: Settings) -> str:
    """The login page's hint."""
    return Labels(settings.ui_language)("login_hint")


@asynccontextmanager
async def serve_ui(app: FastAPI, runtime: Callable[[], Runtime | None]) -> AsyncIterator[None]:
    """Mount the UI at /ui while the service runs; a UI that cannot start is logged, not fatal."""
    rt = runtime()
    if rt is None:
        raise RuntimeError("serve_ui needs the started service's Runtime")
    settings = rt.settings
    # mount_gradio_app wraps the app's lifespan for a later start; this one is running.
    own_lifespan = app.router.lifespan_context
    demo: gr.Blocks | None = None
    try:
        demo = build_ui(runtime, settings)
        gr.mount_gradio_app(
            app,
            demo,
            path=UI_PATH,
            ssr_mode=False,
            css=CSS,
            max_file_size=settings.max_upload_bytes,
            auth=_key_login(settings.api_key_list) if settings.api_key_list else None,
            auth_message=_login_hint(settings) if settings.api_key_list else None,
        )
    except Exception as exc:  # the API keeps working without its UI
        log.exception("the web UI could not start")
        rt.warnings.append(f"web UI not started: {type(exc).__name__}: {exc}")
        demo = None
    finally:
        app.router.lifespan_context = own_lifespan
    if demo is None:
        yield
        return
    route = next(
        r for r in reversed(app.router.routes) if isinstance(r, Mount) and r.path == UI_PATH
    )
    sub = route.app
    script = language_script(settings.ui_language)
    if script:
        route.app = HeadScript(sub, script)
    try:
        async with sub.router.lifespan_context(sub):
            demo.run_startup_events()
            await demo.run_extra_startup_events()
            log.info("web UI at http://%s:%s%s/", settings.api_host, settings.api_port, UI_PATH)
            yield
    finally:
        app.router.routes.remove(route)
