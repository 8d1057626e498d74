"""One model built at a time per process: transformers' `from_pretrained` is not thread-safe.

While it builds a model, transformers 5 swaps `PreTrainedModel.tie_weights` for a no-op
(`initialization.no_tie_weights`) and afterwards puts back what it found. Two loads at once in
one process (a background merge while a validation or the engine loads) can interleave so
that the no-op is what gets put back: from then on no model of the process ties its LM head to
its embedding, and a tied model such as SmolLM2 keeps an LM head on the meta device ("Cannot
copy out of meta tensor" at its first forward). Every model loaded by loraflow goes through
`pretrained`, which holds one process-wide lock around the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

LOAD_LOCK = threading.RLock()


def pretrained(load: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`load(*args, **kwargs)` (a `from_pretrained`) under the process-wide load lock."""
    with LOAD_LOCK:
        return load(*args, **kwargs)
