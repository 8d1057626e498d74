"""What every section of the Models tab builds on: the page parts and one change signal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from loraflow.ui.context import UIContext


@dataclass
class TabParts:
    """What a section builds on: labels and runtime, the page, the tab, a change signal."""

    ctx: UIContext
    demo: gr.Blocks
    tab: gr.Tab
    changed: gr.State


Section = Callable[[TabParts], None]


def bump(value: int | None) -> int:
    """The next value of the change signal."""
    return (value or 0) + 1


def refresh_on(
    parts: TabParts, fn: Callable[..., Any], inputs: Sequence[Any], outputs: Sequence[Any]
) -> None:
    """Run `fn` on page load, when the tab opens, and when any section changes adapters."""
    for trigger in (parts.demo.load, parts.tab.select, parts.changed.change):
        trigger(fn, list(inputs), list(outputs), show_progress="hidden")
