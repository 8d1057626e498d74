"""Turn examples into token ids and labels: loss on assistant turns only, or on all raw text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraflow.datasets.formats import Example

IGNORE = -100  # label value the loss skips (PyTorch's cross_entropy default)


@dataclass
class Encoded:
    """Token ids and labels (IGNORE where no loss) of one training sequence."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode_examples(examples: list[Example], tokenizer: Any, max_len: int) -> list[Encoded]:
    """Encode every example; sequences are cut at `max_len`, ones left with no target dropped."""
    out: list[Encoded] = []
    for ex in examples:
        if "messages" in ex:
            pieces = [_encode_chat(ex["messages"], tokenizer, max_len)]
        else:
            pieces = _encode_text(ex["text"], tokenizer, max_len)
        out.extend(p for p in pieces if p.n_target > 0)
    return out


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    # A tokenizer without a template gets a plain ChatML-like layout.
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return text + ("<|assistant|>\n" if generation_prompt else "")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_chat(messages: list[dict], tokenizer: Any, max_len: int) -> Encoded:
    full = _ids(tokenizer, _render(tokenizer, messages, False))
    labels = [IGNORE] * len(full)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        # The template is prefix-stable, so each assistant turn is the span between the
        # prompt that precedes it and the conversation that ends with it.
        start = len(_ids(tokenizer, _render(tokenizer, messages[:i], True)))
        end = len(_ids(tokenizer, _render(tokenizer, messages[: i + 1], False)))
        labels[start:end] = full[start:end]
    return Encoded(full[:max_len], labels[:max_len])


def _encode_text(text: str, tokenizer: Any, max_len: int) -> list[Encoded]:
    ids = _ids(tokenizer, text)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    # Long raw text becomes several windows instead of being cut, so nothing is lost.
    return [
        Encoded(ids[i : i + max_len], ids[i : i + max_len]) for i in range(0, len(ids), max_len)
    ]


@dataclass
class EncodedAnswers:
    """A prompt's token ids and the ids of the answers that continue it.

    Pairs have two answers (chosen, rejected); a KTO example one, plus the answer of another
    example used to estimate the KL reference point.
    """

    prompt: list[int]
    answers: list[list[int]]


def encode_prompt_answers(
    prompt: list[dict], answers: list[list[dict]], tokenizer: Any, max_len: int
) -> EncodedAnswers | None:
    """Encode a prompt and its answers (assistant turns); None when nothing fits `max_len`.

    Answers are cut so that prompt + answer fits `max_len`; a prompt that leaves no room for
    at least one answer token drops the example.
    """
    head = _ids(tokenizer, _render(tokenizer, prompt, True))
    if len(head) + 1 > max_len:
        return None
    out = []
    for answer in answers:
        full = _ids(tokenizer, _render(tokenizer, prompt + answer, False))
        # The template is prefix-stable: the answer is what follows the rendered prompt.
        tail = (
            full[len(head) :]
            if full[: len(head)] == head
            else _ids(tokenizer, answer[-1]["content"])
        )
        if not tail:
            return None
        out.append(tail[: max_len - len(head)])
    return EncodedAnswers(head, out)
