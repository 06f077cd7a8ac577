"""The settings of one calibration: checked once, when a public function is called, then passed as one object."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .._numerics.checks import (
    check_depth,
    check_flag,
    check_fraction,
    check_positive_int,
    check_sampling,
    check_target_sum,
)
from .._numerics.loss import check_loss
from .._numerics.split import seed_sequence
from .._numerics.transform import check_transform
from .result import check_select, seed_record

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._types import ArrayLike, Depth, LossName, RandomState, Sampling, Select, TransformName

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Every setting of a calibration, as the public functions document them; checked on creation.

    A public function makes it from its own arguments (:meth:`from_arguments`); the engine reads
    it and never passes its fields one by one.
    """

    calibration: str = "mcv"
    grid: ArrayLike | None = None
    split_fraction: float = 0.9
    n_splits: int | None = None
    max_scored_cells: int | None = 10_000
    sampling: Sampling = "poisson"
    dispersion: float | None = None
    depth: Depth | None = None
    n_groups: int = 10
    transform: TransformName = "log1p"
    target_sum: float | None = 1e4
    loss: LossName = "mse"
    random_state: RandomState = 0
    empty: str = "drop"
    select: Select = "min"
    chunk_size: int | None = None
    progress: bool | None = None

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], **overrides: Any) -> Settings:
        """Return the settings among a call's arguments (``locals()``), and ``overrides`` for those it lacks."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in arguments.items() if k in names}, **overrides)

    def __post_init__(self) -> None:
        """Check every setting before any data are read (a ``ValueError`` says what to pass)."""
        if self.calibration not in ("mcv", "genes"):
            msg = f"calibration must be 'mcv' or 'genes', got {self.calibration!r}."
            raise ValueError(msg)
        check_transform(self.transform)
        check_loss(self.loss)
        check_fraction(self.split_fraction)
        check_target_sum(self.target_sum)
        for name in ("n_splits", "max_scored_cells"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        check_positive_int(self.n_groups, "n_groups")
        if self.chunk_size is not None:
            check_positive_int(self.chunk_size, "chunk_size")
        if not isinstance(self.random_state, np.random.Generator):
            seed_sequence(self.random_state)  # its checks only: a Generator would advance
        if self.empty not in ("error", "drop"):
            msg = f"empty must be 'error' or 'drop', got {self.empty!r}."
            raise ValueError(msg)
        check_select(self.select, n_repeats=self.n_splits, calibration=self.calibration)
        sampling, dispersion = check_sampling(self.sampling, self.dispersion)
        object.__setattr__(self, "dispersion", dispersion)
        check_depth(self.depth, calibration=self.calibration, loss=self.loss)
        if self.calibration != "mcv" and (sampling != "poisson" or dispersion is not None):
            msg = "sampling and dispersion decide how molecules are split: they apply to calibration='mcv' only."
            raise ValueError(msg)
        if self.progress is not None:
            check_flag(self.progress, "progress")

    def params(self, **resolved: Any) -> dict[str, Any]:
        """Return the settings ``uns`` records (plain types), and those resolved from the data (``n_splits``...)."""
        params = {
            "transform": self.transform,
            "target_sum": None if self.target_sum is None else float(self.target_sum),
            "loss": self.loss,
        }
        if self.calibration == "mcv":
            params |= {"split_fraction": self.split_fraction, "sampling": self.sampling}
        return params | resolved | {"random_state": seed_record(self.random_state)}
