"""Adapter checksums read once per change: the verify-on-attach and GET /api/adapters paths.

Before, every attach check, start-up scan and GET /api/adapters/{name} re-read the whole
adapter to hash it. Now each process keeps the digest while the files' size, mtime, ctime
and inode stay the same. Baseline: the same loraflow calls with that cache emptied before
each call (which is what the old code did); both measured in this run on one adapter.

    .venv/bin/python bench/adapter_checksum.py                  # SmolLM2, r=64, 7 targets
    .venv/bin/python bench/adapter_checksum.py --rank 16 --calls 10
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _results import add_json_flag, write_results

from loraflow import db
from loraflow.adapters import checksums, inspect
from loraflow.config import Settings
from loraflow.models.resolve import resolve_base_model
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.train.jobs import TrainingContext

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, rank: int) -> None:
    """A random LoRA adapter on every linear layer of the base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)


def timed(call: Callable[[], object], calls: int, before: Callable[[], None]) -> list[float]:
    """Seconds of each of `calls` calls; `before` runs untimed ahead of each."""
    out = []
    for _ in range(calls):
        before()
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def _clear() -> None:
    with checksums._hash_lock:
        checksums._hash_cache.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--calls", type=int, default=20, help="calls per path and variant")
    add_json_flag(ap)
    args = ap.parse_args()

    cache = REPO / ".cache" / "test-models"
    base = resolve_base_model("bundled:smollm2", cache).path
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        folder = data / "lora_adapters" / "bench"
        make_adapter(base, folder, args.rank)
        size_mb = inspect.folder_size_mb(folder)
        settings = Settings(data_dir=data, base_model_name=str(base), cache_dir=str(cache))
        ctx = TrainingContext(settings=settings, db=db.make_engine(settings.db_url))
        rec = adapter_svc.register(ctx, folder, name="bench")
        # Files written in the last 2 s are never cached (racy timestamps): let them settle.
        time.sleep(checksums._RACY_NS / 1e9 + 0.2)
        paths: dict[str, Callable[[], object]] = {
            "attach check (registry.verify)": lambda: adapter_svc.registry(ctx).verify(rec.id),
            "GET /api/adapters/{name} (record + compatibility)": lambda: (
                adapter_svc.get_adapter(ctx, "bench"),
                adapter_svc.compatibility(ctx, rec.id),
                adapter_svc.latest_validation(ctx, rec),
            ),
        }
        rows, ratios = [], {}
        for label, call in paths.items():
            call()  # warm: imports, the first read into the page cache and the digest cache
            cold = statistics.median(timed(call, args.calls, _clear))
            warm = statistics.median(timed(call, args.calls, lambda: None))
            rows.append({"path": label, "baseline_ms": cold * 1e3, "loraflow_ms": warm * 1e3})
            ratios[f"{label}: loraflow vs re-hash"] = cold / warm
            print(
                f"{label:52s} re-hash {cold * 1e3:8.2f} ms   cached {warm * 1e3:8.2f} ms   "
                f"{cold / warm:6.1f}x"
            )
        ctx.db.dispose()
        shutil.rmtree(data, ignore_errors=True)
    print(f"adapter: SmolLM2 r={args.rank}, {len(TARGETS)} targets, {size_mb} MB")
    write_results(
        args.json,
        "adapter_checksum",
        {"rank": args.rank, "calls": args.calls, "adapter_mb": size_mb},
        rows,
        ratios,
        baseline="the same calls with the digest cache emptied before each (the old behaviour)",
        notes=["medians; files in the OS page cache in both variants"],
    )


if __name__ == "__main__":
    main()
