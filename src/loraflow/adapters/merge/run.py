"""merge_adapters: validate, merge into a temporary sibling folder, check, then publish."""

from __future__ import annotations

import json
import os
import secrets
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
from loraflow.adapters.merge.checks import logits_check
from loraflow.adapters.merge.full import merge_full_models
from loraflow.adapters.merge.lora import (
    check_fits_base,
    check_plain_lora,
    check_same_base,
    read_source,
)
from loraflow.adapters.merge.models import free_memory
from loraflow.adapters.merge.reference import reference_check
from loraflow.adapters.merge.registry import get_method
from loraflow.config import get_settings
from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.permissions import share_tree

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
    seed: int = 0
    # Said to the user with the result, e.g. an adapter the rank cap kept approximate.
    warnings: tuple[str, ...] = ()


def merge_adapters(
    adapter_dirs: Sequence[Path],
    *,
    base_model_dir: Path,
    method: str,
    weights: list[float] | None = None,
    density: float | None = None,
    t: float | None = None,
    lambda_: float | None = None,
    max_rank: int | None = None,
    max_error: float | None = None,
    into: Into = "adapter",
    output_dir: Path,
    seed: int | None = None,
    engine_max_rank: int | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> MergeResult:
    """Merge LoRA adapters of one base model into a new adapter or a full model folder.

    Nothing is left at `output_dir` unless the merge succeeded and passed its checks.
    `seed` drives DARE's draws (and mergekit's); without one a seed is drawn and recorded.
    `engine_max_rank` (default MAX_LORA_RANK) caps the rank of an adapter result.
    """
    started = time.monotonic()
    report = progress or (lambda stage, fraction: None)
    report("checking the inputs", 0.0)
    impl = get_method(method)
    if into not in INTO:
        raise InvalidInput(f"into={into!r} is not one of {list(INTO)}")
    adapter_dirs = [Path(d) for d in adapter_dirs]
    impl.check_count(len(adapter_dirs))
    given = {"weights": weights, "density": density, "t": t, "lambda_": lambda_}
    given.update(max_rank=max_rank, max_error=max_error)
    params = impl.parse_params(len(adapter_dirs), given)
    if into == "model" and (max_rank is not None or max_error is not None):
        raise InvalidInput(
            "max_rank and max_error bound the factoring of an adapter result; a model "
            "result is merged densely by mergekit and needs neither",
        )
    _check_distinct(adapter_dirs)
    if seed is None:
        seed = secrets.randbelow(2**31)
    if engine_max_rank is None:
        engine_max_rank = get_settings().max_lora_rank
    base_model_dir = Path(base_model_dir)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    if not base_model_dir.is_dir():
        raise NotFound(f"base model folder {base_model_dir} does not exist")
    base_shapes = base_weight_shapes(base_model_dir)
    sources = [read_source(d) for d in adapter_dirs]
    _check_distinct_files(sources)
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
        factoring = None
        if into == "adapter":
            report(f"combining {len(sources)} adapters ({impl.name})", 0.1)
            factoring = impl.merge_lora(
                sources,
                params,
                staging,
                base_model_dir=base_model_dir,
                seed=seed,
                engine_max_rank=engine_max_rank,
            )
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
        if factoring is not None:
            checks["factoring"] = factoring
        checks["reference"] = reference_check(
            impl, params, sources, base_model_dir, staging, into, seed=seed, factoring=factoring
        )
        warnings = [factoring["warning"]] if factoring and factoring.get("warning") else []
        checks["warnings"] = warnings
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
        seed=seed,
        warnings=tuple(warnings),
    )


def _check_distinct(adapter_dirs: list[Path]) -> None:
    seen: dict[Path, int] = {}
    for i, folder in enumerate(adapter_dirs):
        first = seen.setdefault(folder.resolve(), i)
        if first != i:
            raise InvalidInput(
                f"adapter {folder.name} is given twice (positions {first + 1} and {i + 1}); "
                f"merging an adapter with itself only rescales it, so it is refused",
                hint="to scale one adapter, merge it alone with task_arithmetic and a lambda",
            )


def _check_distinct_files(sources: list) -> None:
    seen: dict[str, Any] = {}
    for source in sources:
        first = seen.setdefault(source.sha256, source)
        if first is not source:
            raise InvalidInput(
                f"adapters {first.path.name} and {source.path.name} hold the same files "
                f"(sha256 {source.sha256[:12]}); merging an adapter with a copy of itself "
                f"only rescales it, so it is refused",
                hint="to scale one adapter, merge it alone with task_arithmetic and a lambda",
            )


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise Conflict(
            f"output folder {output_dir} already exists and is not empty; merged results "
            f"are never written over, choose a new folder"
        )


def _publish(staging: Path, output_dir: Path) -> None:
    # mkdtemp's folder is private and safetensors writes 0600: shared modes, like a save.
    share_tree(staging)
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
