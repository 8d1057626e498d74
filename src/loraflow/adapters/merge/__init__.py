"""Merging LoRA adapters of one base model into a new adapter or a full model.

One method per module behind `MergeMethod` (base.py), listed in `METHODS`; `merge_adapters`
(run.py) is the entry point.
"""

from loraflow.adapters.merge.base import MergeMethod, MergeParams
from loraflow.adapters.merge.registry import METHODS, get_method
from loraflow.adapters.merge.run import MergeResult, merge_adapters

__all__ = ["METHODS", "MergeMethod", "MergeParams", "MergeResult", "get_method", "merge_adapters"]
