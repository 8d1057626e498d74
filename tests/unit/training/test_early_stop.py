"""Early stopping on eval loss: patience, min delta, and the reason it gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loraflow.errors import InvalidInput
from loraflow.training.early_stop import EarlyStopOnEvalLoss
from loraflow.training.params import TrainParams


def _feed(cb: EarlyStopOnEvalLoss, losses: list[float]) -> int | None:
    """Evaluate each loss in turn; return the evaluation number that stopped training."""
    for i, loss in enumerate(losses, start=1):
        control = SimpleNamespace(should_training_stop=False)
        cb.on_evaluate(None, SimpleNamespace(epoch=float(i)), control, metrics={"eval_loss": loss})
        if control.should_training_stop:
            return i
    return None


def test_stops_after_patience_evaluations_without_improvement() -> None:
    cb = EarlyStopOnEvalLoss(patience=2)
    assert _feed(cb, [2.0, 1.5, 1.6, 1.55, 1.0]) == 4
    assert "epoch 4.00" in cb.reason and "best 1.5000" in cb.reason


def test_improvements_smaller_than_min_delta_do_not_count() -> None:
    cb = EarlyStopOnEvalLoss(patience=1, min_delta=0.1)
    assert _feed(cb, [2.0, 1.95]) == 2
    cb = EarlyStopOnEvalLoss(patience=1, min_delta=0.1)
    assert _feed(cb, [2.0, 1.85, 1.7]) is None


def test_off_by_default_and_bad_values_rejected() -> None:
    assert _feed(EarlyStopOnEvalLoss(patience=0), [1.0, 2.0, 3.0, 4.0]) is None
    assert TrainParams().early_stopping_patience == 0
    with pytest.raises(InvalidInput, match="early_stopping"):
        TrainParams.from_dict({"early_stopping_patience": -1})
