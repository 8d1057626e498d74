"""Several replicas of one base model behind OpenAI-compatible APIs (vLLM), used as one engine.

Each request goes to the replica with the fewest requests in flight among those that answer;
a replica that fails is ejected for a while and then tried again, and a request that failed
before any of its answer arrived is sent once more to another replica. A poll keeps each
replica's health and model list fresh, and loads there the adapters every replica must serve
(`want`) but has lost, e.g. after it restarted: until then it gets no requests for them.
An adapter that is retired is unloaded once the requests this process has in flight on it
have finished (`unload_everywhere(drain=...)`), so a switch under load cuts no answer short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from loraflow.engines.base import EngineHealth, GenerationParams, GenerationResult
from loraflow.engines.chat import check_messages
from loraflow.engines.openai_http import HEALTH_TIMEOUT, OpenAIHTTPEngine, ReplicaDown
from loraflow.errors import EngineUnavailable, NotFound

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One server of the fleet and what the gateway knows about it."""

    url: str
    engine: OpenAIHTTPEngine
    outstanding: int = 0
    # Until this monotonic time the replica gets no requests (it failed); 0: not ejected.
    ejected_until: float = 0.0
    error: str | None = None
    # Model ids it listed at the last poll; None until it answered one.
    models: set[str] | None = None
    # Adapters it must serve that it does not (lost on a restart, or a load that failed).
    missing: set[str] = field(default_factory=set)

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def describe(self, now: float) -> dict[str, object]:
        return {
            "url": self.url,
            "healthy": self.available(now) and self.error is None,
            "outstanding": self.outstanding,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 1),
            "error": self.error,
            "missing_adapters": sorted(self.missing),
        }


class OpenAIFleet:
    """One base model on one or more OpenAI-compatible servers, as one remote engine."""

    name = "openai"

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        eject_seconds: float = 10.0,
    ) -> None:
        if not base_urls:
            raise EngineUnavailable("no OpenAI-compatible server is configured (OPENAI_BASE_URLS)")
        self.model = model
        self.timeout = timeout
        self.eject_seconds = eject_seconds
        self.replicas = [
            Replica(u.rstrip("/"), OpenAIHTTPEngine(u, model, api_key=api_key, timeout=timeout))
            for u in base_urls
        ]
        self.base_url = ", ".join(r.url for r in self.replicas)
        # Adapter name -> folder as the replicas see it: loaded on every replica.
        self._wanted: dict[str, str] = {}
        self._lock = threading.Lock()
        # Requests in flight per adapter, and a condition an unload waits on for them to end.
        self._busy: dict[str, int] = {}
        self._quiet = threading.Condition(self._lock)
        self._turn = 0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop polling and close every replica's connections."""
        self._stop.set()
        for r in self.replicas:
            r.engine.close()

    def __enter__(self) -> OpenAIFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_polling(self, interval: float, before: Callable[[], None] | None = None) -> None:
        """Poll every replica every `interval` seconds in a background thread; `before` runs
        ahead of each poll (e.g. to read what the replicas must serve)."""
        if self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    if before is not None:
                        before()
                    self.poll()
                except Exception:  # a poll must never end the loop
                    log.exception("fleet poll failed")

        self._poller = threading.Thread(target=loop, daemon=True, name="fleet-poll")
        self._poller.start()

    # --- which replica --------------------------------------------------------------------
    def pick(self, adapter: str | None = None, exclude: tuple[Replica, ...] = ()) -> Replica:
        """The replica with the fewest requests in flight that can serve `adapter` now.

        Replicas ejected after a failure, or missing an adapter they must load again, are
        skipped while another can answer; ties go round in turn. When every replica has been
        ejected, the one whose ejection ends first is tried anyway: ejection steers requests
        to the replicas that answer, it never refuses one untried (a fleet of one would
        otherwise refuse everything for FLEET_EJECT_SECONDS after a single blip).
        """
        now = time.monotonic()
        with self._lock:
            candidates = [r for r in self.replicas if r not in exclude]
            ready = [r for r in candidates if r.available(now) and (adapter not in r.missing)]
            if not ready:
                serving = [r for r in candidates if adapter is None or adapter not in r.missing]
                ready = sorted(serving, key=lambda r: r.ejected_until)[:1]
            if not ready:
                reasons = "; ".join(f"{r.url}: {r.error or 'ejected'}" for r in candidates)
                raise EngineUnavailable(
                    f"no replica of {self.model!r} can answer now ({reasons or 'none left'})",
                    hint="check the replicas (loraflow status) or OPENAI_BASE_URLS",
                )
            self._turn += 1
            n = len(ready)
            order = [ready[(self._turn + i) % n] for i in range(n)]
            chosen = min(order, key=lambda r: r.outstanding)
            chosen.outstanding += 1
            if adapter is not None:
                self._busy[adapter] = self._busy.get(adapter, 0) + 1
            return chosen

    def _another(self, adapter: str | None, tried: list[Replica]) -> bool:
        """Whether a replica besides those tried could take the request now."""
        now = time.monotonic()
        with self._lock:
            return any(
                r.available(now) and adapter not in r.missing
                for r in self.replicas
                if r not in tried
            )

    def _done(self, replica: Replica, adapter: str | None) -> None:
        with self._lock:
            replica.outstanding -= 1
            if adapter is not None:
                left = self._busy.get(adapter, 1) - 1
                if left > 0:
                    self._busy[adapter] = left
                else:
                    self._busy.pop(adapter, None)
                    self._quiet.notify_all()

    def in_flight(self, adapter: str) -> int:
        """How many requests this process has in flight on `adapter`."""
        with self._lock:
            return self._busy.get(adapter, 0)

    def eject(self, replica: Replica, reason: str) -> None:
        """Send `replica` no requests for a while; then it is tried again.

        It may come back restarted, without the adapters loaded at run time: until a poll
        finds them there (or loads them again), it gets no requests for them.
        """
        with self._lock:
            replica.ejected_until = time.monotonic() + self.eject_seconds
            replica.error = reason
            replica.missing = set(self._wanted)
        log.warning("replica %s ejected for %gs: %s", replica.url, self.eject_seconds, reason)

    def _recovered(self, replica: Replica) -> None:
        with self._lock:
            replica.ejected_until = 0.0
            replica.error = None

    def _lost_adapter(self, replica: Replica, adapter: str | None) -> bool:
        """Whether a NotFound for `adapter` means the replica lost an adapter it must serve."""
        if adapter is None or adapter not in self._wanted:
            return False
        with self._lock:
            replica.missing.add(adapter)
        return True

    # --- generation -----------------------------------------------------------------------
    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer on the least busy replica; once more elsewhere if it failed before answering."""
        tried: list[Replica] = []
        while True:
            r = self.pick(adapter, tuple(tried))
            tried.append(r)
            try:
                result = r.engine.generate(messages, params, adapter)
                if r.error is not None:
                    self._recovered(r)  # it answers again
                return result
            except ReplicaDown as exc:
                self.eject(r, exc.message)
                if len(tried) > 1 or not self._another(adapter, tried):
                    raise
            except NotFound:
                if len(tried) > 1 or not self._lost_adapter(r, adapter):
                    raise
                if not self._another(adapter, tried):
                    raise
            finally:
                self._done(r, adapter)

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Answer as text pieces; bad input raises here, before the first piece."""
        params.validate()
        check_messages(messages)
        return self._stream(messages, params, adapter)

    def _stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None
    ) -> Iterator[str]:
        tried: list[Replica] = []
        while True:
            r = self.pick(adapter, tuple(tried))
            tried.append(r)
            started = False
            pieces: Iterator[str] = iter(())
            try:
                pieces = r.engine.stream(messages, params, adapter)
                for piece in pieces:
                    if not started and r.error is not None:
                        self._recovered(r)  # it answers again
                    started = True
                    yield piece
                return
            except ReplicaDown as exc:
                self.eject(r, exc.message)
                if started or len(tried) > 1 or not self._another(adapter, tried):
                    raise
            except NotFound:
                if started or len(tried) > 1 or not self._lost_adapter(r, adapter):
                    raise
                if not self._another(adapter, tried):
                    raise
            except EngineUnavailable as exc:
                if started:  # cut mid-answer: the replica is suspect; the answer is lost
                    self.eject(r, exc.message)
                raise
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
                self._done(r, adapter)

    # --- models and adapters --------------------------------------------------------------
    def adapters(self) -> list[str]:
        """Adapters of this base model that a replica answering now lists."""
        errors: list[EngineUnavailable] = []
        for r in self._by_health():
            try:
                return r.engine.adapters()
            except EngineUnavailable as exc:
                errors.append(exc)
        raise errors[0] if errors else EngineUnavailable(f"no replica of {self.model!r}")

    def _by_health(self) -> list[Replica]:
        now = time.monotonic()
        return sorted(self.replicas, key=lambda r: (not r.available(now), r.outstanding))

    def health(self) -> EngineHealth:
        """Healthy when at least one replica answers and serves the model."""
        checks = [(r, r.engine.health()) for r in self.replicas]
        ok = [r for r, h in checks if h.ok]
        if len(self.replicas) == 1:
            return checks[0][1]
        detail = "; ".join(h.detail for _, h in checks)
        return EngineHealth(bool(ok), f"{len(ok)}/{len(self.replicas)} replicas up: {detail}")

    def status(self) -> list[dict[str, object]]:
        """Each replica: health, requests in flight, ejection, adapters it still misses."""
        now = time.monotonic()
        with self._lock:
            return [r.describe(now) for r in self.replicas]

    def want(self, wanted: dict[str, str]) -> None:
        """The adapters every replica must serve: served name -> folder as replicas see it."""
        with self._lock:
            self._wanted = dict(wanted)
            for r in self.replicas:
                r.missing &= set(wanted)

    def wanted(self) -> dict[str, str]:
        with self._lock:
            return dict(self._wanted)

    def load_everywhere(self, name: str, path: str) -> None:
        """Load an adapter on every replica and check each lists it; on a failure the replicas
        that loaded it unload it again, and the error says which replica refused."""
        done: list[Replica] = []
        try:
            for r in self.replicas:
                if name in r.engine.model_ids(HEALTH_TIMEOUT * 5):
                    continue  # loaded already (names carry the version: the same files)
                r.engine.load_adapter(name, path)
                done.append(r)
                if name not in r.engine.model_ids(HEALTH_TIMEOUT * 5):
                    raise EngineUnavailable(f"{r.url} loaded {name!r} but does not list it")
        except EngineUnavailable as exc:
            self._undo(done, name)
            where = self._where(exc)
            raise EngineUnavailable(f"adapter {name!r} not loaded on {where}: {exc}") from exc
        except Exception:
            self._undo(done, name)
            raise
        with self._lock:
            for r in self.replicas:
                r.missing.discard(name)

    def _where(self, exc: Exception) -> str:
        return next((r.url for r in self.replicas if r.url in str(exc)), "a replica")

    def _undo(self, done: list[Replica], name: str) -> None:
        for r in done:
            try:
                r.engine.unload_adapter(name)
            except Exception as exc:  # best effort: the poll reconciles what stays
                log.warning("adapter %s not unloaded from %s: %s", name, r.url, exc)

    def unload_everywhere(self, name: str, drain: float = 0.0) -> list[str]:
        """Unload an adapter from every replica that has it; the URLs that could not.

        With `drain` > 0 it first waits, up to that many seconds, for the requests this
        process has in flight on the adapter to end: they finish with it, new ones are routed
        elsewhere by whoever stopped wanting it. An adapter that is wanted (again) when the
        unload would start stays loaded.
        """
        with self._quiet:
            if drain > 0:
                ended = self._quiet.wait_for(lambda: not self._busy.get(name), timeout=drain)
                if not ended:
                    log.warning(
                        "adapter %s still has %d request(s) in flight after %gs; unloading",
                        name,
                        self._busy.get(name, 0),
                        drain,
                    )
            if name in self._wanted:
                # Wanted again meanwhile (a rollback restored it): it stays.
                log.info("adapter %s is wanted again; not unloaded", name)
                return []
        failed = []
        for r in self.replicas:
            try:
                r.engine.unload_adapter(name)
            except NotFound:
                pass  # not there (a restarted replica): nothing to do
            except EngineUnavailable as exc:
                failed.append(r.url)
                log.warning("adapter %s not unloaded from %s: %s", name, r.url, exc)
        return failed

    def poll(self) -> None:
        """Check every replica once: its health, and load there what it must serve but lost."""
        wanted = self.wanted()
        for r in self.replicas:
            try:
                ids = set(r.engine.model_ids(HEALTH_TIMEOUT))
            except EngineUnavailable as exc:
                self.eject(r, exc.message)
                with self._lock:
                    r.models = None
                continue
            if self.model not in ids:
                self.eject(r, f"{r.url} does not serve {self.model!r}")
                continue
            missing = {n for n in wanted if n not in ids}
            with self._lock:
                r.models = ids
                r.missing = set(missing)
            for name in sorted(missing):
                try:
                    r.engine.load_adapter(name, wanted[name])
                except EngineUnavailable as exc:
                    log.warning("adapter %s not reloaded on %s: %s", name, r.url, exc)
                    continue
                with self._lock:
                    r.missing.discard(name)
                log.info("adapter %s loaded again on %s", name, r.url)
            self._recovered(r)
