"""The lean decoder: the same tokens as transformers, per-row adapters, reused prompt prefixes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from loraflow.engines.base import GenerationParams
from loraflow.engines.decoder import Chunk, LeanDecoder, PrefixStore, SlotCache
from loraflow.engines.hf import HFEngine
from loraflow.engines.prompt_grid import (
    LEAN_GRID,
    LEAN_WAIT_TOKENS,
    common_prefix,
    grid_chunks,
    grid_floor,
    reusable,
)
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

GREEDY = GenerationParams(max_new_tokens=12, temperature=0, ignore_eos=True)
SYSTEM = (
    "You are the support assistant of a bicycle shop. Answer in one short paragraph, "
    "politely, using only facts from the shop's handbook, and say so when you do not know. "
    "The shop repairs and sells city bikes, road bikes and children's bikes, and rents "
    "them out by the day; opening hours and prices are in the handbook."
)


def _tiny(dest: Path, tokenizer_dir: Path, arch: str, seed: int) -> Path:
    """A random 2-layer model of `arch` with grouped-query attention (2 key/value heads)."""
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))  # q/k/v with bias
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def _lora(base_dir: Path, dest: Path, seed: int, **kw: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(lora_dropout=0.0, init_lora_weights=False, **kw)  # type: ignore[arg-type]
    get_peft_model(base, config).save_pretrained(dest)
    return dest


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "one-product-a-part"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decode_steps_match_transformers_for_mixed_adapters(
    arch: str, fused: bool, smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraflow.engines import decoder

    if not fused:
        # As for bases that cannot fuse (different kinds or precisions): q, k and v apart.
        monkeypatch.setattr(decoder, "_fused_base", lambda bases: None)

    base_dir = _tiny(tmp_path / "m", smollm2_dir, arch, seed=3)
    # Different ranks, scalings and targets (attention and MLP) in one batch.
    a = _lora(base_dir, tmp_path / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    b = _lora(base_dir, tmp_path / "b", 2, r=8, lora_alpha=4,
              target_modules=["k_proj", "o_proj", "down_proj", "gate_proj"])  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, a, adapter_name="a")
    model.load_adapter(str(b), adapter_name="b")
    model.eval()
    lean = LeanDecoder.build(model, base)
    assert lean is not None
    assert len(lean.layers[0].qkv) == (1 if fused else 3)
    rows = [None, "a", "b", "a"]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 300, (n,), generator=gen).tolist() for n in (5, 9, 3, 12)]
    cache = SlotCache(len(lean.layers), lean.kv_heads, lean.head_dim, lean.dtype, lean.device)
    slot = {None: 0, **lean.slots}
    nxt = []
    for i, (ids, name) in enumerate(zip(prompts, rows, strict=True)):
        nxt.append(int(lean.prefill(cache, i, ids, 0, slot[name]).argmax()))

    # The same prompts cut after their second token (so second chunks start at different
    # positions): second chunks run alone, and as one padded pass. The same keys and values
    # (a product over more rows may round differently in the last bits, as a decode step's
    # does) and the same next tokens.
    def cut(cache: SlotCache) -> None:
        for i, (ids, name) in enumerate(zip(prompts, rows, strict=True)):
            lean.prefill(cache, i, ids[:2], 0, slot[name])

    def new_cache() -> SlotCache:
        return SlotCache(len(lean.layers), lean.kv_heads, lean.head_dim, lean.dtype, lean.device)

    alone, together = new_cache(), new_cache()
    cut(alone)
    cut(together)
    alone_next = [int(lean.prefill(alone, i, ids[2:], 2, slot[name]).argmax())
                  for i, (ids, name) in enumerate(zip(prompts, rows, strict=True))]  # fmt: skip
    chunks = [Chunk(i, ids[2:], 2, slot[name])
              for i, (ids, name) in enumerate(zip(prompts, rows, strict=True))]  # fmt: skip
    joint = lean.prefill_many(together, chunks)
    # The base products of that pass skip the padding (PACK_PADDING); with the padding run
    # through them as well the pass gives the same logits.
    import loraflow.engines.decoder as decoder_module

    padded = new_cache()
    cut(padded)
    with monkeypatch.context() as patch:
        patch.setattr(decoder_module, "PACK_PADDING", False)
        assert torch.allclose(lean.prefill_many(padded, chunks), joint, rtol=0, atol=1e-5)
    for i, ids in enumerate(prompts):
        for a_store, t_store in ((alone.k, together.k), (alone.v, together.v)):
            for a_layer, t_layer in zip(a_store, t_store, strict=True):
                a_i, t_i = a_layer[i, :, : len(ids)], t_layer[i, :, : len(ids)]
                assert torch.allclose(a_i, t_i, rtol=0, atol=1e-5), i
    assert [int(x) for x in joint.argmax(-1)] == alone_next
    seqs = [p + [t] for p, t in zip(prompts, nxt, strict=True)]
    for _ in range(6):
        logits = lean.decode(cache, [s[-1] for s in seqs], [len(s) - 1 for s in seqs],
                             [slot[n] for n in rows])  # fmt: skip
        for i, s in enumerate(seqs):
            # transformers over the whole sequence, this row's adapter alone.
            with torch.inference_mode():
                ref = model(input_ids=torch.tensor([s]), adapter_names=[rows[i] or "__base__"])
            assert torch.allclose(logits[i], ref.logits[0, -1], atol=1e-4), (i, rows[i])
            s.append(int(logits[i].argmax()))
    assert len({tuple(s) for s in seqs}) == 4


def test_dora_and_saved_modules_are_left_to_transformers(smollm2_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = _tiny(tmp_path / "m", smollm2_dir, "llama", seed=3)
    dora = _lora(base_dir, tmp_path / "d", 1, r=4, target_modules=["q_proj"], use_dora=True)
    head = _lora(base_dir, tmp_path / "h", 2, r=4, target_modules=["q_proj"],
                 modules_to_save=["lm_head"])  # fmt: skip
    for folder in (dora, head):
        base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
        model = PeftModel.from_pretrained(base, folder, adapter_name="x").eval()
        assert LeanDecoder.build(model, base) is None
    plain = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    assert LeanDecoder.build(plain, plain) is not None


def _engine(model_dir: Path, adapters_root: Path, tmp: Path, lean: bool | None) -> HFEngine:
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(model_dir), tmp))
    engine = HFEngine(model, tokenizer, base_model_name="tiny-llama")
    engine.load_adapter("alpha", adapters_root / "alpha")
    engine.load_adapter("beta", adapters_root / "beta")
    if lean is not None:
        engine.enable_batching(max_batch=8, lean=lean)
    return engine


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path, adapters_root: Path, tmp_path_factory) -> HFEngine:
    return _engine(tiny_model_dir, adapters_root, tmp_path_factory.mktemp("p"), None)


@pytest.fixture()
def lean(tiny_model_dir: Path, adapters_root: Path, tmp_path: Path) -> HFEngine:
    engine = _engine(tiny_model_dir, adapters_root, tmp_path, True)
    yield engine
    engine.close()


def _chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_a_shared_system_prompt_is_computed_once_per_adapter(
    plain: HFEngine, lean: HFEngine, tiny_model_dir: Path, adapters_root: Path, tmp_path: Path
) -> None:
    lean_dir = (tiny_model_dir, adapters_root)
    sched = lean._scheduler
    first = lean.generate(_chat("Do you repair brakes?"), GREEDY, adapter="alpha")
    assert sched._lean is not None, "the tiny Llama with plain LoRA runs on the lean decoder"
    assert (sched.prefill_reused, sched.prefill_computed) == (0, first.prompt_tokens)
    second = lean.generate(_chat("When do you open on Sundays?"), GREEDY, adapter="alpha")
    # The chat template and system prompt were copied, not computed, up to the last fixed
    # chunk boundary the two prompts share.
    ids = [lean._prepare(_chat(q), GREEDY, "alpha")["input_ids"][0].tolist()
           for q in ("Do you repair brakes?", "When do you open on Sundays?")]  # fmt: skip
    shared = grid_floor(common_prefix(*ids), LEAN_GRID)
    assert shared >= 64 and sched.prefill_reused == shared
    assert sched.prefill_computed == first.prompt_tokens + second.prompt_tokens - shared
    # Another adapter's keys and values differ: nothing is shared across adapters.
    reused = sched.prefill_reused
    lean.generate(_chat("Do you sell helmets?"), GREEDY, adapter="beta")
    assert sched.prefill_reused == reused
    # Reuse changes nothing in the answers: a fresh engine (nothing to reuse) and
    # transformers alone give the same ones.
    fresh = _engine(lean_dir[0], lean_dir[1], tmp_path, True)
    try:
        for question, answer in [("Do you repair brakes?", first),
                                 ("When do you open on Sundays?", second)]:  # fmt: skip
            alone = plain.generate(_chat(question), GREEDY, adapter="alpha")
            new = fresh.generate(_chat(question), GREEDY, adapter="alpha")
            assert answer.text == alone.text == new.text
            assert fresh._scheduler.prefill_reused == 0
            fresh.close()
            fresh = _engine(lean_dir[0], lean_dir[1], tmp_path, True)
    finally:
        fresh.close()


def test_adapters_attached_and_detached_mid_batch(
    plain: HFEngine, lean: HFEngine, adapters_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Long enough that the row is still decoding when the test takes the lock after its
    # first piece (a handful of steps at most run in between).
    long = GenerationParams(max_new_tokens=300, temperature=0, ignore_eos=True)
    expected = plain.generate(_chat("Tell me about gears."), long, adapter="alpha").text
    gamma = _lora(tiny_model_dir, tmp_path / "gamma", 5, r=2, target_modules=["v_proj"])
    with lean._lock:  # the batch waits between two steps
        stream = lean.stream(_chat("Tell me about gears."), long, adapter="alpha")
    pieces = [next(stream)]  # decoding on the lean decoder now
    with lean._lock:
        assert lean._scheduler._rows, "alpha's row is still decoding"
        lean._load_locked("gamma", gamma)
    joined = lean.generate(_chat("Hi"), GREEDY, adapter="gamma")
    lean.unload_adapter("beta")
    pieces.extend(stream)
    assert "".join(pieces) == expected
    assert lean._scheduler._lean is not None
    plain.load_adapter("gamma", gamma)
    try:
        assert joined.text == plain.generate(_chat("Hi"), GREEDY, adapter="gamma").text
    finally:
        plain.unload_adapter("gamma")


def test_a_dora_adapter_attached_mid_batch_hands_rows_to_transformers(
    plain: HFEngine, lean: HFEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    long = GenerationParams(max_new_tokens=300, temperature=0, ignore_eos=True)
    jobs = [("Tell me about gears.", "alpha"), ("What is a chain?", None), ("Hi", "beta")]
    expected = [plain.generate(_chat(q), long, adapter=a).text for q, a in jobs]
    with lean._lock:  # all three join the batch in its first step
        streams = [lean.stream(_chat(q), long, adapter=a) for q, a in jobs]
    texts = [next(s) for s in streams]
    dora = _lora(tiny_model_dir, tmp_path / "dora", 6, r=2, target_modules=["q_proj"],
                 use_dora=True)  # fmt: skip
    with lean._lock:  # between two steps, with every row still decoding
        assert len(lean._scheduler._rows) == 3
        lean._load_locked("dora", dora)
    done: list[str] = [""] * len(streams)

    def finish(i: int) -> None:
        done[i] = texts[i] + "".join(streams[i])

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert done == expected
    assert lean._scheduler._lean is None  # the batch went on with transformers
    # New requests are served there too, with the same answers.
    again = lean.generate(_chat("Hi"), GREEDY, adapter="beta").text
    assert again == plain.generate(_chat("Hi"), GREEDY, adapter="beta").text


def test_qkv_and_gate_up_run_as_one_product_over_shared_weights(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    """Fusing keeps one copy of the weights (the model's own read views of the fused one),
    and a weight replaced since (a new tensor) is fused anew, not read stale."""
    from transformers import AutoModelForCausalLM

    from loraflow.models.cpu_precision import apply_cpu_precision

    base_dir = _tiny(tmp_path / "m", smollm2_dir, "qwen2", seed=5)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    apply_cpu_precision(model, "int8")
    attn = model.model.layers[0].self_attn
    ids = torch.tensor([[5, 9, 14, 3, 7, 2]])
    with torch.inference_mode():
        want = model(ids).logits[0, -1]
    decoder = LeanDecoder.build(model, model)
    assert decoder is not None
    (qkv,) = decoder.layers[0].qkv
    (gate_up,) = decoder.layers[0].gate_up
    assert qkv.sizes == [64, 32, 32] and len(gate_up.sizes) == 2
    fused = qkv.base.weight
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        part = getattr(attn, name)
        assert part.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        assert torch.equal(part.weight, fused[sum(qkv.sizes[:i]) : sum(qkv.sizes[: i + 1])])
        assert part.bias is not None  # qwen2's q/k/v biases are fused too
    with torch.inference_mode():
        # The model's own forward reads the same numbers as before fusing.
        assert torch.equal(model(ids).logits[0, -1], want)
        cache = SlotCache(2, decoder.kv_heads, decoder.head_dim, decoder.dtype, decoder.device)
        got = decoder.prefill(cache, 0, ids[0].tolist(), 0, 0)
    assert torch.allclose(got, want, atol=1e-4)
    # Built again for the same weights: the same fused linear, nothing copied.
    again = LeanDecoder.build(model, model)
    assert again is not None and again.layers[0].qkv[0].base is qkv.base
    with torch.no_grad():
        attn.k_proj.weight.data = attn.k_proj.weight.detach().clone() * 2
    fresh = LeanDecoder.build(model, model)
    assert fresh is not None and fresh.layers[0].qkv[0].base is not qkv.base
    k_rows = fresh.layers[0].qkv[0].base.weight[64:96]
    assert torch.equal(k_rows, attn.k_proj.weight)


def test_calibrated_int8_still_fuses_and_its_lm_head_reads_each_position_alone(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    """Calibration gives q/k/v (and gate/up) one smoothing factor, so they still run as one
    product; the LM head quantizes each position on its own, so logits for a whole prompt
    and for its last position alone agree (the lean decoder asks for the last only)."""
    from transformers import AutoModelForCausalLM

    from loraflow.models.cpu_precision import (
        LowPrecisionLinear,
        activation_ranges,
        apply_cpu_precision,
    )

    base_dir = _tiny(tmp_path / "m", smollm2_dir, "llama", seed=3)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    ids = torch.tensor([[5, 9, 14, 3, 7, 2, 11, 4]])
    apply_cpu_precision(model, "int8", ranges=activation_ranges(model, [ids]), int8_prompts=True)
    head = model.lm_head
    assert isinstance(head, LowPrecisionLinear) and head.smooth is not None
    decoder = LeanDecoder.build(model, model)
    assert decoder is not None
    for layer in decoder.layers:
        assert len(layer.qkv) == 1 and len(layer.qkv[0].sizes) == 3
        assert len(layer.gate_up) == 1 and len(layer.gate_up[0].sizes) == 2
        assert layer.qkv[0].base.smooth is not None
        # The fused products keep the parts' prompt precision (LOCAL_INT8_PROMPTS).
        assert layer.qkv[0].base.prompts == layer.gate_up[0].base.prompts == "int8"
    cache = SlotCache(
        len(decoder.layers), decoder.kv_heads, decoder.head_dim, decoder.dtype, decoder.device
    )
    with torch.inference_mode():
        # The prompt through the lean decoder's int8 products gives transformers' logits.
        lean = decoder.prefill(cache, 0, ids[0].tolist(), 0, 0)
        want = model(input_ids=ids).logits[0, -1]
        assert (lean - want).abs().max() <= 1e-3 * want.abs().max()
        hidden = torch.randn(1, 6, head.in_features)
        whole = head(hidden)
        assert torch.equal(whole[:, -1:], head(hidden[:, -1:]))


def test_saved_prompts_keep_only_what_a_later_prompt_can_reuse() -> None:
    """Reuse stops at a chunk boundary, so a prompt is kept up to its last one: one under
    the first boundary (16) is not kept, one of 40 tokens is kept up to 16, and two that share
    their first 64 tokens (a system prompt) are kept once."""
    cache = SlotCache(1, 1, 2, torch.float32, "cpu")
    cache.ensure(2, 256)
    cache.k[0][0, 0, :, 0] = torch.arange(256.0)
    store = PrefixStore(budget=4096, min_tokens=16)
    system = list(range(1000, 1064))
    store.save("a", list(range(15)), cache, 0)
    assert store.held == 0
    store.save("a", list(range(40)), cache, 0)
    assert store.held == 16
    assert store.lookup("a", [*range(20), 99])[0] == 16
    store = PrefixStore(budget=4096, min_tokens=16)
    store.save("a", system + [1, 2, 3, 4, 5, 6], cache, 0)
    store.save("a", system + [7, 8, 9], cache, 0)
    assert store.held == 64
    shared, kv = store.lookup("a", system + [9, 9, 9])
    assert shared == 64 and kv is not None
    assert torch.equal(kv[0][0][0, :, 0], torch.arange(64.0))
    assert store.lookup("b", system + [9, 9, 9]) == (0, None)  # another adapter's


def test_a_short_shared_prefix_leaves_a_conversation_whole() -> None:
    """Nearly every chat prompt shares a template's first 16 tokens: a request that matches a
    kept conversation only there must not cut it down, or its next turn recomputes it all."""
    cache = SlotCache(1, 1, 2, torch.float32, "cpu")
    cache.ensure(1, 1024)
    cache.k[0][0, 0, :, 0] = torch.arange(1024.0)
    store = PrefixStore(budget=4096, min_tokens=16)
    template = list(range(1000, 1016))
    conversation = template + list(range(2000, 2600))
    store.save("a", conversation, cache, 0)  # kept up to 512
    shared, kv = store.lookup("a", [*template, 7, 8, 9, 10, 11])
    assert shared == 16 and kv is not None
    assert torch.equal(kv[0][0][0, :, 0], torch.arange(16.0))
    shared, _ = store.lookup("a", [*conversation, 5, 6])  # the conversation's next turn
    assert shared == 512
    assert store.held == 512 + 16


def test_a_prefix_cut_to_one_already_kept_is_not_counted_twice() -> None:
    """A long prompt matched only up to its system prompt is cut to it; where that system
    prompt is kept already, the store keeps one entry and counts its positions once, so its
    budget does not shrink request by request."""
    cache = SlotCache(1, 1, 2, torch.float32, "cpu")
    cache.ensure(1, 1024)
    store = PrefixStore(budget=4096, min_tokens=16)
    system = list(range(1000, 1064))
    store.save("a", system + list(range(2000, 2500)), cache, 0)  # kept up to 512
    store.save("a", system + [1, 2, 3, 4, 5, 6], cache, 0)  # kept up to 64
    assert store.held == 512 + 64
    for question in range(5):
        shared, kv = store.lookup("a", system + [7, 8, question])
        assert shared == 64 and kv is not None
    assert store.held == 64


def test_prompts_that_arrive_together_are_run_in_one_pass_and_answer_as_alone(
    plain: HFEngine, lean: HFEngine
) -> None:
    jobs = [("Hi", None), ("Tell me about gears.", "alpha"), ("Do you rent tandems?", "beta"),
            ("Where are you?", "alpha")]  # fmt: skip
    alone = [plain.generate([{"role": "user", "content": q}], GREEDY, adapter=a).text
             for q, a in jobs]  # fmt: skip
    sched = lean._scheduler
    with lean._lock:  # the batch waits: all four are queued before the next step
        streams = [lean.stream([{"role": "user", "content": q}], GREEDY, adapter=a)
                   for q, a in jobs]  # fmt: skip
        passes = sched.prefill_passes
    assert ["".join(s) for s in streams] == alone
    # Each templated prompt is cut once (at 16): each chunk ran as one pass for all four.
    assert sched.prefill_passes - passes == 2


def test_a_prompt_sharing_a_long_prefix_with_one_joining_with_it_waits_to_reuse_it(
    plain: HFEngine, lean: HFEngine
) -> None:
    questions = ["Do you repair brakes?", "Do you sell helmets?", "Are you open today?"]
    sched = lean._scheduler
    with lean._lock:
        streams = [lean.stream(_chat(q), GREEDY, adapter="alpha") for q in questions]
        reused = sched.prefill_reused
    texts = ["".join(s) for s in streams]
    ids = [lean._prepare(_chat(q), GREEDY, "alpha")["input_ids"][0].tolist()
           for q in questions[:2]]  # fmt: skip
    shared = grid_floor(common_prefix(*ids), LEAN_GRID)
    # The system prompt was computed for the first and copied for the other two.
    assert shared >= 64 and sched.prefill_reused - reused == 2 * shared
    assert texts == [plain.generate(_chat(q), GREEDY, adapter="alpha").text for q in questions]


def test_prompts_sharing_a_short_prefix_join_at_once_and_a_later_one_reuses_it(
    plain: HFEngine, lean: HFEngine
) -> None:
    def chat(question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": "You help at a bicycle shop."},
                {"role": "user", "content": question}]  # fmt: skip

    questions = ["Do you repair brakes?", "Do you sell helmets?", "Do you rent tandems?"]
    ids = [lean._prepare(chat(q), GREEDY, "beta")["input_ids"][0].tolist() for q in questions]
    shared = reusable(ids[0], ids[1], LEAN_GRID)
    assert 16 <= shared < LEAN_WAIT_TOKENS
    sched = lean._scheduler
    with lean._lock:
        streams = [lean.stream(chat(q), GREEDY, adapter="beta") for q in questions[:2]]
        reused, passes = sched.prefill_reused, sched.prefill_passes
    texts = ["".join(s) for s in streams]
    # Too short a share to wait for: both ran in the same passes, each computed in full.
    assert sched.prefill_passes - passes == len(list(grid_chunks(0, len(ids[0]), LEAN_GRID)))
    assert sched.prefill_reused == reused
    # A later prompt finds it saved.
    texts.append(lean.generate(chat(questions[2]), GREEDY, adapter="beta").text)
    assert sched.prefill_reused - reused == reusable(ids[0], ids[2], LEAN_GRID) >= 16
    assert texts == [plain.generate(chat(q), GREEDY, adapter="beta").text for q in questions]


def test_a_failed_pass_is_run_again_prompt_by_prompt(
    plain: HFEngine, lean: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = LeanDecoder.prefill_many

    def no_passes_of_several(self: LeanDecoder, cache: SlotCache, chunks: list) -> torch.Tensor:
        if len(chunks) > 1:
            raise RuntimeError("out of memory")
        return run(self, cache, chunks)

    monkeypatch.setattr(LeanDecoder, "prefill_many", no_passes_of_several)
    jobs = [("Hi", "beta"), ("Tell me about gears.", "alpha")]
    with lean._lock:
        streams = [lean.stream([{"role": "user", "content": q}], GREEDY, adapter=a)
                   for q, a in jobs]  # fmt: skip
    texts = ["".join(s) for s in streams]
    assert texts == [plain.generate([{"role": "user", "content": q}], GREEDY, adapter=a).text
                     for q, a in jobs]  # fmt: skip
