"""The adapters this process attached on demand, least recently used first."""

from __future__ import annotations

import threading
from collections import OrderedDict


class AttachedAdapters:
    """Engine names of registered adapters attached on first use, in order of last use.

    Only these may be detached to make room: adapters loaded at start or by
    /v1/load_lora_adapter were asked for explicitly and stay.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: OrderedDict[str, str] = OrderedDict()  # engine name -> registry ref

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
