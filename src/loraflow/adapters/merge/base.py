"""The merge-method interface: a name, a pydantic params model and the two ways to merge."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from loraflow.errors import InvalidInput

if TYPE_CHECKING:
    import torch

    from loraflow.adapters.merge.lora import LoraSource

Into = Literal["adapter", "model"]


class MergeParams(BaseModel):
    """Parameters shared by every method: none; subclasses add theirs."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def public(self) -> dict[str, Any]:
        """The parameters as recorded in loraflow.json (`lambda_` written as `lambda`)."""
        data = self.model_dump()
        if "lambda_" in data:
            data["lambda"] = data.pop("lambda_")
        return data


class WeightedParams(MergeParams):
    """One weight per adapter, in the order the adapters are given."""

    weights: list[float]


class LambdaParams(WeightedParams):
    """Weights plus `lambda_`, a factor on the summed task vector."""

    lambda_: float = 1.0

    @field_validator("lambda_")
    @classmethod
    def _lambda_not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("lambda=0 would erase every adapter; use a non-zero factor")
        return value


class SparseParams(LambdaParams):
    """Task-vector parameters plus `density`, the share of each delta that is kept."""

    density: float = 0.5

    @field_validator("density")
    @classmethod
    def _density_in_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"density={value!r} is outside (0, 1]; 1 keeps every value")
        return value


class MergeMethod(ABC):
    """One merge algorithm: validates its parameters and merges adapters either way."""

    name: ClassVar[str]
    description: ClassVar[str]
    params_model: ClassVar[type[MergeParams]]
    min_adapters: ClassVar[int] = 2
    max_adapters: ClassVar[int | None] = None
    # The result kinds for which reference_delta gives the expected result, checked after
    # each merge.
    reference_for: ClassVar[tuple[Into, ...]] = ()

    def parse_params(self, n_adapters: int, given: dict[str, Any]) -> MergeParams:
        """Validated parameters for `n_adapters` adapters from the non-None user values."""
        allowed = list(self.params_model.model_fields)
        for key, value in given.items():
            if value is not None and key not in allowed:
                raise InvalidInput(
                    f"merge method {self.name!r} does not use {_label(key)}={value!r}; "
                    f"it takes {[_label(a) for a in allowed] or 'no parameters'}"
                )
        values = {k: v for k, v in given.items() if v is not None}
        if "weights" in allowed:
            weights = values.get("weights")
            if weights is None:
                values["weights"] = [1.0] * n_adapters
            elif len(weights) != n_adapters:
                raise InvalidInput(
                    f"{len(weights)} weights {list(weights)} given for {n_adapters} adapters; "
                    f"give one weight per adapter"
                )
        try:
            return self.params_model.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(_error_text(err) for err in exc.errors())
            raise InvalidInput(f"merge method {self.name!r}: {problems}") from exc

    def check_count(self, n_adapters: int) -> None:
        """Raise unless this method can merge `n_adapters` adapters."""
        low, high = self.min_adapters, self.max_adapters
        if n_adapters < low or (high is not None and n_adapters > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}"
            if high is not None and low != high:
                wanted = f"{low} to {high}"
            raise InvalidInput(
                f"merge method {self.name!r} needs {wanted} adapters, got {n_adapters}"
            )

    @abstractmethod
    def merge_lora(
        self,
        sources: list[LoraSource],
        params: Any,
        out_dir: Path,
        *,
        base_model_dir: Path,
        seed: int,
        engine_max_rank: int,
    ) -> dict[str, Any]:
        """Write the merged PEFT adapter into `out_dir`; return how it was factored.

        The report holds at least "how", "rank" and "max_relative_error" (of B @ A against
        the method's dense result, per layer); a "warning" when that is above the bound.
        """

    @abstractmethod
    def mergekit_config(
        self, models: list[Path], base_model_dir: Path, params: Any
    ) -> dict[str, Any]:
        """mergekit configuration that merges `models` (the base with each adapter merged in)."""

    def reference_delta(
        self,
        deltas: list[torch.Tensor],
        params: Any,
        *,
        into: Into,
        base: torch.Tensor | None,
        module: str = "",
        seed: int = 0,
    ) -> torch.Tensor | None:
        """Expected change of one base weight (layer `module`) given each adapter's dense delta.

        None where no reference is known.
        """
        return None


def model_ref(path: Path) -> dict[str, Any]:
    """A mergekit model reference that never parses "+" or "@" in the path."""
    return {"model": {"path": str(path)}}


def _label(field: str) -> str:
    return "lambda" if field == "lambda_" else field


def _error_text(err: Any) -> str:
    where = ".".join(_label(str(p)) for p in err.get("loc", ())) or "parameters"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if where in msg:
        return msg
    return f"{where}={err.get('input')!r}: {msg}"
