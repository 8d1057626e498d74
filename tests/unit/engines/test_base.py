"""Generation parameter validation and stop-string helpers."""

from __future__ import annotations

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.stops import StopFilter, truncate_at_stop
from loraflow.errors import InvalidInput


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("stop", [""], "stop string ''"),
        ("stop", ["ok", "  "], "stop string '  '"),
        ("max_new_tokens", 0, "max_new_tokens=0"),
        ("temperature", -0.1, "temperature=-0.1"),
        ("top_p", 0.0, "top_p=0.0"),
        ("top_p", 1.5, "top_p=1.5"),
        ("top_k", -1, "top_k=-1"),
        ("repetition_penalty", 0.0, "repetition_penalty=0.0"),
    ],
)
def test_invalid_params(field: str, value: object, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle.replace("(", "\\(")):
        GenerationParams(**{field: value}).validate()


def test_defaults_are_valid_and_zero_temperature_is_greedy() -> None:
    params = GenerationParams().validate()
    assert params.stop == [] and not params.greedy
    assert GenerationParams(temperature=0, top_k=0, top_p=1.0).validate().greedy
    # Each instance gets its own list.
    assert GenerationParams().stop is not params.stop


def test_truncate_at_earliest_stop() -> None:
    assert truncate_at_stop("abc END def STOP", ["STOP", "END"]) == ("abc ", True)
    assert truncate_at_stop("abc", ["x"]) == ("abc", False)


def test_stop_filter_never_emits_a_split_stop_string() -> None:
    stops = StopFilter(["<END>"])
    pieces = ["Hello wor", "ld <E", "N", "D> trailing"]
    out = "".join(stops.feed(p) for p in pieces) + stops.flush()
    assert out == "Hello world "
    assert stops.stopped


def test_stop_filter_flushes_held_tail() -> None:
    stops = StopFilter(["###"])
    out = "".join(stops.feed(p) for p in ["a", "b#", "#"]) + stops.flush()
    assert out == "ab##"
    assert not stops.stopped
