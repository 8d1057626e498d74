"""A pair's prompt computed once gives the log-probs, losses and gradients of separate passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraflow.datasets.encode import encode_prompt_answers
from loraflow.training.preference import (
    GroupCollator,
    answer_logps,
    preference_loss,
    use_group_attention,
)

PAIRS = [
    ("Name a river", "The Nile.", "A mountain."),
    ("2+2?", "4", "It is five, I think."),
    ("Say hi", "Hello there!", "No."),
]


def _lora_model(tiny_llama_dir: Path, kv_heads: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.num_key_value_heads = kv_heads
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.manual_seed(0)
    return get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )


def _features(tiny_llama_dir: Path) -> list[dict]:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    out = []
    for q, good, bad in PAIRS:
        prompt = [{"role": "user", "content": q}]
        answers = [[{"role": "assistant", "content": a}] for a in (good, bad)]
        enc = encode_prompt_answers(prompt, answers, tok, 512)
        assert enc is not None
        out.append({"prompt": enc.prompt, "answers": enc.answers})
    return out


def _separate_logps(model, feats: list[dict]) -> torch.Tensor:
    """Each answer's summed log-prob from its own full forward pass (prompt + answer)."""
    rows = []
    for f in feats:
        row = []
        for answer in f["answers"]:
            ids = torch.tensor([f["prompt"] + answer])
            logits = model(input_ids=ids).logits[0, len(f["prompt"]) - 1 : -1]
            logp = torch.log_softmax(logits.float(), -1)
            row.append(logp.gather(-1, torch.tensor(answer)[:, None]).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_shared_prompt_gives_the_separate_log_probs_loss_and_gradients(
    tiny_llama_dir: Path, kv_heads: int
) -> None:
    model = _lora_model(tiny_llama_dir, kv_heads)
    model.eval()
    feats = _features(tiny_llama_dir)
    batch = GroupCollator()(feats)
    # Each prompt appears once in the packed row, not once per answer.
    prompt_tokens = sum(len(f["prompt"]) for f in feats)
    answer_tokens = sum(len(a) for f in feats for a in f["answers"])
    assert batch["input_ids"].shape[1] == prompt_tokens + answer_tokens - len(feats)
    ref = torch.zeros(len(feats), 2) - 3.0

    def loss_and_grads(logps: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        loss, _ = preference_loss(
            "dpo", 0.1, "sigmoid", logps, torch.ones_like(logps), ref, batch["label"]
        )
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        return loss.item(), grads

    separate = _separate_logps(model, feats)
    expected = loss_and_grads(separate)
    use_group_attention(model)
    packed, counts = answer_logps(model, batch)
    assert counts.tolist() == [[len(a) for a in f["answers"]] for f in feats]
    assert torch.allclose(packed, separate.detach(), atol=1e-4)
    got = loss_and_grads(packed)
    assert abs(got[0] - expected[0]) < 1e-5
    for a, b in zip(expected[1], got[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_losses_prefer_the_chosen_answer() -> None:
    counts = torch.full((2, 2), 4.0)
    ref = torch.full((2, 2), -10.0)
    label = torch.tensor([1, 1])
    good = torch.tensor([[-8.0, -12.0], [-9.0, -11.0]])
    bad = good.flip(1)
    for method, loss_type in [
        ("dpo", "sigmoid"),
        ("dpo", "ipo"),
        ("dpo", "hinge"),
        ("orpo", "sigmoid"),
    ]:
        lg, mg = preference_loss(method, 0.5, loss_type, good, counts, ref, label)
        lb, mb = preference_loss(method, 0.5, loss_type, bad, counts, ref, label)
        assert lg < lb, (method, loss_type)
        assert mg["accuracy"] == 1.0 and mb["accuracy"] == 0.0
        assert mg["margin"] > 0 > mb["margin"]
    # KTO: a desirable answer gains, an undesirable one loses probability: lower loss.
    kto_label = torch.tensor([1, 0])
    right = torch.tensor([[-8.0, -10.0], [-12.0, -10.0]])
    wrong = torch.tensor([[-12.0, -10.0], [-8.0, -10.0]])
    lr, mr = preference_loss("kto", 0.5, "sigmoid", right, counts, ref, kto_label)
    lw, mw = preference_loss("kto", 0.5, "sigmoid", wrong, counts, ref, kto_label)
    assert lr < lw and mr["accuracy"] == 1.0 and mw["accuracy"] == 0.0
