"""Early stopping on eval loss, with patience and a minimum improvement."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class EarlyStopOnEvalLoss(TrainerCallback):
    """Stops training after `patience` evaluations without a `min_delta` improvement.

    transformers' EarlyStoppingCallback needs load_best_model_at_end and matching save and
    eval strategies; this one only watches eval_loss and says why it stopped.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_evals = 0
        self.reason: str | None = None

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any
    ) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None or self.patience <= 0:
            return
        if self.best is None or loss < self.best - self.min_delta:
            self.best, self.bad_evals = loss, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.reason = (
                f"stopped early at epoch {state.epoch:.2f}: eval loss {loss:.4f} did not improve "
                f"on the best {self.best:.4f} by more than min_delta={self.min_delta:g} for "
                f"patience={self.patience} evaluation(s)"
            )
            control.should_training_stop = True
