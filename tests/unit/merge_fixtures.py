"""Tiny models and adapters for the merge tests, plus mergekit run directly as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT = [
    "The capital of France is Paris. Once upon a time there was a tiny model.",
    "def add(a, b): return a + b  # numbers, words and punctuation for the merges",
]


def build_base(dest: Path, hidden: int = 64, seed: int = 0) -> Path:
    """A random 2-layer Llama with a ~300-token byte-level BPE tokenizer, saved to `dest`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXT * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def make_adapter(
    base_dir: Path,
    dest: Path,
    seed: int,
    *,
    r: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    use_rslora: bool = False,
) -> Path:
    """A PEFT LoRA adapter with random A and B (B non-zero), saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        use_rslora=use_rslora,
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(dest)
    return dest


def fold(base_dir: Path, adapter_dir: Path, dest: Path) -> Path:
    """base + adapter as one plain model folder (PEFT merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(dest)
    return dest


def run_mergekit(config: dict[str, Any], dest: Path, seed: int = 0) -> dict[str, Any]:
    """mergekit's own merge of full models; returns the merged tensors."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(
        random_seed=seed, copy_tokenizer=False, write_model_card=False, quiet=True
    )
    run_merge(MergeConfiguration.model_validate(config), str(dest), options)
    return load_tensors(dest)


def load_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of the *.safetensors files in `folder`."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def logits(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """Logits of a fixed prompt for a model folder, optionally with an adapter (vanilla PEFT)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = tokenizer("Once upon a time, the capital", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def dense_deltas(adapter_dir: Path) -> dict[str, Any]:
    """Module path -> scaling * B @ A (float64) of a saved adapter, computed from its files."""
    import json
    import math

    from safetensors.torch import load_file

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        alpha = config["lora_alpha"]
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        out[module] = (b.double() @ a.double()) * scaling
    return out
