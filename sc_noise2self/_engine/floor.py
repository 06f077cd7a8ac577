"""The floor of an output on the count scale, chosen by molecular cross-validation on the held-out likelihood.

A denoised expected count can reach 0 (a prediction at or below the transform of zero), and a
Poisson rate of 0 gives held-out molecules probability zero. ``scale="counts"`` therefore
floors each entry at a share ``f`` of its null rate — the cell's depth times the gene's share
of all counts, what the entry would be expected to hold if the gene were expressed alike in
every cell — and chooses ``f`` the way the setting itself was chosen: the chosen setting is
fitted on each split's training part and its floored output is scored by the Poisson
likelihood of the held-out part, for every ``f`` of :data:`FLOORS` (0 included, so no floor
wins where none helps).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.base import clone

from .. import _logging as logg
from .._numerics.transform import expected_values
from ..denoisers._base import BaseDenoiser, Tags
from .mcv import run_mcv
from .refit import CountFloor, null_shares

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tqdm import tqdm

    from ..denoisers._base import Block, Data, Denoiser, GridValue, Partition
    from .blocks import Source
    from .result import CalibrationResult
    from .settings import Settings

__all__ = ["FLOORS", "PER", "count_floor"]

PER = 1_000_000
FLOORS = np.array([0, 100, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000])
"""Floors swept, in parts per :data:`PER` of each entry's null rate (grid values are integers)."""


class _Floored(BaseDenoiser):
    """A fitted method's output at one setting, its expected counts floored at shares of the null rates.

    The grid holds the shares ``f`` (in parts per :data:`PER`); the prediction at ``f`` is
    ``max(ŷ, F_s(f · n_c · π_g))`` on the transformed scale, ``F_s(μ) = E[T(s X)]`` for
    ``X ~ Poisson(μ)`` (the map the depth conversion inverts), so the floor applies to the
    expected counts the conversion reads.
    ``depths``: each cell's depth ``n_c`` at the scale of the data fitted on; ``shares``: ``π_g``.
    """

    tags = Tags(blockwise=True)
    axis_labels: ClassVar[dict[str, str]] = {"count_floor": "floor (parts per million of the null rate)"}

    def __init__(
        self,
        *,
        denoiser: Denoiser | None = None,
        value: GridValue | None = None,
        depths: np.ndarray | None = None,
        shares: np.ndarray | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.value = value
        self.depths = depths
        self.shares = shares

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("count_floor",)

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        return FLOORS

    def check_grid(self, grid: Any, shape: tuple[int, int]) -> np.ndarray:
        return np.unique(np.asarray(grid, dtype=np.int64))

    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> _Floored:
        """Fit the method at its setting on ``data``; tabulate the transform of the floors' rates."""
        method = clone(self.denoiser, safe=False)
        value = np.array([self.value])
        method_grid = method.check_grid(value if value.ndim == 1 else value.reshape(1, -1), data.shape)
        self.grid_, self.output_ = np.asarray(grid), method.fit(data, method_grid).output(self.value)
        self.scales_ = data.scales
        most = float(np.max(self.depths, initial=0.0) * np.max(self.shares, initial=0.0) * np.max(grid) / PER) + 1.0
        self.expected_ = expected_values(data.transform, scales=data.scales, max_rate=most)
        return self

    def predictions(self, block: Block) -> Iterator[tuple[int, np.ndarray]]:
        """Yield the block's output at each floor (the method's prediction once, then each floor's maximum)."""
        pred = np.asarray(self.output_.block(block), dtype=np.float64)
        null = np.outer(self.depths[block.rows], self.shares)
        for per in self.grid_:
            floor = self.expected_(per / PER * null, self.scales_[block.rows])
            yield int(per), np.maximum(pred, floor)


def count_floor(
    source: Source,
    denoiser: Denoiser,
    result: CalibrationResult,
    settings: Settings,
    *,
    totals: np.ndarray,
    bar: tqdm,
) -> CountFloor:
    """Calibrate the floor of the count output at ``result``'s choice: MCV with the Poisson loss over :data:`FLOORS`.

    The splits are drawn as the calibration's (the same ones for an integer seed). The record
    ``uns`` keeps holds the chosen ``share`` of the null rate, the ``grid`` of shares and its
    ``loss`` (held-out Poisson negative log-likelihood per entry); the genes' shares of all
    counts come with it, for the output.
    """
    shares = null_shares(source, totals)
    floored = _Floored(denoiser=denoiser, value=result.best, depths=settings.split_fraction * totals, shares=shares)
    poisson = replace(settings, calibration="mcv", loss="poisson", depth=None, grid=FLOORS)
    floors = run_mcv(source, floored, poisson, method=result.method, totals=totals, bar=bar)
    share = int(floors.best) / PER
    logg.info(f"    expected counts floored at {share:g} of each entry's null rate (held-out likelihood)")
    return CountFloor(share, shares, {"share": share, "grid": floors.grid / PER, "loss": floors.loss_mean})
