"""Small real models for tests: the converted bundled SmolLM2, a tiny random Llama, adapters."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
# Outside tmp so the ~30 s GGUF conversion happens once per checkout, not once per run.
TEST_MODEL_CACHE = REPO_ROOT / ".cache" / "test-models"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def smollm2_folder() -> Path:
    """The converted bundled SmolLM2 folder, converting it if needed."""
    from loraflow.models.resolve import resolve_base_model

    return resolve_base_model("bundled:smollm2", TEST_MODEL_CACHE).path


def build_tiny_model(
    dest: Path, tokenizer_dir: Path, hidden: int = 32, seed: int = 0, context: int = 512
) -> Path:
    """Save a random 2-layer Llama using the real SmolLM2 tokenizer into `dest`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        # Wider than the default 0.02 init, so greedy output varies instead of echoing "\n".
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def make_adapter(base_dir: Path, dest: Path, seed: int) -> Path:
    """Save a LoRA adapter for `base_dir` whose random weights really change its outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(dest)
    return dest
