"""merge_adapters: validate, merge into a temporary sibling folder, check, then publish."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraflow.adapters.inspect import METADATA_FILE, base_weight_shapes
from loraflow.adapters.merge.base import Into
from loraflow.adapters.merge.checks import logits_check, reference_check
from loraflow.adapters.merge.full import merge_full_models
from loraflow.adapters.merge.lora import (
    check_fits_base,
    check_plain_lora,
    check_same_base,
    read_source,
)
from loraflow.adapters.merge.models import free_memory
from loraflow.adapters.merge.registry import get_method
from loraflow.errors import Conflict, InvalidInput, NotFound

INTO = ("adapter", "model")


@dataclass(frozen=True)
class MergeResult:
    """What a finished merge wrote and the numbers of its checks."""

    output_dir: Path
    method: str
    into: str
    params: dict[str, Any]
    checks: dict[str, Any]
    seconds: float


def merge_adapters(
    adapter_dirs: Sequence[Path],
    *,
    base_model_dir: Path,
    method: str,
    weights: list[float] | None = None,
    density: float | None = None,
    t: float | None = None,
    lambda_: float | None = None,
    into: Into = "adapter",
    output_dir: Path,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
) -> MergeResult:
    """Merge LoRA adapters of one base model into a new adapter or a full model folder.

    Nothing is left at `output_dir` unless the merge succeeded and passed its checks.
    """
    started = time.monotonic()
    report = progress or (lambda stage, fraction: None)
    report("checking the inputs", 0.0)
    impl = get_method(method)
    if into not in INTO:
        raise InvalidInput(f"into={into!r} is not one of {list(INTO)}")
    adapter_dirs = [Path(d) for d in adapter_dirs]
    impl.check_count(len(adapter_dirs))
    params = impl.parse_params(
        len(adapter_dirs), {"weights": weights, "density": density, "t": t, "lambda_": lambda_}
    )
    base_model_dir = Path(base_model_dir)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    if not base_model_dir.is_dir():
        raise NotFound(f"base model folder {base_model_dir} does not exist")
    base_shapes = base_weight_shapes(base_model_dir)
    sources = [read_source(d) for d in adapter_dirs]
    check_same_base(sources)
    for source in sources:
        check_fits_base(source, base_shapes)
        if into == "adapter":
            check_plain_lora(source, impl.name)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling: same file system, so publishing is one rename, and scanners that
    # skip dot-folders never see a half-written result.
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.merging-", dir=output_dir.parent))
    try:
        staging = work / "result"
        if into == "adapter":
            report(f"combining {len(sources)} adapters ({impl.name})", 0.1)
            impl.merge_lora(sources, params, staging, base_model_dir=base_model_dir, seed=seed)
        else:
            merge_full_models(
                impl,
                sources,
                params,
                base_model_dir=base_model_dir,
                out_dir=staging,
                work_dir=work,
                seed=seed,
                report=report,
            )
        report("checking the merged result against the base model", 0.8)
        checks = logits_check(base_model_dir, staging, into)
        checks["reference"] = reference_check(impl, params, sources, base_model_dir, staging, into)
        _write_metadata(
            staging,
            output_dir,
            impl.name,
            into,
            params.public(),
            seed,
            sources,
            base_model_dir,
            checks,
        )
        _publish(staging, output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for source in sources:
            source.release()
        free_memory()
    report("done", 1.0)
    return MergeResult(
        output_dir=output_dir,
        method=impl.name,
        into=into,
        params=params.public(),
        checks=checks,
        seconds=round(time.monotonic() - started, 3),
    )


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise Conflict(
            f"output folder {output_dir} already exists and is not empty; merged results "
            f"are never written over, choose a new folder"
        )


def _publish(staging: Path, output_dir: Path) -> None:
    try:
        # rename() also replaces an empty folder the caller made for the result.
        os.replace(staging, output_dir)
    except OSError as exc:
        raise Conflict(f"could not move the merged result to {output_dir}: {exc}") from exc


def _write_metadata(
    staging: Path,
    output_dir: Path,
    method: str,
    into: str,
    params: dict[str, Any],
    seed: int,
    sources: list,
    base_model_dir: Path,
    checks: dict[str, Any],
) -> None:
    named = next((s.base_model for s in sources if s.base_model), "")
    meta = {
        "name": output_dir.name,
        "type": "lora" if into == "adapter" else "merged_model",
        "method": method,
        "into": into,
        "params": params,
        "seed": seed,
        "base_model": named or str(base_model_dir),
        "base_model_path": str(base_model_dir.resolve()),
        "sources": [
            {"name": s.path.name, "path": str(s.path.resolve()), "sha256": s.sha256}
            for s in sources
        ],
        "created_at": datetime.now(UTC).isoformat(),
        "checks": checks,
    }
    (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
