"""The merge methods by name."""

from __future__ import annotations

from loraflow.adapters.merge.base import MergeMethod
from loraflow.adapters.merge.dare_linear import DareLinear
from loraflow.adapters.merge.dare_ties import DareTies
from loraflow.adapters.merge.linear import Linear
from loraflow.adapters.merge.slerp import Slerp
from loraflow.adapters.merge.task_arithmetic import TaskArithmetic
from loraflow.adapters.merge.ties import Ties
from loraflow.errors import InvalidInput

METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (Linear(), Slerp(), TaskArithmetic(), Ties(), DareTies(), DareLinear())
}


def get_method(name: str) -> MergeMethod:
    """The merge method called `name`; raise listing the known ones otherwise."""
    method = METHODS.get(str(name).strip().lower())
    if method is None:
        raise InvalidInput(f"unknown merge method {name!r}; choose one of {list(METHODS)}")
    return method
