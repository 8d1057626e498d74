"""The Training tab's loss chart: whole-step ticks and a legend that never changes."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from loraflow.ui.training import loss_chart, smoothed

AXES = {"title": "Loss curve", "x": "Step", "y": "Loss", "series": ["loss", "smooth", "eval"]}


def spec_of(points: list[tuple[float, float, str]]) -> dict:
    frame = pd.DataFrame(points, columns=["step", "value", "series"])
    chart = loss_chart(frame, AXES)
    assert chart.chart == "line"
    return json.loads(chart.plot)


def x_axis(spec: dict) -> dict:
    axes = [layer["encoding"]["x"]["axis"] for layer in spec["layer"]]
    assert all(a == axes[0] for a in axes)
    return axes[0]


def test_a_short_run_is_labelled_at_each_whole_step() -> None:
    spec = spec_of([(1, 4.3, "loss"), (2, 4.2, "loss"), (2, 3.9, "eval")])
    assert x_axis(spec)["values"] == [1, 2]
    assert x_axis(spec)["format"] == "d"
    assert [v["step"] for v in spec["data"]["values"]] == [1, 2, 2]


def test_a_long_run_leaves_tick_spacing_to_the_chart_but_never_below_one_step() -> None:
    spec = spec_of([(s, 5.0 - s / 100, "loss") for s in range(1, 301)])
    axis = x_axis(spec)
    assert "values" not in axis
    assert axis["tickMinStep"] == 1


def test_every_series_is_in_the_legend_before_it_has_points_and_nan_rows_are_dropped() -> None:
    spec = spec_of([(1, 4.3, "loss"), (math.nan, math.nan, "eval")])
    assert spec["data"]["values"] == [{"step": 1, "value": 4.3, "series": "loss"}]
    for layer in spec["layer"]:
        scale = layer["encoding"]["color"]["scale"]
        assert scale["domain"] == AXES["series"]
        assert len(scale["range"]) == 3
    assert spec_of([])["data"]["values"] == []


def test_a_diverged_step_is_left_out_not_sent_as_invalid_json() -> None:
    spec = spec_of([(1, 4.3, "loss"), (2, math.inf, "loss"), (3, 4.1, "loss")])
    assert [v["step"] for v in spec["data"]["values"]] == [1, 3]
    # The smoothed series steps over it instead of carrying it forward.
    assert [p["value"] for p in smoothed([(1, 4.0), (2, math.inf), (3, 2.0)])] == [
        4.0,
        pytest.approx(0.3 * 2.0 + 0.7 * 4.0),
    ]


def test_a_single_step_has_one_tick() -> None:
    assert x_axis(spec_of([(1, 4.3, "loss")]))["values"] == [1]
