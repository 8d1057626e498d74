"""Turn a question and retrieved chunks into chat messages that ask for cited answers."""

from __future__ import annotations

from loraflow.errors import InvalidInput
from loraflow.rag.retrieve import RetrievedChunk

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

_WITH_CONTEXT = (
    "Answer the question using the numbered context passages below. "
    "Cite the passages you use as [1], [2], and so on. "
    "If the context does not contain the answer, say so instead of guessing."
)
_WITHOUT_CONTEXT = (
    "No relevant context was found in the knowledge base for this question. "
    "Answer from general knowledge, and say clearly that the answer is not based on "
    "the provided documents."
)
_ELLIPSIS = "…"


def build_rag_messages(
    query: str,
    chunks: list[RetrievedChunk],
    system_prompt: str | None = None,
    max_context_chars: int = 6000,
) -> list[dict[str, str]]:
    """A system and a user message; context blocks past `max_context_chars` are dropped."""
    if max_context_chars < 1:
        raise InvalidInput(f"max_context_chars={max_context_chars!r} must be >= 1")
    persona = (system_prompt or DEFAULT_SYSTEM_PROMPT).strip()
    blocks = _context_blocks(chunks, max_context_chars)
    if not blocks:
        return [
            {"role": "system", "content": f"{persona}\n\n{_WITHOUT_CONTEXT}"},
            {"role": "user", "content": query},
        ]
    context = "\n\n".join(blocks)
    return [
        {"role": "system", "content": f"{persona}\n\n{_WITH_CONTEXT}"},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {query}"},
    ]


def _context_blocks(chunks: list[RetrievedChunk], budget: int) -> list[str]:
    """Numbered blocks in rank order, stopping before the one that would overflow `budget`."""
    blocks: list[str] = []
    used = 0
    for chunk in chunks:
        header = f"[{len(blocks) + 1}] (source: {chunk.source})\n"
        block = header + chunk.text.strip()
        sep = 2 if blocks else 0
        if used + sep + len(block) > budget:
            if not blocks:
                # A single oversized best chunk is cut rather than losing all context.
                room = budget - len(header) - len(_ELLIPSIS)
                if room > 0:
                    blocks.append(header + chunk.text.strip()[:room] + _ELLIPSIS)
            break
        blocks.append(block)
        used += sep + len(block)
    return blocks
