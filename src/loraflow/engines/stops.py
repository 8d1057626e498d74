"""Stop strings: cut finished text at the first one, and hold back streamed text that might
start one."""

from __future__ import annotations


def truncate_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not hits:
        return text, False
    return text[: min(hits)], True


class StopFilter:
    """Pass streamed pieces through, never emitting text at or past a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        # A stop string not yet complete can only begin in the last len(stop) - 1 characters.
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text from `piece` that is now safe to emit ("" once a stop string was seen)."""
        if self.stopped:
            return ""
        self._buffer += piece
        text, hit = truncate_at_stop(self._buffer, self._stops)
        if hit:
            self.stopped = True
            self._buffer = ""
            return text
        safe = len(self._buffer) - self._hold
        if safe <= 0:
            return ""
        out, self._buffer = self._buffer[:safe], self._buffer[safe:]
        return out

    def flush(self) -> str:
        """The held-back tail, once the stream has ended without a stop string."""
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out
