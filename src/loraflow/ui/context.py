"""What every tab shares: the running service's Runtime, the labels, and error display."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from loraflow.config import Settings
from loraflow.engines import remote as remote_engine
from loraflow.errors import EngineUnavailable, InvalidInput, LoraflowError
from loraflow.services.catalog import assistants
from loraflow.services.catalog import names as catalog
from loraflow.services.catalog import selection as models
from loraflow.services.runtime import Runtime
from loraflow.services.write import memory
from loraflow.ui.i18n import Labels

log = logging.getLogger("loraflow.ui")

F = TypeVar("F", bound=Callable[..., Any])

# Model choices shared by the Ask and Create tabs; adapter names never start with "_".
CURRENT, BASE, OLLAMA = "__current__", "__base__", "__ollama__"


@dataclass
class UIContext:
    """The service's Runtime getter, its settings (form defaults) and the labels."""

    runtime: Callable[[], Runtime | None]
    settings: Settings
    t: Labels

    def rt(self) -> Runtime:
        """The Runtime, or EngineUnavailable while the service is still starting."""
        rt = self.runtime()
        if rt is None:
            raise EngineUnavailable("the service is still starting; retry in a few seconds")
        return rt

    def in_status(self, status: gr.Markdown, button: str) -> Callable[[F], F]:
        """Wrap a form button's handler so a failure is written into the form's `status` line,
        headed by the button's label (key `button`), and every other output stays as it is.

        An error raised to Gradio would show as a toast that floats over every tab until it
        is closed, covering other tabs' forms. The event must list `status` as an output.
        """
        heading = self.t("action_failed").format(action=self.t(button))

        def wrap(fn: F) -> F:
            if inspect.isgeneratorfunction(fn):
                # A streamed handler: what it showed so far stays, the failure is added.
                @functools.wraps(fn)
                def stream(*args: Any, **kwargs: Any) -> Any:
                    try:
                        yield from fn(*args, **kwargs)
                    except Exception as exc:
                        yield {status: f"✗ **{heading}**: {failure(exc)}"}

                return stream  # type: ignore[return-value]

            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    # A dict sets only the components it names.
                    return {status: f"✗ **{heading}**: {failure(exc)}"}

            return call  # type: ignore[return-value]

        return wrap


def failure(exc: Exception) -> str:
    """What the page says about a failed event: the message and its hint, never a traceback."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    if isinstance(exc, LoraflowError):
        return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    # The log keeps the traceback for the operator.
    log.exception("unexpected error in the web UI")
    return f"internal error: {type(exc).__name__}; see the server log"


def _shown(exc: Exception) -> gr.Error:
    return gr.Error(failure(exc))


def action(fn: F) -> F:
    """Wrap an event handler so loraflow errors show as a message in the page."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _shown(exc) from exc

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _shown(exc) from exc

    return call  # type: ignore[return-value]


def remote_label(rt: Runtime) -> str:
    """How the remote engine is named in menus: the backend it talks to and its model."""
    d = remote_engine.describe(rt.settings)
    kind = {"ollama": "Ollama", "openai": "vLLM/OpenAI"}[d["remote_backend"]]
    return f"{kind} ({d['remote_model']})"


def model_choices(
    ctx: UIContext, rt: Runtime, *, with_assistants: bool = False
) -> list[tuple[str, str]]:
    """The current selection, the base model, the remote engine, then what the catalog lists:
    every adapter (those not attached yet are attached on first use) and (for the Ask tab)
    every assistant as `assistant/<name>`."""
    t = ctx.t
    sel = models.current_selection(rt)
    now = {rt.remote.name: remote_label(rt), "base": t("model_base")}.get(
        sel.model_used, f"LoRA: {sel.adapter}"
    )
    listed = catalog.entries(rt, remote_models=False)  # the remote engine is one choice
    adapters = [
        (f"LoRA: {e.name}" + ("" if e.attached else f" ({t('model_not_attached')})"), e.name)
        for e in listed
        if e.kind == "adapter"
    ]
    named = [(e.name, e.name) for e in listed if e.kind == "assistant"] if with_assistants else []
    # Still offered when its server is down (it may come back), but marked.
    down = "" if rt.remote.health().ok else f" ({t('unreachable')})"
    return [
        (f"{t('model_current')}: {now}", CURRENT),
        (t("model_base"), BASE),
        (remote_label(rt) + down, OLLAMA),
        *adapters,
        *named,
    ]


def model_request(choice: str | None) -> dict[str, Any]:
    """The engine/adapter fields of a request for one model choice (`assistant` for one)."""
    if not choice or choice == CURRENT:
        return {}
    if choice == BASE:
        return {"engine": "local"}
    if choice == OLLAMA:
        return {"engine": "ollama"}
    if choice.startswith(assistants.MODEL_PREFIX):
        return {"assistant": choice.removeprefix(assistants.MODEL_PREFIX)}
    return {"adapter": choice}


def project_choices(rt: Runtime) -> list[tuple[str, str]]:
    """Story projects as (name, id) dropdown choices."""
    return [(p["name"], p["id"]) for p in memory.list_projects(rt)]


def whole(value: Any) -> int | None:
    """A gr.Number's value as an int (None stays None)."""
    return None if value is None or value == "" else int(value)


def optional_whole(text: Any, what: str) -> int | None:
    """A whole number typed into a text field; empty means not set."""
    raw = "" if text is None else str(text).strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(
            f"{what} {raw!r} is not a whole number; leave it empty or give one"
        ) from None


def optional_decimal(text: Any, what: str) -> float | None:
    """A number typed into a text field; empty means not set."""
    raw = "" if text is None else str(text).strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"{what} {raw!r} is not a number; leave it empty or give one") from None


def decimal(value: Any) -> float | None:
    """A gr.Number's value as a float (None stays None)."""
    return None if value is None or value == "" else float(value)


def parse_stops(text: str | None) -> list[str]:
    """Stop strings, one per line; blank lines are not stop strings."""
    return [line for line in (text or "").split("\n") if line.strip()]


def cell(value: Any, limit: int = 120) -> str:
    """A value as one short line for a table cell."""
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
