"""A Trainer callback that reports progress, keeps the loss history and honours cancel."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

Report = Callable[[dict[str, Any]], None]


class ProgressCallback(TrainerCallback):
    """Calls `report` with step, progress, loss, eval loss and ETA; stops when asked."""

    def __init__(self, report: Report, should_stop: Callable[[], bool], device: str) -> None:
        self.report = report
        self.should_stop = should_stop
        self.device = device
        self.history: list[dict[str, Any]] = []
        self.cancelled = False
        self._t0 = 0.0
        self._step0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0 = 0.0  # set when the first step starts (see on_step_begin)
        self._step0 = state.global_step
        # A resumed run carries the checkpoint's log; keep the whole curve, not just the rest.
        self.history = [e for e in map(_entry, state.log_history) if len(e) > 2]
        self._send(state, message=f"training on {self.device}: step {state.global_step}")

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # The ETA is timed from here, not from on_train_begin: a resumed run first skips the
        # batches it has already trained on, and loading and that skip are not step time.
        if not self._t0:
            self._t0 = time.monotonic()
            self._step0 = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._check_cancel(args, control)
        self._send(state)

    def on_substep_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # Checked per micro-batch too, so a cancel lands within seconds even with
        # gradient accumulation; the checkpoint is the last completed optimizer step.
        self._check_cancel(args, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.cancelled:
            control.should_evaluate = False

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        entry = _entry({"step": state.global_step, "epoch": state.epoch, **(logs or {})})
        if len(entry) > 2:
            self.history.append(entry)
            self._send(state)

    def _check_cancel(self, args: Any, control: Any) -> None:
        if self.cancelled:
            return
        stop = self.should_stop()
        if args.world_size > 1:
            stop = any_rank(stop, args.device)
        if stop:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True

    def _send(self, state: Any, message: str | None = None) -> None:
        if not state.is_world_process_zero:
            # Several processes train one job; rank 0 speaks for all of them.
            return
        total = max(state.max_steps, 1)
        done = state.global_step - self._step0
        eta = None
        if done > 0 and self._t0:
            per_step = (time.monotonic() - self._t0) / done
            eta = round(per_step * (state.max_steps - state.global_step), 1)
        last_loss = next((h["loss"] for h in reversed(self.history) if "loss" in h), None)
        last_eval = next((h["eval_loss"] for h in reversed(self.history) if "eval_loss" in h), None)
        if message is None:
            message = f"training on {self.device}: step {state.global_step}/{state.max_steps}"
            if eta is not None:
                message += f", about {_human(eta)} left"
        self.report(
            {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "progress": round(100.0 * state.global_step / total, 1),
                "current_epoch": max(1, math.ceil(state.epoch or 0.0)),
                "loss": last_loss,
                "eval_loss": last_eval,
                "eta_seconds": eta,
                "message": message,
                "history": self.history,
            }
        )


def any_rank(flag: bool, device: Any) -> bool:
    """True on every process when it is True on any of them.

    Ranks see a cancel or a signal at different moments; DDP deadlocks if one stops a step
    before the others, so they stop together at the first step where any of them saw it.
    """
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _entry(log: dict[str, Any]) -> dict[str, Any]:
    """Step, epoch and the losses of one Trainer log record."""
    entry = {"step": log.get("step", 0), "epoch": round(log.get("epoch") or 0.0, 4)}
    # A preference run's step also logs its rewards, margin and accuracy (preference.py).
    for key in ("loss", "eval_loss", "rewards_chosen", "rewards_rejected", "margin", "accuracy"):
        if key in log:
            entry[key] = float(log[key])
    return entry


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
