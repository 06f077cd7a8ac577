"""The outcome of a calibration: the loss curve, the choice, and what the log and ``uns`` say of them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _logging as logg
from .._numerics.dispersion import DEPENDENT_HALVES
from .._numerics.rows import GROUP

if TYPE_CHECKING:
    from .._types import RandomState, Select
    from ..denoisers._base import Denoiser, GridValue

__all__ = [
    "CalibrationResult",
    "calibration_record",
    "check_finite_loss",
    "check_finite_output",
    "check_select",
    "flat_range",
    "grid_value",
    "log_choice",
    "package_version",
    "resolve_n_splits",
    "seed_record",
    "simplicity_rank",
    "warn_about_choice",
]


def package_version() -> str:
    try:
        return version("sc_noise2self")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def seed_record(random_state: RandomState) -> int | str | None:
    """Return what ``uns`` keeps of the seed.

    The int (as text beyond int64, which h5ad cannot store), None, or a note that a
    Generator was passed.
    """
    if random_state is None or isinstance(random_state, np.random.Generator):
        return None if random_state is None else "numpy.random.Generator"
    return int(random_state) if int(random_state) < 2**63 else str(int(random_state))


def _divergence_advice(denoiser: Denoiser) -> str:
    learning_rate = denoiser.get_params().get("learning_rate") if hasattr(denoiser, "get_params") else None
    first = "" if learning_rate is None else f"lower the autoencoder's learning_rate (now {learning_rate:g}), or "
    return f"{first}use a smaller target_sum (e.g. 1e4) or transform ('log1p' or 'sqrt') if the values are huge"


def check_finite_loss(result: CalibrationResult, denoiser: Denoiser) -> None:
    """Refuse a loss curve with NaN or infinite values (a diverged or overflowing denoiser)."""
    bad = np.flatnonzero(~np.isfinite(result.loss).all(axis=0))
    if bad.size:
        values = ", ".join(str(grid_value(result.grid, int(i))) for i in bad[:5]) + (", …" if bad.size > 5 else "")
        msg = (
            f"The calibration loss is not finite at {'/'.join(result.grid_names)} = {values}: the denoiser's "
            f"predictions overflowed or diverged there. Nothing was written; {_divergence_advice(denoiser)}."
        )
        raise ValueError(msg)


def check_finite_output(arrays: tuple[np.ndarray, ...], value: GridValue, denoiser: Denoiser) -> None:
    """Refuse output (or its factors) with NaN or infinite values."""
    if not all(np.isfinite(a).all() for a in arrays):
        msg = (
            f"The denoised output at the chosen value {value} is not finite (the refit on all counts overflowed or "
            f"diverged). Nothing was written; {_divergence_advice(denoiser)}."
        )
        raise ValueError(msg)


def grid_value(grid: np.ndarray, i: int) -> GridValue:
    """Grid value ``i`` as an int (1-D grid) or a tuple of ints (one per axis)."""
    value = grid[i]
    return int(value) if np.ndim(value) == 0 else tuple(int(v) for v in value)


@dataclass
class CalibrationResult:
    """Outcome of a self-supervised sweep (see :func:`sc_noise2self.tl.calibrate`).

    Attributes
    ----------
    method
        Name of the denoiser.
    calibration
        ``"mcv"`` (molecular cross-validation) or ``"genes"`` (Noise2Self gene partition).
    grid_names
        What each grid axis means (e.g. ``("n_comps",)`` or ``("t", "n_neighbors")``).
    grid
        Values swept in sweep order: 1-D, or one row per value and one column per axis.
    loss
        Self-supervised loss per matrix entry: one row per split (MCV) or per gene group
        (scaled so that their mean is the loss per entry), one column per grid value.
    params
        The calibration settings, h5ad-safe.
    baseline
        MCV: the same loss for no denoising (the training part itself, converted to the
        held-out depth), per split; None for the gene partition, where it is undefined.
    select
        How :attr:`best` is chosen: ``"min"`` (the lowest mean loss) or ``"1se"`` (the
        simplest value whose mean loss is within one standard error of the minimum, see
        :attr:`best`).
    dispersion
        MCV: the counts' variance around a smooth fit over what Poisson sampling of
        molecules gives (1 for UMI counts; see :attr:`dependent_halves`); None for the gene
        partition or when the data are too small to tell.
    split_dispersion
        MCV: the variance-to-mean ratio the split assumed: 1 for binomial thinning
        (``sampling="poisson"``), ``φ`` for ``sampling="negative_binomial"``.
    gene_groups
        The gene partition (a group index per gene) of ``calibration="genes"``; None for MCV.
    reports
        MCV: what each split's fit reported (:meth:`~sc_noise2self.denoisers.Sweep.report`), e.g.
        a method's own rule for its setting.
    cell_group_loss
        MCV: the loss of each fixed group of 256 consecutive cells scored (all of them, or the
        sample of ``max_scored_cells``; the data's last group may be smaller; split × group × grid
        value; a split's groups add up to its row of :attr:`loss`), for the standard error across
        cells; None for the gene partition.
    n_cells
        MCV: the cells scored (the groups of :attr:`cell_group_loss` hold them in order).
    """

    method: str
    calibration: str
    grid_names: tuple[str, ...]
    grid: np.ndarray
    loss: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    baseline: np.ndarray | None = None
    select: Select = "min"
    dispersion: float | None = None
    split_dispersion: float = 1.0
    gene_groups: np.ndarray | None = None
    reports: list[dict[str, float]] = field(default_factory=list)
    cell_group_loss: np.ndarray | None = field(default=None, repr=False)
    n_cells: int = 0

    @property
    def dependent_halves(self) -> bool:
        """Whether :attr:`dispersion` says the MCV halves are dependent (read counts split as molecules).

        True when the counts vary more than ``DEPENDENT_HALVES`` (1.5) times what the split
        assumed (:attr:`split_dispersion`): binomial thinning then leaves
        each molecule's reads in both halves, and MCV chooses too little denoising.
        ``sampling="negative_binomial"`` splits such counts into uncorrelated halves; the gene
        partition (``calibration="genes"``) does not split molecules.
        """
        return self.dispersion is not None and self.dispersion > DEPENDENT_HALVES * self.split_dispersion

    @property
    def loss_mean(self) -> np.ndarray:
        """Loss averaged over splits or gene groups."""
        return self.loss.mean(axis=0)

    @property
    def loss_se(self) -> np.ndarray:
        """Standard error of :attr:`loss_mean` across splits or gene groups (zeros for one split)."""
        return _standard_error(self.loss)

    @property
    def difference_se(self) -> np.ndarray:
        """Standard error of each value's mean loss minus the minimum's, paired by split or gene group.

        Splits (and gene groups, far more) differ in their overall level, shared by every
        grid value; pairing removes it, so this is the uncertainty of the comparison
        itself — what the 1-SE rule needs.
        """
        return _standard_error(self.loss - self.loss[:, [self._minimum]])

    @property
    def cell_difference_se(self) -> np.ndarray:
        """Standard error of each value's mean loss minus the minimum's, from the spread across cells.

        MCV scores each scored cell's held-out molecules: groups of cells give independent pieces
        of each difference, so their spread bounds it even with one split. The groups are runs of
        consecutive cells: where cells are ordered by sample or type, groups differ by more than
        noise and the error is larger (conservative). Zeros for the gene partition (see
        :attr:`difference_se`) or fewer than two groups of cells.
        """
        groups = self.cell_group_loss
        if groups is None or groups.shape[1] < 2:
            return np.zeros(len(self.grid))
        differences = (groups - groups[:, :, [self._minimum]]).mean(axis=0)  # cell groups × grid values
        # Each group's share of the difference is in proportion to its cells (the last group is
        # smaller): the spread around those shares is the noise.
        n_groups, last = differences.shape[0], self.n_cells - GROUP * (differences.shape[0] - 1)
        shares = np.r_[np.full(n_groups - 1, GROUP), last] / self.n_cells
        residuals = differences - shares[:, None] * differences.sum(axis=0)
        return np.sqrt(n_groups / (n_groups - 1) * (residuals**2).sum(axis=0))

    @property
    def within_one_se(self) -> np.ndarray:
        """Positions in :attr:`grid` whose mean loss is within one standard error of the minimum.

        The error is the larger of :attr:`difference_se` (across splits or gene groups) and
        :attr:`cell_difference_se` (across cells): where several values are within it, the data
        cannot tell them apart, and the curve is flat there.
        """
        mean = self.loss_mean
        error = np.maximum(self.difference_se, self.cell_difference_se)
        return np.flatnonzero(mean - mean[self._minimum] <= error)

    @property
    def _minimum(self) -> int:
        return int(np.argmin(self.loss_mean))

    @property
    def best_index(self) -> int:
        """Position of :attr:`best` in :attr:`grid`."""
        if self.select == "min":
            return self._minimum
        mean = self.loss_mean
        within = np.flatnonzero(mean - mean[self._minimum] <= self.difference_se)
        return int(within[np.argmin(simplicity_rank(self.grid)[within])])

    @property
    def best(self) -> GridValue:
        """The chosen grid value.

        ``select="min"``: the lowest mean loss (the first in sweep order on ties).
        ``select="1se"``: of the values whose mean loss exceeds the minimum by at most one
        (paired) standard error, the simplest: the smallest value, compared axis by axis
        in the order of :attr:`grid_names` — the fewest components (PCA), the shortest
        diffusion time then the fewest neighbours (diffusion), the fewest neighbours
        (kNN average), the narrowest bottleneck then the fewest epochs (autoencoder).
        """
        return grid_value(self.grid, self.best_index)

    @property
    def grid_edge(self) -> list[str]:
        """Axes on which :attr:`best` is the largest value swept (of several): the loss may fall further."""
        grid = self.grid.reshape(len(self.grid), -1)
        chosen = grid[self.best_index]
        return [
            name
            for a, name in enumerate(self.grid_names)
            if np.unique(grid[:, a]).size > 1 and chosen[a] == grid[:, a].max()
        ]

    def merged(self, more: CalibrationResult, order: np.ndarray) -> CalibrationResult:
        """Return this result with ``more``'s grid values added (the same splits or gene groups), in ``order``.

        ``order``: the merged grid as the denoiser sweeps it; values of ``more`` already here are
        taken from ``more``.
        """
        grid = np.concatenate([self.grid, more.grid])
        rows = grid.reshape(len(grid), -1)
        position = {tuple(row): i for i, row in enumerate(rows)}  # later entries (``more``'s) win
        take = np.array([position[tuple(row)] for row in order.reshape(len(order), -1)])
        groups = None
        if self.cell_group_loss is not None and more.cell_group_loss is not None:
            groups = np.concatenate([self.cell_group_loss, more.cell_group_loss], axis=2)[:, :, take]
        return replace(
            self,
            grid=grid[take],
            loss=np.concatenate([self.loss, more.loss], axis=1)[:, take],
            cell_group_loss=groups,
        )

    def to_uns(self) -> dict[str, Any]:
        """Plain types and arrays only, so it survives ``write_h5ad``/``read_h5ad``."""
        best, minimum = self.best, grid_value(self.grid, self._minimum)
        return (
            {
                "method": self.method,
                "calibration": self.calibration,
                "grid_names": list(self.grid_names),
                "grid": self.grid.copy(),
                "loss": self.loss.copy(),
                "loss_mean": self.loss_mean,
                "loss_se": self.loss_se,
                "difference_se": self.difference_se,
                "select": self.select,
                "best": best if isinstance(best, int) else np.array(best),
                "best_min": minimum if isinstance(minimum, int) else np.array(minimum),
                "within_1se": self.grid[self.within_one_se].copy(),
                "difference_se_cells": self.cell_difference_se,
                "grid_edge": ", ".join(self.grid_edge),
                "params": dict(self.params),
                "version": package_version(),
            }
            | ({} if self.baseline is None else {"loss_no_denoising": float(np.mean(self.baseline))})
            | (
                {}
                if self.dispersion is None
                else {"sampling_dispersion": self.dispersion, "dependent_halves": self.dependent_halves}
            )
            | ({} if self.calibration != "mcv" else {"split_dispersion": self.split_dispersion})
            | ({"method_report": self._reported()} if self._reported() else {})
        )

    def _reported(self) -> dict[str, np.ndarray]:
        """Return what every split's fit reported, an entry per split (the keys every split reports)."""
        keys = set.intersection(*(set(r) for r in self.reports)) if self.reports else set()
        return {key: np.array([r[key] for r in self.reports]) for key in sorted(keys)}


def calibration_record(
    result: CalibrationResult,
    *,
    cells: np.ndarray | None,
    genes: np.ndarray | None,
    layer: str | None,
    mask_var: str | None,
    denoiser: Denoiser,
) -> dict[str, Any]:
    """Return the calibration's ``uns`` record: the curve, the choice and what it was made on.

    ``cells``/``genes``: the input's cells and genes kept (None: all). ``pp.denoise`` writes the
    record under ``key_added``; ``pp.pca`` and ``pp.neighbors`` under their scanpy key's
    ``"calibration"``.
    """
    record = result.to_uns()
    record["params"]["layer"] = layer
    record["params"]["method_repr"] = repr(denoiser)
    record["params"]["mask_var"] = mask_var
    record["n_dropped_cells"] = 0 if cells is None else int((~cells).sum())
    record["n_dropped_genes"] = 0 if genes is None else int((~genes).sum())
    return record


def _standard_error(loss: np.ndarray) -> np.ndarray:
    """Return the standard error of the mean over rows, per column; zeros for a single row."""
    if loss.shape[0] < 2:
        return np.zeros(loss.shape[1])
    return loss.std(axis=0, ddof=1) / np.sqrt(loss.shape[0])


def simplicity_rank(grid: np.ndarray) -> np.ndarray:
    """Rank of each grid value from the simplest: ascending in the first axis, then the next."""
    grid = grid.reshape(len(grid), -1)
    order = np.lexsort(tuple(grid[:, a] for a in reversed(range(grid.shape[1]))))
    rank = np.empty(len(grid), dtype=np.int64)
    rank[order] = np.arange(len(grid))
    return rank


def check_select(select: object, *, n_repeats: int | None, calibration: str) -> Select:
    """Check ``select`` against the number of splits (or gene groups) it is estimated from (None: decided later)."""
    if select not in ("min", "1se"):
        msg = f"select must be 'min' or '1se', got {select!r}."
        raise ValueError(msg)
    if select == "1se" and calibration == "mcv" and n_repeats is not None and n_repeats < 2:
        msg = (
            "select='1se' needs the standard error across splits, so several of them: pass n_splits=3 "
            "(or more; each split costs one more fit and sweep)."
        )
        raise ValueError(msg)
    return select


SHALLOW_HELD_OUT = 50.0
"""Median held-out molecules per cell below which ``n_splits=None`` takes three splits: there one
split's choice moves from seed to seed, and three splits' does not."""


def resolve_n_splits(n_splits: int | None, *, select: str, median_count: float, split_fraction: float) -> int:
    """Return ``n_splits``, or for None: 3 when the held-out part is shallow or ``select="1se"``, else 1."""
    if n_splits is not None:
        return n_splits
    return 3 if select == "1se" or (1.0 - split_fraction) * median_count < SHALLOW_HELD_OUT else 1


def warn_about_choice(result: CalibrationResult, axes: tuple[str, ...] | None = None) -> None:
    """Warn when the MCV halves look dependent, and when the choice is the largest value swept on an axis.

    ``axes``: the axes to check for the grid's edge (None: all).
    """
    if result.dependent_halves:
        assumed = "Poisson sampling of molecules" if result.split_dispersion == 1.0 else "the split assumed"
        logg.warning(
            f"these counts vary {result.dispersion / result.split_dispersion:.1f}× as much as {assumed} around a "
            "smooth fit (read counts rather than UMIs?): the split then leaves each molecule's reads in both "
            "halves, and MCV chooses too little denoising. Calibrate with `sampling='negative_binomial'` (splits "
            "each entry's reads as a negative binomial), or `calibration='genes'` (does not split molecules) "
            "(recorded in uns as 'sampling_dispersion')"
        )
    edge = [name for name in result.grid_edge if axes is None or name in axes]
    if not edge:
        return
    best = dict(zip(result.grid_names, np.atleast_1d(result.best), strict=True))
    where = ", ".join(f"{name}={best[name]}" for name in edge)
    flat = flat_range(result)
    flat = "" if flat is None else f" on a flat curve ({flat} within one standard error, uns 'within_1se')"
    logg.warning(
        f"the choice ({where}) is the largest value swept{flat}: the loss may keep falling beyond it; "
        "sweep further with `grid=` if the data allow (recorded in uns as 'grid_edge')"
    )


def log_choice(result: CalibrationResult, chosen: str) -> None:
    """Log the choice, its loss, and the settings the data cannot tell from it (within one standard error)."""
    logg.info(f"    chose {chosen} ({result.calibration} loss {result.loss_mean.min():.6g})")
    flat = flat_range(result)
    if flat is not None:
        logg.info(f"    within one standard error of the best: {flat}; recorded in uns as 'within_1se'")


def flat_range(result: CalibrationResult) -> str | None:
    """Describe the grid values within one standard error of the best; None when it stands alone."""
    within = result.within_one_se
    if within.size < 2:
        return None
    grid = result.grid.reshape(len(result.grid), -1)[within]
    axes = [
        f"{name} {lo}–{hi}" if lo != hi else f"{name} {lo}"
        for name, lo, hi in zip(result.grid_names, grid.min(axis=0), grid.max(axis=0), strict=True)
    ]
    return f"{', '.join(axes)}: {within.size} of {len(result.grid)} settings"
