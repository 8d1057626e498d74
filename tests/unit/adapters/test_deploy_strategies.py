"""Deployment strategies as data: new states, traffic picks, canary steps, live judgement."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loraflow.adapters import deploy as d
from loraflow.errors import InvalidInput


def test_replace_and_blue_green_keep_what_they_replace() -> None:
    first = d.new_state("replace", None, "a@v1")
    assert [v["adapter"] for v in first["variants"]] == ["a@v1"]
    green = d.new_state("blue-green", first, "a@v2")
    assert green["color"] == "green" and green["variants"][0]["adapter"] == "a@v2"
    assert green["standby"] == {"name": "blue", "adapter": "a@v1"}
    blue = d.new_state("blue_green", green, "a@v3")
    assert blue["color"] == "blue" and blue["standby"]["adapter"] == "a@v2"


def test_split_strategies_need_a_current_adapter_and_sane_numbers() -> None:
    with pytest.raises(InvalidInput, match="deploy a first adapter"):
        d.new_state("canary", None, "a@v2")
    live = d.new_state("replace", None, "a@v1")
    with pytest.raises(InvalidInput, match="already serves"):
        d.new_state("ab", live, "a@v1")
    with pytest.raises(InvalidInput, match="increasing percentages"):
        d.new_state("canary", live, "a@v2", schedule=[50, 10])
    with pytest.raises(InvalidInput, match="two shares"):
        d.new_state("ab", live, "a@v2", split=[50, 30, 20])
    with pytest.raises(InvalidInput, match="two shares, not 1"):
        d.new_state("ab", live, "a@v2", split=[50])
    with pytest.raises(InvalidInput, match="allowed: replace, blue_green, canary, ab"):
        d.check_strategy("shadow")


def test_ab_split_is_drawn_by_weight() -> None:
    state = d.new_state("ab", d.new_state("replace", None, "a@v1"), "b@v1", split=[70, 30])
    rng = random.Random(7)
    counts = Counter(d.pick(state, rng)["name"] for _ in range(4000))
    assert abs(counts["B"] / 4000 - 0.30) < 0.03


def test_canary_steps_up_then_promotes() -> None:
    live = d.new_state("replace", None, "a@v1")
    state = d.new_state("canary", live, "a@v2", percent=10, schedule=[10, 50], step_requests=3)
    assert [v["weight"] for v in state["variants"]] == [90.0, 10.0]
    assert state["schedule"] == [10.0, 50.0, 100.0]
    stats = {"canary": d.VariantStats()}
    for _ in range(2):
        stats["canary"].add(True, 0.1)
    assert not d.ready_to_advance(state, stats)
    stats["canary"].add(True, 0.1)
    assert d.ready_to_advance(state, stats)
    state = d.advance_canary(state)
    assert [v["weight"] for v in state["variants"]] == [50.0, 50.0]
    done = d.advance_canary(state)
    assert done["strategy"] == "replace" and done["variants"][0]["adapter"] == "a@v2"


def test_judge_rolls_back_on_error_rate_or_latency_only_after_enough_requests() -> None:
    state = d.new_state("ab", d.new_state("replace", None, "a@v1"), "b@v1")
    stats = {"A": d.VariantStats(), "B": d.VariantStats()}
    limits = {"max_error_rate": 0.2, "max_latency_ratio": 3.0, "min_requests": 10}
    for _ in range(9):
        stats["B"].add(False, 0.1)
    assert d.judge(state, stats, **limits) is None  # too few requests to judge
    stats["B"].add(False, 0.1)
    assert "error rate 100%" in d.judge(state, stats, **limits)

    slow = {"A": d.VariantStats(), "B": d.VariantStats()}
    for _ in range(10):
        slow["A"].add(True, 0.1)
        slow["B"].add(True, 0.5)
    assert "p95 latency" in d.judge(state, slow, **limits)
    for _ in range(30):
        slow["B"].add(True, 0.12)
    assert d.judge(state, {"A": slow["A"], "B": d.VariantStats()}, **limits) is None


def test_p95_is_the_nearest_rank_not_the_slowest_request() -> None:
    stats = d.VariantStats()
    for ms in range(1, 21):  # 20 requests of 1..20 ms
        stats.latencies.append(ms / 1000)
    # One stall among 20 requests must not be the p95 the rollback judges.
    assert stats.quantile(0.95) == 0.019
    assert stats.quantile(0.5) == 0.010
    assert stats.quantile(1.0) == 0.020
    one = d.VariantStats()
    one.latencies.append(0.5)
    assert one.quantile(0.95) == 0.5
