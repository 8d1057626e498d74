"""One chat turn of a dataset record ({"from", "value"} or {"role", "content"}) as a message."""

from __future__ import annotations

from typing import Any

from loraflow.errors import InvalidInput

# Speaker names of ShareGPT, OpenAI-style messages and Gemini, and the role each one is.
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


def turn_message(turn: Any, where: str, hint: str | None = None) -> dict[str, str]:
    """`{"role", "content"}` of one turn; InvalidInput naming `where` when it is not one."""
    if not isinstance(turn, dict):
        raise InvalidInput(f"{where}: expected an object, got {type(turn).__name__}")
    speaker = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    role = ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
    if role is None:
        raise InvalidInput(
            f"{where}: speaker {speaker!r} is not one of {', '.join(ROLES)}", hint=hint
        )
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: missing text ('value' or 'content' must be a string)")
    return {"role": role, "content": text}
