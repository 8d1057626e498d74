"""Registered adapters on the remote fleet (vLLM replicas): placed, checked, loaded, retired.

A deploy with engine=remote copies the adapter into the folder shared with the replicas
(REMOTE_ADAPTER_DIR, seen by them as REMOTE_ADAPTER_ROOT), one `<name>/v<N>` folder a version,
checks it against the replicas' limits, then loads it on every replica through vLLM's
run-time LoRA API under the served name `<name>@v<N>`, so two versions of one adapter
(blue and green, stable and canary) are served side by side. The deployments table says which
versions every replica must serve; the fleet's poll loads them again on a replica that lost
them (a restart), and this process tells the fleet on start.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from loraflow import db
from loraflow.adapters.registry import AdapterRecord
from loraflow.engines.base import GenerationParams
from loraflow.engines.fleet import OpenAIFleet
from loraflow.errors import InvalidInput, LoraflowError
from loraflow.services.registry.adapters import registry
from loraflow.services.runtime import Runtime

log = logging.getLogger(__name__)

ENGINES = ("local", "remote")
HEALTH_MESSAGES = [{"role": "user", "content": "Hello! Please answer briefly: what is 2 + 2?"}]


def check_engine(engine: str | None) -> str:
    """The deploy target engine: local (default) or remote."""
    value = engine or "local"
    if value not in ENGINES:
        raise InvalidInput(f"engine {engine!r} is not one of {list(ENGINES)}")
    return value


def fleet(rt: Runtime) -> OpenAIFleet:
    """The remote engine as a fleet, or InvalidInput saying which setting makes it one."""
    if not isinstance(rt.remote, OpenAIFleet):
        raise InvalidInput(
            "deploying to engine=remote needs vLLM replicas: REMOTE_BACKEND is "
            f"{rt.settings.remote_backend!r}",
            hint="set REMOTE_BACKEND=openai and OPENAI_BASE_URL (or OPENAI_BASE_URLS)",
        )
    return rt.remote


def served_name(ref: str) -> str:
    """The model name replicas serve a registered version under: `<name>@v<N>`."""
    return ref


def _last(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def check_limits(rt: Runtime, rec: AdapterRecord) -> None:
    """Refuse an adapter the replicas cannot serve: rank, base model, target modules."""
    s = rt.settings
    reasons = []
    if rec.rank > s.remote_max_lora_rank:
        reasons.append(
            f"its rank {rec.rank} is above the replicas' max LoRA rank "
            f"{s.remote_max_lora_rank} (REMOTE_MAX_LORA_RANK, vLLM --max-lora-rank)"
        )
    if rec.base_model and _last(rec.base_model) != _last(s.openai_model):
        reasons.append(
            f"it was trained on {rec.base_model!r}, the replicas serve {s.openai_model!r} "
            "(OPENAI_MODEL)"
        )
    allowed = {m.strip() for m in s.remote_lora_modules.split(",") if m.strip()}
    odd = sorted(set(rec.target_modules) - allowed)
    if allowed and odd:
        reasons.append(
            f"it targets {odd}, which the replicas cannot apply LoRA to "
            f"(REMOTE_LORA_MODULES: {sorted(allowed)})"
        )
    if reasons:
        raise InvalidInput(
            f"adapter {rec.ref} cannot be served by the replicas: " + "; ".join(reasons)
        )


def place(rt: Runtime, rec: AdapterRecord) -> tuple[Path, str]:
    """Copy the adapter into the shared folder (once a version); (its folder here, as the
    replicas see it). The copy is written aside and renamed, so replicas never see half."""
    s = rt.settings
    rel = Path(rec.name) / f"v{rec.version}"
    here = s.remote_adapter_path / rel
    if not here.is_dir():
        here.parent.mkdir(parents=True, exist_ok=True)
        scratch = here.parent / f".{here.name}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(rec.path, scratch)
            try:
                scratch.rename(here)
            except OSError:
                if not here.is_dir():  # placed by another worker meanwhile is fine
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return here, f"{s.remote_adapter_mount}/{rel.as_posix()}"


def load(rt: Runtime, ref: str) -> str:
    """Check, place and load a registered adapter on every replica; its served name."""
    f = fleet(rt)
    rec = registry(rt).verify(ref)
    check_limits(rt, rec)
    name = served_name(rec.ref)
    here, there = place(rt, rec)
    fresh = name not in f.wanted()
    try:
        f.load_everywhere(name, there)
    except LoraflowError:
        if fresh and not _still_deployed(rt, rec.ref):
            shutil.rmtree(here, ignore_errors=True)  # a refused load leaves nothing behind
        raise
    f.want({**f.wanted(), name: there})
    return name


def _still_deployed(rt: Runtime, ref: str) -> bool:
    return ref in deployed_remote(rt)


def deployed_remote(rt: Runtime) -> set[str]:
    """Every adapter ref a remote deployment serves or keeps on standby."""
    with rt.db.connect() as conn:
        states = conn.execute(select(db.deployments.c.state)).scalars().all()
    refs: set[str] = set()
    for st in states:
        if not isinstance(st, dict) or st.get("engine") != "remote":
            continue
        refs.update(v["adapter"] for v in st.get("variants", []))
        if st.get("standby"):
            refs.add(st["standby"]["adapter"])
    return refs


def sync(rt: Runtime) -> dict[str, str]:
    """Tell the fleet what every replica must serve, from the deployments table; unload what
    no remote deployment uses any more. Returns served name -> folder as replicas see it."""
    if not isinstance(rt.remote, OpenAIFleet):
        return {}
    f = rt.remote
    wanted = _wanted(rt)
    retired = set(f.wanted()) - set(wanted)
    f.want(wanted)
    for name in sorted(retired):
        f.unload_everywhere(name)
    return wanted


def _wanted(rt: Runtime) -> dict[str, str]:
    """Served name -> folder as the replicas see it, of every remotely deployed version."""
    wanted = {}
    reg = registry(rt)
    for ref in sorted(deployed_remote(rt)):
        try:
            rec = reg.get(ref)
        except LoraflowError as exc:
            log.warning("deployed adapter %s is not in the registry: %s", ref, exc)
            continue
        wanted[served_name(rec.ref)] = (
            f"{rt.settings.remote_adapter_mount}/{rec.name}/v{rec.version}"
        )
    return wanted


def start(rt: Runtime) -> None:
    """On service start: what the deployments table says every replica must serve, checked
    at once and then every FLEET_POLL_SECONDS (a replica that lost adapters gets them back)."""
    if not isinstance(rt.remote, OpenAIFleet):
        return
    try:
        sync(rt)
    except LoraflowError as exc:
        log.warning("fleet not reconciled on start: %s", exc)
    fleet_ = rt.remote

    def first_poll() -> None:
        try:
            fleet_.poll()
        except Exception:  # the regular poll tries again
            log.exception("first fleet poll failed")

    def refresh() -> None:
        # Deploys through other workers change the table: every worker keeps up with it.
        try:
            fleet_.want(_wanted(rt))
        except Exception as exc:  # a database that cannot be read now: keep what is known
            log.debug("deployed adapters not read: %s", exc)

    threading.Thread(target=first_poll, daemon=True, name="fleet-first-poll").start()
    fleet_.start_polling(rt.settings.fleet_poll_seconds, before=refresh)


def health_check(rt: Runtime, name: str, retries: int, timeout: float) -> dict[str, Any]:
    """Generate a few tokens with `name` through every replica (retries each); ok when all do."""
    f = fleet(rt)
    replicas = []
    for r in f.replicas:
        attempts: list[dict[str, Any]] = []
        for attempt in range(1, retries + 1):
            started = time.perf_counter()
            outcome: dict[str, Any] = {}
            try:
                params = GenerationParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
                result = r.engine.generate(HEALTH_MESSAGES, params, adapter=name)
                outcome["tokens"] = result.completion_tokens
            except (LoraflowError, OSError) as exc:
                outcome["error"] = str(exc) or type(exc).__name__
            seconds = round(time.perf_counter() - started, 3)
            if "error" not in outcome and seconds > timeout:
                outcome["error"] = f"no answer within {timeout:g}s"
            ok = "error" not in outcome and outcome.get("tokens", 0) > 0
            if "error" not in outcome and not ok:
                outcome["error"] = "generated no tokens"
            attempts.append({"attempt": attempt, "ok": ok, "seconds": seconds, **outcome})
            if ok:
                break
        replicas.append({"replica": r.url, "ok": attempts[-1]["ok"], "attempts": attempts})
    ok = all(r["ok"] for r in replicas)
    failed = [r for r in replicas if not r["ok"]]
    error = (
        f"{failed[0]['replica']}: {failed[0]['attempts'][-1].get('error', 'failed')}"
        if failed
        else None
    )
    # The same shape as the local check (attempts of the last replica that ran) plus each one.
    last = (failed or replicas)[0]["attempts"]
    out: dict[str, Any] = {"ok": ok, "attempts": last, "replicas": replicas}
    if error:
        out["error"] = error
    return out


def unload_if_unused(
    rt: Runtime, refs: set[str], *, remove_files: bool = False, drain: bool = False
) -> list[str]:
    """Unload from every replica those of `refs` no remote deployment uses now; with
    `remove_files` their folders in the shared adapter folder go too (a refused deploy).

    With `drain`, each waits first (up to OPENAI_TIMEOUT) for the requests in flight on it to
    end; it is no longer wanted, so the poll does not load it again meanwhile.
    """
    if not isinstance(rt.remote, OpenAIFleet):
        return []
    used = deployed_remote(rt)
    unused = sorted(r for r in refs if r not in used)
    gone = [served_name(r) for r in unused]
    if remove_files:
        reg = registry(rt)
        for ref in unused:
            rec = reg.get(ref)
            shutil.rmtree(rt.settings.remote_adapter_path / rec.name / f"v{rec.version}", True)
    wanted = {k: v for k, v in rt.remote.wanted().items() if k not in gone}
    rt.remote.want(wanted)
    wait = rt.settings.openai_timeout if drain else 0.0
    for name in gone:
        failed = rt.remote.unload_everywhere(name, drain=wait)
        if failed:
            log.warning("adapter %s stays on %s (unload failed)", name, failed)
    return gone


def ensure_loaded(rt: Runtime, refs: set[str]) -> None:
    """Load on every replica those of `refs` the fleet does not serve yet (a rollback)."""
    f = fleet(rt)
    for ref in sorted(refs):
        if served_name(ref) not in f.wanted():
            load(rt, ref)
