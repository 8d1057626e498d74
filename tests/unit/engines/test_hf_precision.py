"""The local engine with LOCAL_PRECISION bf16 / int8: generates, adapters still apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import HFEngine, load_local_engine, local_precision
from loraflow.errors import ConfigError
from loraflow.hardware import bf16_ruled_out, cpu_info, int8_companion
from loraflow.models.cpu_precision import (
    LowPrecisionLinear,
    activation_ranges,
    apply_cpu_precision,
    calibration_batches,
    int8_prompts_of,
)
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

GREEDY = GenerationParams(max_new_tokens=6, temperature=0, ignore_eos=True)
PROMPTS = ["Hello there", "The sea is", "One two three", "Why is the sky"]


def _engine(model_dir: Path, tmp: Path, adapters: Path, precision: str) -> HFEngine:
    """An engine in `precision`: fp32, bf16, int8 or int8+bf16; "+calibrated" calibrates
    int8 on the fixed text, as the service loads it, "+prompts" runs its prompts in int8."""
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(model_dir), tmp))
    kind, *rest = precision.split("+")
    companion = "bf16" if "bf16" in rest else "fp32"
    ranges = None
    if "calibrated" in rest:
        ranges = activation_ranges(model, calibration_batches(tokenizer))
    apply_cpu_precision(model, kind, companion, ranges, int8_prompts="prompts" in rest)
    engine = HFEngine(model, tokenizer, base_model_name="tiny-llama")
    engine.load_adapter("alpha", adapters / "alpha")
    engine.load_adapter("beta", adapters / "beta")
    return engine


def _step_logits(engine: HFEngine, adapter: str | None) -> torch.Tensor:
    """Logits of one single-token step after a prompt: the path decode runs in int8."""
    from transformers import DynamicCache

    model = engine.model_for_step()
    ids = engine.tokenizer("The sea is", return_tensors="pt")["input_ids"]
    names = [engine._internal(adapter) or "__base__"]
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, adapter_names=names)
        out = model(
            input_ids=ids[:, -1:], past_key_values=cache, use_cache=True, adapter_names=names
        )
    return out.logits[0, -1]


@pytest.mark.parametrize(
    "precision", ["bf16", "int8", "int8+bf16", "int8+calibrated", "int8+bf16+calibrated"]
)
def test_adapter_changes_outputs_as_in_fp32(
    precision: str, tiny_model_dir: Path, adapters_root: Path, tmp_path: Path
) -> None:
    fp32 = _engine(tiny_model_dir, tmp_path, adapters_root, "fp32")
    low = _engine(tiny_model_dir, tmp_path, adapters_root, precision)
    shown = precision.replace("+calibrated", "")
    assert low.precision == shown and fp32.precision == "fp32"
    assert shown in low.health().detail
    for adapter in ("alpha", "beta"):
        want = _step_logits(fp32, adapter) - _step_logits(fp32, None)
        got = _step_logits(low, adapter) - _step_logits(low, None)
        assert want.norm() > 0.1, "the adapter must change the logits"
        assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.95, adapter
        assert low.generate_text("The sea is", GREEDY, adapter).completion_tokens == 6


@pytest.mark.parametrize(
    "precision", ["int8", "int8+bf16", "int8+calibrated", "int8+calibrated+prompts"]
)
def test_int8_mixed_batch_equals_each_adapter_alone(
    precision: str, tiny_model_dir: Path, adapters_root: Path, tmp_path: Path
) -> None:
    engine = _engine(tiny_model_dir, tmp_path, adapters_root, precision)
    if "prompts" in precision:  # with the fp32 companion every prompt product is int8
        assert int8_prompts_of(engine._base)
        assert "prompts int8" in engine.health().detail
    names = [None, "alpha", "beta", "alpha"]
    calibrated = "calibrated" in precision
    jobs = list(zip(PROMPTS, names, strict=True))
    if not calibrated:
        alone = [engine.generate_text(p, GREEDY, a).text for p, a in jobs]
    engine.enable_batching(max_batch=4)
    try:
        if calibrated:
            # Each request alone through the same batching path. (With every linear int8, a
            # last-bit difference between the lean decoder and transformers' forward can move
            # an input across a rounding step; on this random tiny model a near-tie then
            # flips a token, so the comparison stays within one path.)
            alone = [engine.generate_text(p, GREEDY, a).text for p, a in jobs]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            batched = list(
                pool.map(
                    lambda pa: engine.generate_text(pa[0], GREEDY, pa[1]).text,
                    zip(PROMPTS, names, strict=True),
                )
            )
    finally:
        engine.close()
    assert batched == alone
    assert len(set(alone)) > 1


def test_load_local_engine_applies_the_setting(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine, _ = load_local_engine(
        str(tiny_model_dir), tmp_path, "cpu", None, None, precision="int8"
    )
    # Beside int8, what this host's bf16 measured: bf16 on a CPU with fast native bf16.
    companion = int8_companion(tmp_path)
    assert engine.precision == ("int8+bf16" if companion == "bf16" else "int8")
    if bf16_ruled_out(cpu_info()):
        assert companion == "fp32"
    assert engine.generate_text("Hello", GREEDY).completion_tokens == 6
    # Calibrated at load: every linear int8, the LM head and down projections included.
    low = [m for m in engine._base.modules() if isinstance(m, LowPrecisionLinear)]
    assert low and all(m.precision == "int8" and m.smooth is not None for m in low)
    assert {"lm_head", "down_proj"} <= {
        name.rsplit(".", 1)[-1]
        for name, m in engine._base.named_modules()
        if isinstance(m, LowPrecisionLinear)
    }
    assert f"({engine.precision}) with" in engine.health().detail  # calibrated: no note
    # Prompts keep the companion's precision unless LOCAL_INT8_PROMPTS asks for int8, which
    # takes effect without a bf16 companion only; the LM head is int8 for prompts either way.
    assert {m.prompts for m in low} == {"int8", companion}
    engine, _ = load_local_engine(
        str(tiny_model_dir), tmp_path, "cpu", None, None, precision="int8", int8_prompts=True
    )
    low = [m for m in engine._base.modules() if isinstance(m, LowPrecisionLinear)]
    assert {m.prompts for m in low} == ({"int8"} if companion == "fp32" else {"int8", "bf16"})
    engine, _ = load_local_engine(str(tiny_model_dir), tmp_path, "cpu", None, None)
    assert engine.precision == "fp32"


def test_local_precision_auto_reads_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_hardware import AVX2, AVX512_BF16, SLOW_INT8, fake_cpu

    # bf16 slower at batch 32 (as on AVX2), int8 faster at both: int8; neither faster: fp32.
    fake_cpu(monkeypatch, AVX2, bf16=True)
    assert local_precision("auto", tmp_path / "a") == "int8"
    fake_cpu(monkeypatch, {**AVX2, **SLOW_INT8}, bf16=False)
    assert local_precision("auto", tmp_path / "c") == "fp32"
    fake_cpu(monkeypatch, AVX512_BF16, bf16=True)
    assert local_precision("auto", tmp_path / "b") == "bf16"
    assert local_precision("int8", tmp_path) == "int8"
    with pytest.raises(ConfigError, match="LOCAL_PRECISION"):
        local_precision("fp16", tmp_path)


def test_int8_calibration_that_fails_falls_back_to_uncalibrated_int8(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from loraflow.engines.hf import apply_local_precision

    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(tiny_model_dir), tmp_path))

    def broken(text: str, return_tensors: str) -> dict[str, torch.Tensor]:
        # Token ids past the vocabulary: the calibration forward raises in the embedding.
        return {"input_ids": torch.full((1, 8), 10**9)}

    with caplog.at_level("WARNING", logger="loraflow.engines.hf"):
        shown = apply_local_precision(model, "int8", tmp_path, broken, int8_prompts=True)
    assert "int8 calibration failed, running uncalibrated int8" in caplog.text
    assert shown in ("int8", "int8+bf16")
    low = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    assert low and all(m.smooth is None for m in low)
    # The uncalibrated form: the LM head is not int8, and no calibration hook stays behind.
    assert getattr(model.lm_head, "precision", "fp32") != "int8"
    assert not any(m._forward_hooks for m in model.modules())
    # Its prompts keep the companion's precision: int8 prompts are measured calibrated only.
    assert not int8_prompts_of(model)
    engine = HFEngine(model, tokenizer, base_model_name="tiny-llama")
    assert engine.generate_text("Hello", GREEDY).completion_tokens == 6
    # Health says so, where the log line may have scrolled away.
    assert f"({shown}, uncalibrated)" in engine.health().detail


@pytest.mark.parametrize("int8_prompts", [True, False])
def test_the_service_runs_prompts_as_local_int8_prompts_says(
    int8_prompts: bool, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from loraflow.config import Settings
    from loraflow.services import runtime

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # a developer's .env must not decide
        data_dir=tmp_path, cache_dir=tmp_path / "cache", base_model_name=str(tiny_model_dir),
        lora_model_path=tmp_path / "none", local_engine="transformers", local_precision="int8",
        local_int8_prompts=int8_prompts,
    )  # fmt: skip
    assert Settings.model_fields["local_int8_prompts"].default is True
    engine, _ = runtime.load_local(settings, batching=False)
    try:
        # Only without a bf16 companion (a CPU whose bf16 is not fast): there bf16 prompts win.
        expected = int8_prompts and int8_companion(settings.data_path) == "fp32"
        assert int8_prompts_of(engine._base) is expected  # type: ignore[attr-defined]
        assert ("prompts int8" in engine.health().detail) is expected
        assert engine.generate_text("Hello", GREEDY).completion_tokens == 6
    finally:
        engine.close()
