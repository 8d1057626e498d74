"""TIES and DARE into an adapter: mergekit's dense result, factored to a reported error bound."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from loraflow.adapters.merge import merge_adapters
from tests.unit import merge_fixtures as mf

TARGETS = ("q_proj", "v_proj", "o_proj")
WEIGHTS = [0.7, 0.3]
# Both sides fold base + delta into float32 in different orders: relative rounding room per
# tensor on top of the reported factoring error.
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two r=4, alpha 8 adapters on q/v/o_proj, each also folded into the base."""
    root = tmp_path_factory.mktemp("dense")
    base = mf.build_base(root / "base")
    adapters = [mf.make_adapter(base, root / f"a{i}", seed=i + 1, targets=TARGETS) for i in (0, 1)]
    folded = [mf.fold(base, a, root / f"folded-{i}") for i, a in enumerate(adapters)]
    return SimpleNamespace(
        root=root, base=base, adapters=adapters, folded=folded, base_tensors=mf.load_tensors(base)
    )


def _merge(pair: SimpleNamespace, name: str, method: str, **kw):
    kw.setdefault("weights", WEIGHTS)
    return merge_adapters(
        pair.adapters,
        base_model_dir=pair.base,
        method=method,
        output_dir=pair.root / "out" / name,
        **kw,
    )


def _mergekit(pair: SimpleNamespace, name: str, method: str, weights: list[float], **values):
    config = {
        "merge_method": method,
        "base_model": str(pair.base),
        "models": [
            {"model": str(m), "parameters": {"weight": w, **values}}
            for m, w in zip(pair.folded, weights, strict=True)
        ],
    }
    return mf.run_mergekit(config, pair.root / f"mergekit-{name}", seed=0)


def _deltas(pair: SimpleNamespace, tensors: dict) -> dict[str, torch.Tensor]:
    """Adapted weights minus the base's, float64."""
    return {
        k: v.double() - pair.base_tensors[k].double()
        for k, v in tensors.items()
        if any(f".{t}." in k for t in TARGETS)
    }


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


# Deterministic cases: TIES at density 0.5; DARE at density 1 (no draw) checks the election,
# normalization and weights, which are then the same computation as mergekit's.
DETERMINISTIC = {
    "ties": {"density": 0.5},
    "dare_ties": {"density": 1.0},
    "dare_linear": {"density": 1.0},
}


@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_adapter_folded_in_equals_mergekit_within_the_reported_error(pair, method):
    values = DETERMINISTIC[method]
    result = _merge(pair, method, method, **values)
    factoring = result.checks["factoring"]
    assert factoring["within_tolerance"] and factoring["max_relative_error"] <= 1e-3
    assert result.warnings == ()
    mine = mf.load_tensors(mf.fold(pair.base, result.output_dir, pair.root / f"refold-{method}"))
    expected = mf.run_mergekit(
        {
            "merge_method": method,
            "base_model": str(pair.base),
            "models": [
                {"model": str(m), "parameters": {"weight": w, **values}}
                for m, w in zip(pair.folded, WEIGHTS, strict=True)
            ],
        },
        pair.root / f"mergekit-{method}",
    )
    got, ref = _deltas(pair, mine), _deltas(pair, expected)
    assert sorted(got) == sorted(ref) and len(ref) == 6
    for key, reported in factoring["relative_errors"].items():
        assert _relative(got[key], ref[key]) <= reported + ROUNDING, key
    # Layers no adapter touches stay the base's.
    for key, tensor in expected.items():
        if key not in ref:
            torch.testing.assert_close(mine[key], tensor, atol=1e-6, rtol=0, msg=key)
    # The merge's own reference check (PEFT fold vs dense result) saw the same errors.
    reference = result.checks["reference"]
    assert reference["tensors"] == 6 and reference["worst_error_ratio"] <= 1
    for key, reported in factoring["relative_errors"].items():
        assert reference["relative_errors"][key] <= reported + ROUNDING
    meta = json.loads((result.output_dir / "loraflow.json").read_text())
    assert meta["checks"]["factoring"]["relative_errors"] == factoring["relative_errors"]


def test_a_rank_cap_gives_a_larger_reported_error_and_a_warning(pair):
    free = _merge(pair, "ties-free", "ties", density=0.5)
    capped = _merge(pair, "ties-capped", "ties", density=0.5, max_rank=4)
    engine = _merge(pair, "ties-engine", "ties", density=0.5, engine_max_rank=6)
    low, high = free.checks["factoring"], capped.checks["factoring"]
    assert low["rank"] > 4 and high["rank"] == 4 and engine.checks["factoring"]["rank"] == 6
    assert high["max_relative_error"] > 100 * low["max_relative_error"]
    assert not high["within_tolerance"] and high["max_relative_error"] > high["tolerance"]
    (warning,) = capped.warnings
    assert "max_rank=4" in warning and "--into model" in warning
    assert high["worst_tensor"] in warning
    assert "MAX_LORA_RANK=6" in engine.warnings[0]
    # The saved adapter really has that rank, and folding it in gives the reported error.
    config = json.loads((capped.output_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4
    mine = _deltas(pair, mf.load_tensors(mf.fold(pair.base, capped.output_dir, pair.root / "f4")))
    dense = _deltas(pair, mf.load_tensors(mf.fold(pair.base, free.output_dir, pair.root / "ff")))
    for key, reported in high["relative_errors"].items():
        assert abs(_relative(mine[key], dense[key]) - reported) <= 2e-3, key
    assert json.loads((capped.output_dir / "loraflow.json").read_text())["checks"]["warnings"]
    # A looser bound needs fewer ranks.
    loose = _merge(pair, "ties-loose", "ties", density=0.5, max_error=0.3)
    assert loose.checks["factoring"]["rank"] < low["rank"]
    assert loose.checks["factoring"]["max_relative_error"] <= 0.3


def _files(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.output_dir / "adapter_model.safetensors"))


def test_dare_with_a_seed_repeats_and_without_one_records_the_seed_it_drew(pair):
    first = _merge(pair, "dare-7", "dare_ties", density=0.5, seed=7)
    again = _merge(pair, "dare-7-again", "dare_ties", density=0.5, seed=7)
    other = _merge(pair, "dare-8", "dare_ties", density=0.5, seed=8)
    assert all(torch.equal(v, _files(again)[k]) for k, v in _files(first).items())
    assert any(not torch.equal(v, _files(other)[k]) for k, v in _files(first).items())
    drawn = _merge(pair, "dare-drawn", "dare_ties", density=0.5)
    recorded = json.loads((drawn.output_dir / "loraflow.json").read_text())["seed"]
    assert recorded == drawn.seed
    replay = _merge(pair, "dare-replay", "dare_ties", density=0.5, seed=recorded)
    assert all(torch.equal(v, _files(replay)[k]) for k, v in _files(drawn).items())


def _kept(delta: torch.Tensor, source: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(share of values kept, L1 ratio to the source, kept values / source values)."""
    mask = delta.abs() > 1e-6 * source.abs().max()
    return (
        float(mask.double().mean()),
        float(delta.abs().sum() / source.abs().sum()),
        delta[mask] / source[mask],
    )


def test_dare_drops_at_the_density_and_keeps_the_l1_norm_as_mergekit_does(pair):
    """DARE's draws cannot match mergekit's, so both are checked for the same statistics."""
    density = 0.5
    # Weight 0 on the second adapter leaves DARE of the first alone, value by value.
    result = _merge(pair, "dare-alone", "dare_linear", density=density, weights=[1.0, 0.0], seed=3)
    assert result.checks["factoring"]["max_relative_error"] <= 1e-3
    ours = _deltas(pair, mf.load_tensors(mf.fold(pair.base, result.output_dir, pair.root / "fd")))
    theirs = _deltas(pair, _mergekit(pair, "dare-alone", "dare_linear", [1.0, 0.0], density=0.5))
    source = _deltas(pair, mf.load_tensors(pair.folded[0]))
    for key, original in source.items():
        n = original.numel()
        spread = 5 * math.sqrt(density * (1 - density) / n)  # 5 sigma of a binomial share
        for got in (ours[key], theirs[key]):
            share, l1, ratios = _kept(got, original)
            assert abs(share - density) <= spread, key
            # Rescaled to the same L1 norm, every kept value by one common factor ~1/density.
            assert abs(l1 - 1) <= 2e-3, key
            assert float(ratios.max() - ratios.min()) <= 2e-3 * float(ratios.mean()), key
            assert abs(float(ratios.mean()) * share - 1) <= 0.1, key
    # DARE-TIES on both adapters: the same share of surviving values and the same L1 size.
    tied = _merge(pair, "dare-ties", "dare_ties", density=density, seed=3)
    mine = _deltas(pair, mf.load_tensors(mf.fold(pair.base, tied.output_dir, pair.root / "ft")))
    mk = _deltas(pair, _mergekit(pair, "dare-ties", "dare_ties", WEIGHTS, density=0.5))
    for key in source:
        # Values above 2% of the largest: the factoring's noise on dropped values (~1e-3 of
        # the layer's size) stays below it, and both sides lose the same few small values.
        floor = 0.02 * float(mk[key].abs().max())
        share_mine = float((mine[key].abs() > floor).double().mean())
        share_mk = float((mk[key].abs() > floor).double().mean())
        assert abs(share_mine - share_mk) <= 10 * math.sqrt(0.25 / mine[key].numel()), key
        assert abs(float(mine[key].abs().sum() / mk[key].abs().sum()) - 1) <= 0.1, key
    assert not torch.equal(mine[key], mk[key])  # independent draws, not a copy


def test_adapters_of_different_ranks_merge_with_ties(pair, tmp_path: Path):
    wide = mf.make_adapter(pair.base, tmp_path / "r8", seed=5, r=8, targets=TARGETS)
    result = merge_adapters(
        [pair.adapters[0], wide],
        base_model_dir=pair.base,
        method="ties",
        density=0.5,
        output_dir=tmp_path / "out",
    )
    assert result.checks["factoring"]["within_tolerance"]
    assert result.checks["reference"]["worst_error_ratio"] <= 1
