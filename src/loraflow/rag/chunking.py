"""Chunking for the knowledge base: the shared splitter lives in `loraflow.text`."""

from __future__ import annotations

from loraflow.text import Chunk, check_chunk_params, split_text

__all__ = ["Chunk", "check_chunk_params", "split_text"]
