"""The machine loraflow runs on: its CPU's capability and which precisions are fast on it.

Hosts differ: on an AVX2-only CPU bf16 autocast made a training step ~40x slower than fp32,
while on an AVX-512 BF16 host it was 2.2x faster (DESIGN.md). So precision is chosen per
host from a short micro-benchmark (~1-2 s), run once and cached in the data dir under a key
of the CPU model, its flags, the torch version and the thread count; any change re-measures.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError
from loraflow.locks import file_lock

log = logging.getLogger(__name__)

PROFILE_FILE = "hardware-profile.json"
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")
SERVING_PRECISIONS = ("auto", "fp32", "bf16", "int8")
# The flags that decide which kernels are fast (names as /proc/cpuinfo spells them).
FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# A lower precision must beat fp32 by this factor to be picked: a near tie is not worth
# its rounding, and timings on a shared 2-core machine move by ±30%.
MIN_GAIN = 1.2
# SmolLM2-135M's shapes (hidden 576, MLP 1536): the bundled model, and the size this
# project serves on CPU. Decode at batch 1 is memory bound, batch 32 compute bound.
HIDDEN, INTERMEDIATE, STACK = 576, 1536, 8
GEMM_ROWS = 128
BENCH_VERSION = 1
ROUNDS = 3
# What `auto` may pick for serving, in order of preference: the first that measures faster.
# bf16 first: where the CPU has native bf16 it kept perplexity within 0.2% of fp32's and ran
# the engine faster than int8 (AVX-512 BF16 host, docs/BENCHMARKS.md). Dynamic int8 (per-row
# activation scale, 7-bit on x86) costs quality that a timing cannot see; calibrated as the
# engine loads it, SmolLM2's perplexity on a held-out text was 1.021x fp32's, ~90% of greedy
# tokens equal (1.046x, 86.5% with prompts in int8 too, LOCAL_INT8_PROMPTS), within the 5% a
# quantized path may cost, and on an AVX2 host (no native bf16)
# it is what serves many adapters at 3x llama.cpp. LOCAL_PRECISION=fp32 keeps exact weights.
AUTO_SERVING = ("bf16", "int8")
# Beside int8 without a bf16 companion: calibrated int8 runs prompts in int8 too unless
# LOCAL_INT8_PROMPTS=false, so fp32 is what that setting (or an uncalibrated fallback) takes.
FP32_BESIDE = "fp32 (prompts with LOCAL_INT8_PROMPTS=false; uncalibrated int8's kept linears)"


_OMP_PAUSE_HARD = 2


@functools.cache
def _find_omp_pause() -> Any:
    """omp_pause_resource_all of the GNU OpenMP runtime torch runs on, or None; looked up
    once torch is loaded (it loads its OpenMP runtime on import).

    The copy loaded under the soname `libgomp.so.1` is the one torch (and llama.cpp's ggml)
    bind to; faiss and sentencepiece bring their own under hashed names. Only libgomp: in
    LLVM's and Intel's runtimes a hard pause stops the whole process's runtime."""
    try:
        fn = ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 0)).omp_pause_resource_all
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


def release_cpu_pool() -> bool:
    """Give back the calling thread's OpenMP worker threads (torch's intra-op pool), if any.

    Each thread that runs a parallel torch op keeps its own team of worker threads for as
    long as it lives. Once a process holds more of those threads than the CPU has cores,
    libgomp stops spinning between parallel regions and every region pays a wake-up: the
    engine's decode step, run on its own thread, measured 1.3-1.9x slower while the thread
    that loaded the model still held its team (2 cores; docs/BENCHMARKS.md). Threads that
    load a model or embed text call this when done; their next parallel op makes a new team.
    Returns whether a runtime was found (False where torch or OpenMP is not loaded).
    """
    if "torch" not in sys.modules:
        return False
    fn = _find_omp_pause()
    if fn is None:
        return False
    fn(_OMP_PAUSE_HARD)
    return True


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo's first processor (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        # x86 says "flags", ARM "Features".
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """What the CPU offers: torch's ISA level, the relevant flags, cores and threads."""
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        # torch's own answer to "which kernels will run": DEFAULT, AVX2, AVX512, ...
        "isa": torch.backends.cpu.get_cpu_capability(),
        "flags": sorted(f for f in FLAGS if f in flags),
        "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "amx": "amx_tile" in flags,
        "cores": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "int8_engine": torch.backends.quantized.engine,
    }


def profile_key(info: dict[str, Any]) -> str:
    """The cache key: what changes the figures (CPU, flags, torch, threads)."""
    parts = [info["cpu"], info["arch"], info["isa"], ",".join(info["flags"]), info["torch"]]
    parts += [str(info["threads"]), str(BENCH_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _time_ms(fn: Callable[[], Any], budget_s: float = 0.03, max_reps: int = 10) -> float:
    """The fastest run within a small time budget, in ms (best-of resists a busy machine)."""
    fn()  # warm-up: first calls pack weights, create kernels and allocate
    best = float("inf")
    start = time.perf_counter()
    for _ in range(max_reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        # A path this slow (bf16 on AVX2) is known after one run; more would only cost time.
        if time.perf_counter() - start > budget_s:
            break
    return best * 1e3


def micro_benchmark() -> dict[str, float]:
    """fp32 vs bf16 GEMM, and fp32 vs bf16 vs int8 linears at SmolLM2's shapes (ms each).

    The GEMM is a training-sized product under bf16 autocast (as the Trainer runs it); the
    linears are a stack of base-model projections at batch 1 (decode) and 32 (batched).
    """
    import warnings

    import torch
    from torch import nn

    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; its fbgemm kernels are
        # what is measured here and what loraflow's int8 path runs (models/cpu_precision).
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        gen = torch.Generator().manual_seed(0)
        a = torch.randn(GEMM_ROWS, HIDDEN, generator=gen)
        w = torch.randn(INTERMEDIATE, HIDDEN, generator=gen) / HIDDEN**0.5
        linears = [nn.Linear(HIDDEN, INTERMEDIATE, bias=False) for _ in range(STACK)]
        bf16 = [lin.weight.detach().to(torch.bfloat16) for lin in linears]
        int8 = []
        for lin in linears:
            lin.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
            int8.append(DynamicInt8Linear.from_float(lin))

        def autocast_gemm() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return a @ w.t()

        cases: dict[str, Callable[[], Any]] = {
            "gemm_fp32_ms": lambda: a @ w.t(),
            "gemm_bf16_ms": autocast_gemm,
        }

        def stack(layers: list[Any], x: torch.Tensor) -> Callable[[], Any]:
            return lambda: [layer(x) for layer in layers]

        def bf16_stack(x: torch.Tensor) -> Callable[[], Any]:
            return lambda: [torch.nn.functional.linear(x, v) for v in bf16]

        for batch in (1, 32):
            x = torch.randn(batch, HIDDEN, generator=gen)
            cases[f"linear_fp32_b{batch}_ms"] = stack(linears, x)
            cases[f"linear_int8_b{batch}_ms"] = stack(int8, x)
            cases[f"linear_bf16_b{batch}_ms"] = bf16_stack(x.to(torch.bfloat16))
        out = {name: float("inf") for name in cases}
        with torch.inference_mode():
            # Rounds interleave the cases, so a burst of load elsewhere on a shared machine
            # slows one round of every case rather than all runs of one; best of the rounds.
            for _ in range(ROUNDS):
                for name, fn in cases.items():
                    out[name] = min(out[name], _time_ms(fn))
    return {k: round(v, 4) for k, v in out.items()}


def speedups(bench: dict[str, float]) -> dict[str, float]:
    """Lower precision vs fp32 from a micro-benchmark (> 1: faster than fp32)."""
    ratio = {"training_bf16": bench["gemm_fp32_ms"] / bench["gemm_bf16_ms"]}
    for kind in ("bf16", "int8"):
        for batch in (1, 32):
            fp32 = bench[f"linear_fp32_b{batch}_ms"]
            ratio[f"serving_{kind}_b{batch}"] = fp32 / bench[f"linear_{kind}_b{batch}_ms"]
    return {k: round(v, 3) for k, v in ratio.items()}


def host_profile(
    data_dir: Path, *, bench: Callable[[], dict[str, float]] | None = None
) -> dict[str, Any]:
    """This host's capability and micro-benchmark, measured once and cached in `data_dir`.

    Other processes wait on a lock rather than measure at the same time (two benchmarks at
    once on two cores would each see half the machine).
    """
    info = cpu_info()
    key = profile_key(info)
    path = Path(data_dir) / PROFILE_FILE
    cached = _read(path, key)
    if cached is not None:
        return cached
    with file_lock(path.with_name(f".{PROFILE_FILE}.lock")):
        cached = _read(path, key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        figures = (bench or micro_benchmark)()
        profile = {
            "key": key,
            **info,
            "bench": figures,
            "speedup": speedups(figures),
            "bench_s": round(time.perf_counter() - started, 2),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = path.with_name(f".{PROFILE_FILE}.tmp")
        tmp.write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        log.info("measured this host's precisions in %.1f s: %s", profile["bench_s"], path)
        return profile


def _read(path: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def bf16_ruled_out(info: dict[str, Any]) -> bool:
    """An x86 CPU without AVX512_BF16 or AMX emulates bf16 products (the ~40x trap).

    There no measurement is needed to know fp32 wins over bf16, so training's `auto` skips the
    micro-benchmark (serving's still measures int8).
    """
    return info["arch"] in ("x86_64", "AMD64", "i686") and not info["bf16_native"]


def auto_training_precision(profile_dir: Path) -> str:
    """What TRAINING_PRECISION=auto means on this host's CPU (measuring once if needed)."""
    if bf16_ruled_out(cpu_info()):
        return "fp32"
    return training_precision("auto", host_profile(profile_dir))


def auto_serving_kinds(info: dict[str, Any]) -> tuple[str, ...]:
    """What `auto` may serve in on this CPU: AUTO_SERVING, less bf16 where it is emulated and
    int8 off x86 (its quality was measured with fbgemm's kernels; LOCAL_PRECISION=int8 still
    asks for it anywhere)."""
    fbgemm = info.get("int8_engine") in ("x86", "fbgemm")
    return tuple(
        k
        for k in AUTO_SERVING
        if (k != "bf16" or not bf16_ruled_out(info)) and (k != "int8" or fbgemm)
    )


def auto_serving_precision(profile_dir: Path) -> str:
    """What LOCAL_PRECISION=auto means on this host's CPU (measuring once if needed)."""
    kinds = auto_serving_kinds(cpu_info())
    if not kinds:
        return "fp32"
    return serving_precision("auto", host_profile(profile_dir), kinds)


def int8_companion(profile_dir: Path) -> str:
    """What LOCAL_PRECISION=int8 runs beside int8 (the linears uncalibrated int8 keeps, and
    prompts unless LOCAL_INT8_PROMPTS has them in int8): bf16 on a CPU with native bf16 where
    this host measured bf16 linears faster, else fp32."""
    if bf16_ruled_out(cpu_info()):
        return "fp32"
    return companion_of(host_profile(profile_dir))


def companion_of(profile: dict[str, Any]) -> str:
    """`int8_companion` from a measured profile."""
    speed = profile["speedup"]
    fast = speed["serving_bf16_b1"] >= MIN_GAIN and speed["serving_bf16_b32"] >= 1.0
    return "bf16" if fast else "fp32"


def training_precision(setting: str, profile: dict[str, Any]) -> str:
    """fp32 or bf16 for CPU training: the setting, or for `auto` what measured faster."""
    _check(setting, TRAINING_PRECISIONS, "TRAINING_PRECISION")
    if setting != "auto":
        return setting
    return "bf16" if profile["speedup"]["training_bf16"] >= MIN_GAIN else "fp32"


def serving_precision(
    setting: str, profile: dict[str, Any], kinds: tuple[str, ...] = AUTO_SERVING
) -> str:
    """fp32, bf16 or int8 for the CPU base model's linears: the setting, or for `auto` the
    first of `kinds` that beats fp32 by MIN_GAIN at batch 1 and is no slower at 32.
    """
    _check(setting, SERVING_PRECISIONS, "LOCAL_PRECISION")
    if setting != "auto":
        return setting
    speed = profile["speedup"]
    for kind in kinds:
        b1, b32 = speed[f"serving_{kind}_b1"], speed[f"serving_{kind}_b32"]
        # "No path slower than today's": batch 32 must not lose what batch 1 gains.
        if b1 >= MIN_GAIN and b32 >= 1.0:
            return kind
    return "fp32"


def _check(setting: str, allowed: tuple[str, ...], name: str) -> None:
    if setting not in allowed:
        raise ConfigError(f"{name}={setting!r} is not one of {list(allowed)}")


def hardware_summary(data_dir: Path) -> dict[str, Any]:
    """A plain dict for display (config-check, status): capability, speed-ups and picks.

    Never measures: it shows the cached micro-benchmark when one exists for this host, and
    otherwise what `auto` already knows from the CPU flags.
    """
    info = cpu_info()
    profile = _read(Path(data_dir) / PROFILE_FILE, profile_key(info))
    out: dict[str, Any] = {
        "cpu": info["cpu"],
        "isa": info["isa"],
        "flags": " ".join(info["flags"]) or "-",
        "cores": info["cores"],
        "threads": info["threads"],
    }
    if profile is not None:
        speed = profile["speedup"]
        out["bf16 training speed-up"] = speed["training_bf16"]
        for kind in ("int8", "bf16"):
            out[f"{kind} serving speed-up (batch 1 / 32)"] = (
                f"{speed[f'serving_{kind}_b1']} / {speed[f'serving_{kind}_b32']}"
            )
        out["auto training precision"] = training_precision("auto", profile)
        out["auto serving precision"] = serving_precision("auto", profile, auto_serving_kinds(info))
        beside = "fp32" if bf16_ruled_out(info) else companion_of(profile)
        out["int8 serving runs beside it"] = beside if beside != "fp32" else FP32_BESIDE
    elif bf16_ruled_out(info):
        out["auto training precision"] = "fp32 (no native bf16)"
        out["auto serving precision"] = (
            "measured on first use" if auto_serving_kinds(info) else "fp32 (no native bf16)"
        )
        out["int8 serving runs beside it"] = FP32_BESIDE
    else:
        out["auto training precision"] = out["auto serving precision"] = "measured on first use"
    return out
