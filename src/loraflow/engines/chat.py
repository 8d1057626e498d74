"""Turn chat messages into the prompt text a tokenizer's chat template expects."""

from __future__ import annotations

from typing import Any

from loraflow.errors import InvalidInput

ROLES = ("system", "user", "assistant")


def check_messages(messages: list[dict[str, str]]) -> None:
    """Raise InvalidInput unless `messages` is a non-empty list of {role, content} strings."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InvalidInput(f"messages[{i}] must be an object with a string 'content'")
        if m.get("role") not in ROLES:
            raise InvalidInput(f"messages[{i}].role={m.get('role')!r} is not one of {list(ROLES)}")


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt for `messages`, ending where the assistant's answer should begin."""
    check_messages(messages)
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not getattr(tokenizer, "chat_template", None):
        # Base (non-chat) models have no template; a plain transcript still gives sane output.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in clean]
        return "\n".join([*lines, "Assistant:"])
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=False)
    except (TemplateError, ValueError) as exc:  # e.g. a template that demands alternating roles
        raise InvalidInput(f"the model's chat template rejected these messages: {exc}") from exc
