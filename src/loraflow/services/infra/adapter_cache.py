"""The adapters this process attached on demand, least recently used first."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

# How long an adapter handed to a request stays protected if the request never reaches the
# engine (it failed before generating, say).
HANDOFF_GRACE_S = 30.0


class AttachedAdapters:
    """Engine names of registered adapters attached on first use, in order of last use.

    Only these may be detached to make room: adapters loaded at start or by
    /v1/load_lora_adapter were asked for explicitly and stay.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: OrderedDict[str, str] = OrderedDict()  # engine name -> registry ref
        # Adapters handed to requests that have not reached the engine yet: when each was.
        self._handed: dict[str, list[float]] = {}

    def add(self, name: str, ref: str) -> None:
        """Record an on-demand attach as the most recently used."""
        with self._lock:
            self._order[name] = ref
            self._order.move_to_end(name)

    def touch(self, name: str) -> None:
        """Mark `name` as just used (nothing happens for adapters not attached on demand)."""
        with self._lock:
            if name in self._order:
                self._order.move_to_end(name)

    def discard(self, name: str) -> None:
        """Stop tracking `name` (it was detached, or replaced by an explicit load)."""
        with self._lock:
            self._order.pop(name, None)

    def hand_out(self, name: str) -> None:
        """`name` was handed to a request that will reach the engine soon: keep it attached."""
        with self._lock:
            self._handed.setdefault(name, []).append(time.monotonic())

    def arrived(self, name: str) -> None:
        """A request with `name` reached the engine (the engine's own count covers it now)."""
        with self._lock:
            waiting = self._handed.get(name)
            if waiting:
                waiting.pop(0)
                if not waiting:
                    del self._handed[name]

    def handed_out(self) -> set[str]:
        """Adapters handed to requests that have not reached the engine yet."""
        cutoff = time.monotonic() - HANDOFF_GRACE_S
        with self._lock:
            for name in list(self._handed):
                self._handed[name] = [t for t in self._handed[name] if t >= cutoff]
                if not self._handed[name]:
                    del self._handed[name]
            return set(self._handed)

    def oldest_first(self) -> list[tuple[str, str]]:
        """(engine name, registry ref) pairs, least recently used first."""
        with self._lock:
            return list(self._order.items())

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._order

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)
