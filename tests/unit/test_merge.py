"""Adapter merges: parity with mergekit, exact deltas, vanilla-PEFT reloads, clear errors."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraflow.adapters.inspect import checksum
from loraflow.adapters.merge import METHODS, MergeResult, merge_adapters
from loraflow.errors import Conflict, InvalidInput, NotFound
from tests.unit import merge_fixtures as mf

# Both sides compute in float32 with the same operations: they agree to rounding noise.
MODEL_ATOL = 1e-6
# An adapter result folded into the base vs mergekit's full merge: two float32 roundings of
# base + delta computed in different orders.
ADAPTER_ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("merge")
    base = mf.build_base(root / "base")
    adapters = [
        mf.make_adapter(base, root / "a0", seed=1),
        mf.make_adapter(base, root / "a1", seed=2, alpha=16),
        # Another rank, other layers and rsLoRA scaling: exact merges must handle all three.
        mf.make_adapter(
            base, root / "a2", seed=3, r=8, targets=("q_proj", "o_proj"), use_rslora=True
        ),
    ]
    folded = [mf.fold(base, a, root / f"folded-{i}") for i, a in enumerate(adapters)]
    return SimpleNamespace(root=root, base=base, adapters=adapters, folded=folded)


def _out(tiny: SimpleNamespace, name: str) -> Path:
    return tiny.root / "results" / name


# method -> (indices into tiny.adapters, merge_adapters keyword arguments)
CASES = {
    "linear": ([0, 1, 2], {"weights": [0.5, 0.3, 0.2]}),
    "task_arithmetic": ([0, 1, 2], {"weights": [1.0, 0.5, -0.5], "lambda_": 0.8}),
    "slerp": ([0, 1], {"t": 0.3}),
    "ties": ([0, 1], {"weights": [0.6, 0.4], "density": 0.5}),
    "dare_ties": ([0, 1], {"density": 0.6, "seed": 7}),
    "dare_linear": ([0, 1], {"density": 0.6, "lambda_": 0.9, "seed": 7}),
}


def _mergekit_config(tiny: SimpleNamespace, method: str) -> dict:
    """The config a mergekit user would write for the folded models of CASES[method]."""
    picks, kw = CASES[method]
    models = [str(tiny.folded[i]) for i in picks]
    weights = kw.get("weights", [1.0] * len(picks))
    pairs = list(zip(models, weights, strict=True))
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": models[0],
            "models": [{"model": m} for m in models],
            "parameters": {"t": kw["t"]},
        }
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in pairs],
        }
    extra = {"density": kw["density"]} if "density" in kw else {}
    return {
        "merge_method": method,
        "base_model": str(tiny.base),
        "models": [{"model": m, "parameters": {"weight": w, **extra}} for m, w in pairs],
        "parameters": {"lambda": kw.get("lambda_", 1.0)},
    }


@pytest.fixture(scope="module")
def results(tiny: SimpleNamespace):
    """Each method merged once per result kind, on demand."""
    cache: dict[tuple[str, str], MergeResult] = {}

    def get(method: str, into: str) -> MergeResult:
        if (method, into) not in cache:
            picks, kw = CASES[method]
            cache[method, into] = merge_adapters(
                [tiny.adapters[i] for i in picks],
                base_model_dir=tiny.base,
                method=method,
                into=into,
                output_dir=_out(tiny, f"{method}-{into}"),
                **kw,
            )
        return cache[method, into]

    return get


@pytest.mark.parametrize("method", list(CASES))
def test_model_result_equals_mergekit_on_folded_models(tiny, results, method):
    result = results(method, "model")
    expected = mf.run_mergekit(
        _mergekit_config(tiny, method),
        tiny.root / f"mergekit-{method}",
        seed=CASES[method][1].get("seed", 0),
    )
    got = mf.load_tensors(result.output_dir)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=MODEL_ATOL, rtol=0, msg=name)
    # A servable folder: tokenizer beside the weights, metadata saying what was merged.
    assert (result.output_dir / "tokenizer.json").is_file()
    meta = json.loads((result.output_dir / "loraflow.json").read_text())
    assert (meta["method"], meta["into"]) == (method, "model")
    assert result.checks["max_abs_logit_change_vs_base"] > 1e-3


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_exact_adapter_result_folded_equals_mergekit_full_merge(tiny, results, method):
    result = results(method, "adapter")
    mine = mf.load_tensors(mf.fold(tiny.base, result.output_dir, tiny.root / f"refold-{method}"))
    expected = mf.run_mergekit(_mergekit_config(tiny, method), tiny.root / f"mk-ad-{method}")
    for name, tensor in expected.items():
        torch.testing.assert_close(mine[name], tensor, atol=ADAPTER_ATOL, rtol=0, msg=name)
    # One stacked rank for every layer: 4 + 4 + 8 from the three sources.
    assert json.loads((result.output_dir / "adapter_config.json").read_text())["r"] == 16
    reference = result.checks["reference"]
    assert reference["tensors"] == 8 and reference["worst_error_ratio"] <= 1


def test_slerp_adapter_matches_a_dense_spherical_interpolation(tiny, results):
    result = results("slerp", "adapter")
    t = CASES["slerp"][1]["t"]
    first, second = (mf.dense_deltas(a) for a in tiny.adapters[:2])
    merged = mf.dense_deltas(result.output_dir)
    assert sorted(merged) == sorted(first)
    for module, d1 in first.items():
        d2 = second[module]
        theta = math.acos(float((d1 * d2).sum() / (d1.norm() * d2.norm())))
        expected = (math.sin((1 - t) * theta) * d1 + math.sin(t * theta) * d2) / math.sin(theta)
        torch.testing.assert_close(merged[module], expected, atol=1e-6, rtol=1e-5, msg=module)
        # Random deltas are far from parallel, so this is not a linear blend in disguise.
        assert (merged[module] - ((1 - t) * d1 + t * d2)).abs().max() > 1e-3


@pytest.mark.parametrize("method", list(CASES))
def test_every_adapter_result_reloads_with_vanilla_peft_and_changes_logits(tiny, results, method):
    result = results(method, "adapter")
    base_logits = mf.logits(tiny.base)
    merged_logits = mf.logits(tiny.base, result.output_dir)
    assert (merged_logits - base_logits).abs().max() > 1e-3
    assert torch.isfinite(merged_logits).all()
    meta = json.loads((result.output_dir / "loraflow.json").read_text())
    picks, _ = CASES[method]
    assert meta["method"] == method and meta["into"] == "adapter"
    assert meta["params"] == result.params
    assert [s["sha256"] for s in meta["sources"]] == [checksum(tiny.adapters[i]) for i in picks]
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    assert result.checks["prompts"] == 3 and result.checks["finite"] is True
    # Every adapter result is folded into the base and checked against its dense reference,
    # and says how it was factored and with what error.
    reference = result.checks["reference"]
    assert reference["tensors"] > 0 and reference["worst_error_ratio"] <= 1
    factoring = result.checks["factoring"]
    assert factoring["max_relative_error"] <= 1e-3 and meta["checks"]["factoring"] == factoring
    assert meta["seed"] == result.seed


def _negated(tiny: SimpleNamespace, index: int) -> Path:
    """A copy of adapter `index` with lora_B negated: the opposite change, other files."""
    dest = tiny.root / f"negated-{index}"
    if not dest.exists():
        shutil.copytree(tiny.adapters[index], dest)
        tensors = load_file(str(dest / "adapter_model.safetensors"))
        tensors = {k: -v if ".lora_B." in k else v for k, v in tensors.items()}
        save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    return dest


def test_subtracting_an_adapter_leaves_exactly_the_others(tiny):
    a0, _, a2 = tiny.adapters
    result = merge_adapters(
        [a0, _negated(tiny, 0), a2],
        base_model_dir=tiny.base,
        method="task_arithmetic",
        weights=[1.0, 1.0, 1.0],
        output_dir=_out(tiny, "subtract"),
    )
    merged = mf.dense_deltas(result.output_dir)
    only = mf.dense_deltas(a2)
    for module, delta in merged.items():
        expected = only.get(module, torch.zeros_like(delta))
        torch.testing.assert_close(delta, expected, atol=1e-6, rtol=1e-5, msg=module)
    assert result.checks["reference"]["worst_error_ratio"] <= 1


def test_dare_adapter_results_repeat_with_the_same_seed(tiny, results):
    first = load_file(str(results("dare_ties", "adapter").output_dir / "adapter_model.safetensors"))
    kwargs = {"base_model_dir": tiny.base, "method": "dare_ties", "density": 0.6}
    again = merge_adapters(tiny.adapters[:2], output_dir=_out(tiny, "dare-again"), seed=7, **kwargs)
    other = merge_adapters(tiny.adapters[:2], output_dir=_out(tiny, "dare-other"), seed=8, **kwargs)
    same = load_file(str(again.output_dir / "adapter_model.safetensors"))
    different = load_file(str(other.output_dir / "adapter_model.safetensors"))
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert any(not torch.equal(first[k], different[k]) for k in first)


def test_progress_is_reported_and_an_empty_output_folder_is_filled(tiny):
    out = _out(tiny, "progress")
    out.mkdir(parents=True)
    seen: list[tuple[str, float]] = []
    merge_adapters(
        tiny.adapters[:2],
        base_model_dir=tiny.base,
        method="linear",
        output_dir=out,
        progress=lambda stage, fraction: seen.append((stage, fraction)),
    )
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and seen[-1] == ("done", 1.0)
    assert (out / "adapter_model.safetensors").is_file()


def _assert_nothing_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    if parent.exists():
        assert not [p.name for p in parent.iterdir() if ".merging-" in p.name]


@pytest.mark.parametrize("into", ["adapter", "model"])
def test_adapters_that_cancel_out_fail_loudly_and_leave_nothing(tiny, tmp_path, into):
    out = tmp_path / "merged"
    with pytest.raises(InvalidInput, match="same logits as the base"):
        merge_adapters(
            [tiny.adapters[0], _negated(tiny, 0)],
            base_model_dir=tiny.base,
            method="task_arithmetic",
            into=into,
            output_dir=out,
        )
    _assert_nothing_written(tmp_path, out)


def test_an_adapter_with_infinite_values_fails_the_finite_check(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny.adapters[0], broken)
    tensors = load_file(str(broken / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key][0, 0] = float("inf")
    save_file(tensors, str(broken / "adapter_model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "merged"
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        merge_adapters(
            [broken, tiny.adapters[1]], base_model_dir=tiny.base, method="linear", output_dir=out
        )
    _assert_nothing_written(tmp_path, out)


def _variant(tiny: SimpleNamespace, tmp_path: Path, kind: str) -> Path:
    """An adapter folder that is wrong in one way."""
    dest = tmp_path / kind
    if kind == "other-base-name":
        shutil.copytree(tiny.adapters[1], dest)
        config = json.loads((dest / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "someone/another-model"
        (dest / "adapter_config.json").write_text(json.dumps(config))
    elif kind == "wrong-shape":
        other = mf.build_base(tmp_path / "base-32", hidden=32)
        mf.make_adapter(other, dest, seed=4)
        # Its config names the right base, as a mislabelled upload would: only shapes tell.
        config = json.loads((dest / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(tiny.base)
        (dest / "adapter_config.json").write_text(json.dumps(config))
    elif kind == "no-weights":
        shutil.copytree(tiny.adapters[1], dest)
        (dest / "adapter_model.safetensors").unlink()
    elif kind == "copy":
        shutil.copytree(tiny.adapters[0], dest)
    elif kind == "r8-config":
        shutil.copytree(tiny.adapters[1], dest)
        config = json.loads((dest / "adapter_config.json").read_text())
        config["r"] = 8
        (dest / "adapter_config.json").write_text(json.dumps(config))
    elif kind == "pickle-only":
        shutil.copytree(tiny.adapters[1], dest)
        (dest / "adapter_model.safetensors").rename(dest / "adapter_model.bin")
    return dest


ERROR_CASES = {
    "zero adapters": ({"adapters": [], "method": "linear"}, InvalidInput, "at least 2"),
    "one adapter": (
        {"adapters": [0], "method": "ties"},
        InvalidInput,
        "at least 2 adapters, got 1",
    ),
    "slerp of three": ({"adapters": [0, 1, 2], "method": "slerp"}, InvalidInput, "exactly 2"),
    "unknown method": ({"method": "average"}, InvalidInput, "'average'.*'linear', 'slerp'"),
    "weights count": ({"weights": [1.0]}, InvalidInput, r"1 weights \[1.0\] given for 2"),
    "density zero": ({"method": "ties", "density": 0.0}, InvalidInput, r"density=0.0.*\(0, 1\]"),
    "density above one": ({"method": "dare_linear", "density": 1.5}, InvalidInput, "density=1.5"),
    "t outside": ({"method": "slerp", "t": 1.5}, InvalidInput, r"t=1.5.*\[0, 1\]"),
    "unused param": ({"density": 0.5}, InvalidInput, "'linear' does not use density"),
    "into": ({"into": "gguf"}, InvalidInput, "into='gguf'.*'adapter', 'model'"),
    "different bases": (
        {"variant": "other-base-name"},
        InvalidInput,
        "different base models.*another-model",
    ),
    "shape mismatch": (
        {"variant": "wrong-shape"},
        InvalidInput,
        r"down_proj.lora_A.weight has shape \[4, 64\].*base tensor "
        r"model.layers.0.mlp.down_proj.weight of shape \[64, 128\] \(lora_A must be \[r, 128\]\)",
    ),
    "missing weights": ({"variant": "no-weights"}, NotFound, "adapter_model.safetensors"),
    "pickle only": ({"variant": "pickle-only"}, InvalidInput, "pickle"),
    "missing base": ({"base": "nowhere"}, NotFound, "nowhere"),
    "same adapter twice": (
        {"adapters": [0, 1, 0], "method": "ties"},
        InvalidInput,
        r"adapter a0 is given twice \(positions 1 and 3\).*refused",
    ),
    "a copy of an adapter": (
        {"variant": "copy"},
        InvalidInput,
        r"adapters a0 and copy hold the same files \(sha256 [0-9a-f]{12}\).*refused",
    ),
    "config rank over other tensors": (
        {"variant": "r8-config", "method": "ties"},
        InvalidInput,
        r"gives r=8 for model.layers.0.mlp.down_proj, but tensor "
        r"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight has rank 4",
    ),
    "max_rank for a model": (
        {"method": "ties", "into": "model", "max_rank": 4},
        InvalidInput,
        "max_rank and max_error bound the factoring of an adapter result",
    ),
    "max_rank for linear": ({"max_rank": 4}, InvalidInput, "'linear' does not use max_rank=4"),
    "max_rank zero": ({"method": "dare_ties", "max_rank": 0}, InvalidInput, "max_rank=0"),
    "max_error one": (
        {"method": "ties", "max_error": 1.0},
        InvalidInput,
        r"max_error=1.0.*\(0, 1\)",
    ),
    "stacked rank above the engine": (
        {"adapters": [0, 1, 2], "engine_max_rank": 8},
        InvalidInput,
        "stacks the adapters' ranks into rank 16, above MAX_LORA_RANK=8",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_inputs_give_clear_errors_and_write_nothing(tiny, tmp_path, case):
    spec, error, pattern = ERROR_CASES[case]
    adapters = [tiny.adapters[i] for i in spec.get("adapters", [0, 1])]
    if "variant" in spec:
        adapters = [tiny.adapters[0], _variant(tiny, tmp_path, spec["variant"])]
    base = tmp_path / spec["base"] if "base" in spec else tiny.base
    keys = ("weights", "density", "t", "into", "max_rank", "max_error", "engine_max_rank")
    options = {k: spec[k] for k in keys if k in spec}
    out = tmp_path / "out" / "merged"
    with pytest.raises(error, match=pattern):
        merge_adapters(
            adapters,
            base_model_dir=base,
            method=spec.get("method", "linear"),
            output_dir=out,
            **options,
        )
    _assert_nothing_written(out.parent, out)


def test_a_non_empty_output_folder_is_a_conflict_and_is_left_alone(tiny, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        merge_adapters(tiny.adapters[:2], base_model_dir=tiny.base, method="linear", output_dir=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_registry_lists_the_six_methods():
    assert list(METHODS) == [
        "linear",
        "slerp",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
    ]
    assert all(m.name == name and m.description for name, m in METHODS.items())
