"""The host profile: capability read, micro-benchmark cached once per host, precision picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow import hardware
from loraflow.errors import ConfigError
from tests.unit.threads import HAS_PROC, on_new_thread, os_threads, settled

AVX2 = {
    "gemm_fp32_ms": 1.5, "gemm_bf16_ms": 300.0,
    "linear_fp32_b1_ms": 2.4, "linear_int8_b1_ms": 0.6, "linear_bf16_b1_ms": 1.2,
    "linear_fp32_b32_ms": 9.0, "linear_int8_b32_ms": 4.2, "linear_bf16_b32_ms": 31.0,
}  # fmt: skip
AVX512_BF16 = {
    "gemm_fp32_ms": 1.2, "gemm_bf16_ms": 0.3,
    "linear_fp32_b1_ms": 1.8, "linear_int8_b1_ms": 0.2, "linear_bf16_b1_ms": 0.7,
    "linear_fp32_b32_ms": 3.9, "linear_int8_b32_ms": 0.6, "linear_bf16_b32_ms": 1.1,
}  # fmt: skip


# A CPU whose int8 kernel is no faster than fp32 (fbgemm has none off x86).
SLOW_INT8 = {"linear_int8_b1_ms": 2.0, "linear_int8_b32_ms": 12.0}


def _profile(bench: dict[str, float]) -> dict:
    return {"speedup": hardware.speedups(bench)}


def fake_cpu(monkeypatch: pytest.MonkeyPatch, bench: dict[str, float], bf16: bool) -> None:
    """Pretend to run on an x86 CPU with (or without) native bf16, measuring `bench`."""
    real = hardware.cpu_info()
    flags = ["avx2", "avx512_bf16", "avx512f"] if bf16 else ["avx2"]
    info = {**real, "arch": "x86_64", "isa": "AVX512" if bf16 else "AVX2", "flags": flags,
            "bf16_native": bf16, "cpu": f"fake {bf16}"}  # fmt: skip
    monkeypatch.setattr(hardware, "cpu_info", lambda: info)
    monkeypatch.setattr(hardware, "micro_benchmark", lambda: bench)


def test_cpu_info_names_the_capability() -> None:
    info = hardware.cpu_info()
    assert info["isa"] in {"DEFAULT", "VSX", "Z VECTOR", "NEON", "SVE256", "AVX2", "AVX512"}
    assert info["cores"] >= 1 and info["threads"] >= 1
    assert set(info["flags"]) <= set(hardware.FLAGS)


def test_profile_is_measured_once_and_reused(tmp_path: Path) -> None:
    calls: list[int] = []

    def bench() -> dict[str, float]:
        calls.append(1)
        return AVX2

    first = hardware.host_profile(tmp_path, bench=bench)
    again = hardware.host_profile(tmp_path, bench=bench)
    assert calls == [1]
    assert first == again
    saved = json.loads((tmp_path / hardware.PROFILE_FILE).read_text())
    assert saved["key"] == hardware.profile_key(hardware.cpu_info())
    assert saved["bench"] == AVX2


def test_another_cpu_or_torch_measures_again(tmp_path: Path) -> None:
    path = tmp_path / hardware.PROFILE_FILE
    hardware.host_profile(tmp_path, bench=lambda: AVX2)
    stale = json.loads(path.read_text())
    stale["key"] = "another-host"
    path.write_text(json.dumps(stale))
    assert hardware.host_profile(tmp_path, bench=lambda: AVX512_BF16)["bench"] == AVX512_BF16


def test_auto_trains_fp32_and_serves_int8_where_bf16_is_the_avx2_trap() -> None:
    assert hardware.training_precision("auto", _profile(AVX2)) == "fp32"
    # int8 measured 4x / 2.1x fp32 there; bf16 lost at batch 32.
    assert hardware.serving_precision("auto", _profile(AVX2)) == "int8"
    assert hardware.serving_precision("auto", _profile({**AVX2, **SLOW_INT8})) == "fp32"


def test_auto_serves_bf16_before_int8_where_both_measured_faster() -> None:
    assert hardware.training_precision("auto", _profile(AVX512_BF16)) == "bf16"
    # int8 is faster still in the micro-benchmark, but bf16 ran the engine faster on such a
    # host and rounds less.
    assert hardware.serving_precision("auto", _profile(AVX512_BF16)) == "bf16"
    assert hardware.serving_precision("auto", _profile({**AVX512_BF16, **SLOW_INT8})) == "bf16"


def test_auto_on_x86_without_bf16_trains_without_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cpu(monkeypatch, AVX512_BF16, bf16=False)
    assert hardware.auto_training_precision(tmp_path) == "fp32"
    assert not (tmp_path / hardware.PROFILE_FILE).exists()
    # Serving measures int8 against fp32 (once; cached for the next start).
    assert hardware.auto_serving_precision(tmp_path) == "int8"
    assert (tmp_path / hardware.PROFILE_FILE).exists()


def test_auto_serves_int8_only_with_fbgemm_kernels() -> None:
    info = {**hardware.cpu_info(), "arch": "x86_64", "bf16_native": False}
    assert hardware.auto_serving_kinds({**info, "int8_engine": "x86"}) == ("int8",)
    assert hardware.auto_serving_kinds({**info, "int8_engine": "fbgemm"}) == ("int8",)
    arm = {**info, "arch": "aarch64", "bf16_native": True, "int8_engine": "qnnpack"}
    assert hardware.auto_serving_kinds(arm) == ("bf16",)


def test_auto_measures_where_bf16_may_be_native(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cpu(monkeypatch, AVX512_BF16, bf16=True)
    assert hardware.auto_training_precision(tmp_path) == "bf16"
    assert hardware.auto_serving_precision(tmp_path) == "bf16"
    assert (tmp_path / hardware.PROFILE_FILE).exists()


def test_settings_override_auto() -> None:
    assert hardware.training_precision("bf16", _profile(AVX2)) == "bf16"
    assert hardware.training_precision("fp32", _profile(AVX512_BF16)) == "fp32"
    assert hardware.serving_precision("int8", _profile(AVX2)) == "int8"
    with pytest.raises(ConfigError, match="TRAINING_PRECISION='int8'"):
        hardware.training_precision("int8", _profile(AVX2))


def test_this_machine_measured_for_real(tmp_path: Path) -> None:
    """The real micro-benchmark runs and its pick follows its own figures (any CPU)."""
    profile = hardware.host_profile(tmp_path)
    assert profile["bench_s"] < 60
    gain = profile["speedup"]["training_bf16"]
    expected = "bf16" if gain >= hardware.MIN_GAIN else "fp32"
    assert hardware.training_precision("auto", profile) == expected
    if not profile["bf16_native"] and profile["isa"] == "AVX2":
        # The AVX2 trap: bf16 products are emulated there, far slower than fp32.
        assert expected == "fp32"
    summary = hardware.hardware_summary(tmp_path)
    assert summary["isa"] == profile["isa"]
    assert summary["auto training precision"] == expected


def test_summary_never_measures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu(monkeypatch, AVX512_BF16, bf16=True)
    assert hardware.hardware_summary(tmp_path)["auto serving precision"] == "measured on first use"
    assert not (tmp_path / hardware.PROFILE_FILE).exists()
    hardware.host_profile(tmp_path)
    summary = hardware.hardware_summary(tmp_path)
    assert summary["auto training precision"] == "bf16"
    assert summary["int8 serving speed-up (batch 1 / 32)"] == "9.0 / 6.5"
    assert summary["int8 serving runs beside it"] == "bf16"
    fake_cpu(monkeypatch, AVX2, bf16=False)
    summary = hardware.hardware_summary(tmp_path)
    assert summary["auto training precision"].startswith("fp32")
    assert summary["auto serving precision"] == "measured on first use"
    assert summary["int8 serving runs beside it"] == hardware.FP32_BESIDE


def test_int8_companion_is_bf16_only_where_bf16_is_native_and_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hardware.companion_of(_profile(AVX512_BF16)) == "bf16"
    assert hardware.companion_of(_profile(AVX2)) == "fp32"
    fake_cpu(monkeypatch, AVX512_BF16, bf16=False)
    assert hardware.int8_companion(tmp_path / "a") == "fp32"
    assert not (tmp_path / "a" / hardware.PROFILE_FILE).exists()  # known without measuring
    fake_cpu(monkeypatch, AVX512_BF16, bf16=True)
    assert hardware.int8_companion(tmp_path / "b") == "bf16"


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_a_thread_gives_back_its_cpu_workers_with_other_openmp_copies_loaded() -> None:
    # faiss (and sentencepiece) ship their own libgomp: releasing one of those would leave
    # torch's workers where they are.
    import faiss  # noqa: F401
    import torch

    counts: dict[str, int] = {}

    def work() -> None:
        counts["before"] = os_threads()
        torch.ones(1 << 22).exp_().sum()  # a parallel op: this thread gets a worker team
        counts["working"] = os_threads()
        counts["released"] = int(hardware.release_cpu_pool())
        counts["after"] = settled(counts["before"])

    on_new_thread(work)
    assert counts["working"] > counts["before"]
    assert counts["released"] == 1
    assert counts["after"] == counts["before"]
