"""Chunking for the knowledge base: the shared splitter lives in `loraflow.text`."""

from __future__ import annotations

from loraflow.config import CHUNK_SIZE_RANGE
from loraflow.errors import InvalidInput
from loraflow.text import Chunk, check_chunk_params, split_text

__all__ = ["Chunk", "check_chunk_params", "check_kb_chunking", "split_text"]


def check_kb_chunking(
    size: int | None,
    overlap: int | None,
    names: tuple[str, str] = ("chunk_size", "chunk_overlap"),
) -> None:
    """Raise InvalidInput unless a knowledge base may use these: a size in CHUNK_SIZE_RANGE and
    an overlap from 0 to below the size. `names` are the caller's names for the two fields, so
    the message points at what the user typed (an option, a JSON field, a form field)."""
    lo, hi = CHUNK_SIZE_RANGE
    size_name, overlap_name = names
    if not isinstance(size, int) or isinstance(size, bool) or not lo <= size <= hi:
        raise InvalidInput(f"{size_name} must be a whole number from {lo} to {hi}; {_is(size)}")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < size:
        raise InvalidInput(
            f"{overlap_name} must be a whole number from 0 to {size - 1}, less than the "
            f"chunk size; {_is(overlap)}"
        )


def _is(value: object) -> str:
    return "it is empty" if value is None else f"it is {value!r}"
