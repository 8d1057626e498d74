"""The progress callback's ETA after a resume: timed from the first step, not from loading."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from transformers import TrainerControl, TrainerState

from loraflow.training import progress
from loraflow.training.progress import ProgressCallback


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_resumed_run_estimates_from_its_own_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    reports: list[dict[str, Any]] = []
    cb = ProgressCallback(reports.append, lambda: False, "cpu")
    args = SimpleNamespace(world_size=1)
    state = TrainerState(max_steps=220, global_step=100)
    control = TrainerControl()
    cb.on_train_begin(args, state, control)
    # Loading and skipping the 100 batches already trained on take 5 minutes...
    clock.now += 300
    # ...then each step takes 2 s.
    for _ in range(6):
        cb.on_step_begin(args, state, control)
        clock.now += 2
        state.global_step += 1
        cb.on_step_end(args, state, control)
    last = reports[-1]
    assert last["step"] == 106
    # 114 steps left at 2 s each: the 5 minutes before the first step are not step time.
    assert last["eta_seconds"] == pytest.approx(114 * 2)
    assert "about 4 min left" in last["message"]
