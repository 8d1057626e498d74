"""One prompt to the base model and up to three adapters at once, the answers side by side.

The requests are sent together, so on a batching local engine they decode in one running
batch (each row with its own adapter) rather than one after another; each answer's time is
from the start until its own last token.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loraflow.engines.hybrid import batch_only
from loraflow.errors import InvalidInput, LoraflowError
from loraflow.services.catalog.names import base_model_id, resolve
from loraflow.services.runtime import Runtime, local_engine
from loraflow.services.serve.chat import ChatRequest, chat

MAX_ADAPTERS = 3


@dataclass
class CompareRequest:
    """The prompt (as chat messages), the adapters to set beside the base, and sampling."""

    messages: list[dict[str, str]]
    adapters: list[str] = field(default_factory=list)
    include_base: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None


@dataclass
class CompareAnswer:
    """One model's answer with its time and token counts, or why it failed."""

    model: str
    kind: str  # base or adapter
    text: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: str | None = None


def models_of(rt: Runtime, req: CompareRequest) -> list[tuple[str, str]]:
    """(name, kind) of every model compared, base first; any unknown name refused here,
    before anything is generated."""
    local_engine(rt)  # compare runs on the local engine: say so at once when it is absent
    if not req.messages or req.messages[-1].get("role") != "user":
        raise InvalidInput("the prompt must end with a user message")
    wanted = list(dict.fromkeys(a.strip() for a in req.adapters if a.strip()))
    if len(wanted) > MAX_ADAPTERS:
        raise InvalidInput(
            f"{len(wanted)} adapters given; compare sets at most {MAX_ADAPTERS} beside the base"
        )
    if not wanted and not req.include_base:
        raise InvalidInput("nothing to compare: name an adapter or include the base model")
    out = [(base_model_id(rt), "base")] if req.include_base else []
    for name in wanted:
        target = resolve(rt, name)  # NotFound lists the names there are
        if target.kind != "adapter" or target.assistant or target.routed is not None:
            raise InvalidInput(
                f"{name!r} is not an adapter of the local base model; compare sets adapters "
                "beside the base (not assistants, deployment targets or remote models)"
            )
        out.append((name, "adapter"))
    return out


def compare(rt: Runtime, req: CompareRequest) -> list[CompareAnswer]:
    """Every model's answer to the same prompt, generated at the same time."""
    models = models_of(rt, req)
    started = time.perf_counter()

    def one(model: tuple[str, str]) -> CompareAnswer:
        name, kind = model
        try:
            with batch_only():  # LOCAL_ENGINE=hybrid: every answer from the same engine
                result = chat(
                    rt,
                    ChatRequest(
                        model=name,
                        messages=req.messages,
                        max_tokens=req.max_tokens,
                        temperature=req.temperature,
                        seed=req.seed,
                    ),
                )
        except LoraflowError as exc:  # one failing adapter does not hide the others
            seconds = round(time.perf_counter() - started, 3)
            return CompareAnswer(name, kind, "", seconds, 0, 0, None, str(exc))
        choice = result.choices[0]
        return CompareAnswer(
            name,
            kind,
            choice.text,
            round(time.perf_counter() - started, 3),
            result.prompt_tokens,
            result.completion_tokens,
            choice.finish_reason,
        )

    with ThreadPoolExecutor(len(models), thread_name_prefix="compare") as pool:
        return list(pool.map(one, models))
