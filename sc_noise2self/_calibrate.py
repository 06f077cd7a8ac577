"""The sweep engine: split or mask, fit once, score every grid value block by block, choose.

Knows nothing of a method beyond the :class:`~sc_noise2self.denoisers.Denoiser`
protocol, and nothing of AnnData. Two strategies:

- ``run_mcv``: molecular cross-validation — fit on a binomial thinning of the counts,
  score against the held-out molecules after the exact depth conversion;
- ``run_genes``: Noise2Self J-invariance — partition the genes, predict each group from
  the others, score against the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import _logging as logg
from ._dispersion import DEPENDENT_HALVES, SplitPlan, plan_split, sample_cells
from ._loss import check_loss, held_out_target, row_scorer, row_squared_errors, score_block
from ._rows import CellSum
from ._split import Stream, seed_sequence, split_seed
from ._threads import blas_threads
from ._transform import build_conversion, cell_scales, check_transform, output_depth, transform_counts
from ._validate import check_flag, check_fraction, check_positive_int
from .denoisers import (
    PCA,
    BlockSweep,
    CountModel,
    Denoiser,
    Diffusion,
    GenePartition,
    KNNAverage,
    MaskedPartition,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from scipy import sparse
    from tqdm import tqdm

    from ._blockwise import BlockCounts
    from ._genes import GeneMask
    from ._loss import RowScorer
    from ._transform import DepthConversion, OutputDepth
    from ._types import ArrayLike, LossName, RandomState, Select, TransformName
    from ._validate import Counts
    from .denoisers._base import GridValue, ValueSweep

__all__ = [
    "CalibrationResult",
    "McvSetup",
    "add_steps",
    "bar_label",
    "calibration_record",
    "check_finite_loss",
    "check_finite_output",
    "mcv_result",
    "mcv_setup",
    "package_version",
    "predict_dense",
    "progress_bar",
    "refit",
    "resolve_method",
    "run_genes",
    "run_mcv",
    "seed_record",
    "simplicity_rank",
    "warn_about_choice",
]


def _autoencoder(**kwargs: Any) -> Denoiser:
    from .denoisers.autoencoder import Autoencoder  # torch is imported only for this method

    return Autoencoder(**kwargs)


METHODS = {"pca": PCA, "diffusion": Diffusion, "knn": KNNAverage, "autoencoder": _autoencoder}
_CHUNK_ELEMENTS = 2**19  # cells per block × genes; a block of predictions is 4 MiB


def package_version() -> str:
    try:
        return version("sc_noise2self")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def resolve_method(method: str | Denoiser, random_state: RandomState) -> tuple[str, Denoiser]:
    """Turn a method name into a fresh estimator seeded from ``random_state``; use an instance as is."""
    if isinstance(method, type):  # a class passes the protocol's check: its methods are there, unbound
        msg = f"method must be a Denoiser instance, got the class {method.__name__}; pass {method.__name__}() instead."
        raise ValueError(msg)
    if isinstance(method, str) and method in METHODS:
        seed = None if random_state is None else int(seed_sequence(random_state, Stream.METHOD).generate_state(1)[0])
        name, denoiser = method, METHODS[method](random_state=seed)
    elif not isinstance(method, str) and isinstance(method, Denoiser):
        name, denoiser = type(method).__name__.lower(), method
    else:
        msg = f"method must be one of {sorted(METHODS)} or a Denoiser instance, got {method!r}."
        raise ValueError(msg)
    check = getattr(denoiser, "check_params", None)
    if check is not None:  # settings out of range (or a missing dependency) are refused before any work
        check()
    return name, denoiser


def seed_record(random_state: RandomState) -> int | str | None:
    """Return what ``uns`` keeps of the seed.

    The int (as text beyond int64, which h5ad cannot store), None, or a note that a
    Generator was passed.
    """
    if random_state is None or isinstance(random_state, np.random.Generator):
        return None if random_state is None else "numpy.random.Generator"
    return int(random_state) if int(random_state) < 2**63 else str(int(random_state))


def _divergence_advice(denoiser: Denoiser) -> str:
    learning_rate = getattr(denoiser, "learning_rate", None)
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


def chunk_rows(n_cells: int, n_genes: int, chunk_size: int | None) -> list[slice]:
    """Blocks of cells so that a block × genes array stays small."""
    size = max(1, _CHUNK_ELEMENTS // n_genes) if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    return [slice(i, min(i + size, n_cells)) for i in range(0, n_cells, size)]


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

    @property
    def dependent_halves(self) -> bool:
        """Whether :attr:`dispersion` says the MCV halves are dependent (read counts split as molecules).

        True when the counts vary more than :data:`~sc_noise2self._dispersion.DEPENDENT_HALVES`
        times what the split assumed (:attr:`split_dispersion`): binomial thinning then leaves
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
        )


def calibration_record(
    result: CalibrationResult, data: Counts | BlockCounts, genes: GeneMask | None, layer: str | None, denoiser: Denoiser
) -> dict[str, Any]:
    """Return the calibration's ``uns`` record: the curve, the choice and what it was made on.

    ``pp.denoise`` writes it under ``key_added``; ``pp.pca`` and ``pp.neighbors`` under
    their scanpy key's ``"calibration"``.
    """
    record = result.to_uns()
    record["params"]["layer"] = layer
    record["params"]["method_repr"] = repr(denoiser)
    record["params"]["mask_var"] = None if genes is None else genes.name
    record["n_dropped_cells"] = 0 if data.cells is None else int((~data.cells).sum())
    record["n_dropped_genes"] = 0 if data.genes is None else int((~data.genes).sum())
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
"""Median held-out molecules per cell below which ``n_splits=None`` takes three splits.

Measured by ``benchmarks/n_splits.py``: on mouse 10k (137 counts per cell, 14 held out) one
split's PCA choice moves between 3 and 5 from seed to seed and three splits' does not; on the
PBMC sets (3,200–3,500 counts) one split chooses as three do, for a third of the time.
"""


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
    logg.warning(
        f"the choice ({where}) is the largest value swept: the loss may keep falling beyond it; "
        "sweep further with `grid=` if the data allow (recorded in uns as 'grid_edge')"
    )


def _checked_grid(denoiser: Denoiser, grid: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray:
    return denoiser.check_grid(denoiser.default_grid(shape) if grid is None else grid, shape)


def _sweep_losses(
    sweep: BlockSweep | ValueSweep,
    blocks: list[slice],
    n_values: int,
    prepare: Callable[[slice, bool], Any],
    score: Callable[[slice, Any, np.ndarray], np.ndarray],
    bar: tqdm,
    n_entries: int,
    unchanged: Callable[[slice], np.ndarray] | None = None,
    scorer: Callable[[slice, Any], RowScorer] | None = None,
) -> np.ndarray:
    """Sum the loss per grid value, in whichever loop order the sweep offers.

    With ``unchanged`` (a block's undenoised values), one more entry at the end: the
    same loss for no denoising, scored against the same targets.

    With ``scorer(rows, target)`` (a :class:`~sc_noise2self._loss.RowScorer`; MSE only), a
    sweep that offers ``block_losses(rows, scorer)`` (and whose ``fuses()``, if it has one,
    allows it) predicts and scores a block at every grid value in one parallel region: one
    per block, not one per block and value, so threads descheduled by other work on the
    machine are waited for once. Value-order sweeps (diffusion) then run in block order.

    ``prepare(rows, reused)`` returns the block's target; ``reused`` says whether it is
    scored at every grid value in a row (block order) or once (value order).
    ``score(rows, target, pred)`` returns the loss of each cell; they are summed in an
    order that does not depend on the blocks (:class:`~sc_noise2self._rows.CellSum`). In
    value order the bar shows each value's loss per entry as it is scored, and the
    training loss when the predictor carries one (``predict.train_loss``). BLAS runs on
    one thread here: its products alternate with the compiled scoring kernel's threads,
    and multi-threaded BLAS left spinning between calls made both several times slower
    (``benchmarks/diffusion_sweep.py``).
    """
    with blas_threads(1):
        fused = _fused(sweep, scorer)
        if _block_order(sweep, scorer):
            total = CellSum(n_values + (unchanged is not None))
            for rows in blocks:
                target = prepare(rows, True)
                if fused is not None:
                    per_cell = fused(rows, scorer(rows, target))
                else:
                    per_cell = np.stack([score(rows, target, pred) for _, pred in sweep.sweep_blocks(rows)], axis=1)
                if unchanged is not None:
                    per_cell = np.column_stack([per_cell, score(rows, target, unchanged(rows))])
                total.add(rows.start, per_cell)
                bar.update(1)
            return total.total()
        losses = np.zeros(n_values + (unchanged is not None))
        # A sweep that can fuse but does not here (too little memory) scores against the same
        # dense targets as its fused path, so the two give the same bytes.
        dense = scorer is not None and hasattr(sweep, _fused_name(scorer))
        for j, (value, predict) in enumerate(sweep.sweep_values()):
            total = CellSum(1)
            for rows in blocks:
                total.add(rows.start, score(rows, prepare(rows, dense), predict(rows)))
            losses[j] = total.total()[0]
            _show_value(bar, value, losses[j] / n_entries, predict)
        if unchanged is not None:
            total = CellSum(1)
            for rows in blocks:
                total.add(rows.start, score(rows, prepare(rows, dense), unchanged(rows)))
            losses[-1] = total.total()[0]
    return losses


def _show_value(bar: tqdm, value: GridValue, loss: float, predict: Callable[[slice], np.ndarray]) -> None:
    """Advance the bar past one grid value, showing its loss per entry and the predictor's training loss if any."""
    train = getattr(predict, "train_loss", None)
    bar.set_postfix_str(f"{value}: loss {loss:.5g}" + ("" if train is None else f", train {train:.5g}"), refresh=False)
    bar.update(1)


def plain_errors(_rows: slice, target: np.ndarray) -> np.ndarray:
    """Return the dense target itself: the ``scorer`` of a squared error on the data's own scale (gene partition).

    A sweep fuses it through ``block_errors(rows, target)`` instead of ``block_losses``.
    """
    return target


def _fused_name(scorer: Callable[[slice, Any], Any]) -> str:
    """Return the name of the sweep method that fuses ``scorer``: ``block_errors`` for :func:`plain_errors`."""
    return "block_errors" if scorer is plain_errors else "block_losses"


def _fused(sweep: BlockSweep | ValueSweep, scorer: Callable[[slice, Any], Any] | None) -> Callable | None:
    """Return the sweep's fused scoring when it is to be used (a scorer given, the sweep able to), else None."""
    if scorer is None or not getattr(sweep, "fuses", lambda: True)():
        return None
    return getattr(sweep, _fused_name(scorer), None)


def _block_order(sweep: BlockSweep | ValueSweep, scorer: Callable | None) -> bool:
    """Whether :func:`_sweep_losses` loops over grid values inside each block of cells."""
    return isinstance(sweep, BlockSweep) or _fused(sweep, scorer) is not None


def _sweep_steps(
    sweep: BlockSweep | ValueSweep, blocks: list[slice], grid: np.ndarray, scorer: Callable | None = None
) -> int:
    """Progress steps of one sweep: a block of cells (block order) or a grid value (value order) each."""
    return len(blocks) if _block_order(sweep, scorer) else len(grid)


def bar_label(method: object, calibration: object) -> str:
    """Return what the progress bar says it runs, e.g. ``"MCV pca"``."""
    name = method if isinstance(method, str) else type(method).__name__.lower()
    return f"{'Noise2Self' if calibration == 'genes' else 'MCV'} {name}"


def progress_bar(desc: str, *, progress: bool | None) -> tqdm:
    """Return the one progress bar of a call (``progress=None``: shown when scanpy's verbosity is info).

    It counts whole steps — each fit (SVD, graph, network), each block or grid value
    scored, the refit — and each stage adds its steps with :func:`add_steps` once it
    knows them. ``tqdm.auto`` draws a widget in Jupyter, but warns when ipywidgets is
    missing: then the plain text bar is used.
    """
    progress = logg.verbose() if progress is None else check_flag(progress, "progress")
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm as bar_class
    else:
        from tqdm.auto import tqdm as bar_class
    return bar_class(
        total=0, desc=desc, disable=not progress, bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}{postfix}]"
    )


def add_steps(bar: tqdm, n: int) -> None:
    """Add ``n`` steps to the bar's total."""
    bar.total += n
    bar.refresh()


class McvSetup(NamedTuple):
    """What every split of one MCV calibration shares: per-cell scales and the depth conversion."""

    fraction: float
    train_scales: np.ndarray
    test_scales: np.ndarray
    conversion: DepthConversion
    """Training-depth predictions to the held-out part's depth, or to the output's (``depth="output"``)."""
    plan: SplitPlan
    output: OutputDepth | None
    """``depth="output"``: the map of held-out values to the output's depth."""
    output_scales: np.ndarray
    """Each cell's scale at full depth."""

    def target(
        self,
        test: sparse.csr_matrix,
        counts: sparse.csr_matrix,
        totals: np.ndarray,
        rows: slice,
        *,
        transform: TransformName,
        loss: LossName,
        reused: bool,
    ) -> np.ndarray | sparse.csr_matrix:
        """Return the held-out target of the cells ``rows`` (``test``: their held-out part, ``counts``: all of it)."""
        if self.output is None:
            return held_out_target(test, self.test_scales[rows], transform=transform, loss=loss, reused=reused)
        held_out = held_out_target(test, self.test_scales[rows], transform=transform, loss=loss, reused=True)
        return self.output(held_out, self.plan.fit.dense_means(counts, totals), self.output_scales[rows])


def mcv_setup(
    totals: np.ndarray,
    max_count: float,
    sample: Callable[[np.ndarray], sparse.csr_matrix],
    *,
    split_fraction: float,
    transform: TransformName,
    target_sum: float | None,
    loss: LossName,
    sampling: str,
    dispersion: float | None,
    depth: str | None,
    random_state: RandomState,
) -> McvSetup:
    """Check the MCV settings against per-cell totals, plan the split and tabulate the exact depth conversion.

    ``sample(keep)`` returns the counts of the cells of the dispersion check (a boolean mask).
    """
    p = check_fraction(split_fraction)
    check_transform(transform)
    check_loss(loss)
    median = float(np.median(totals))
    for part, share, advice in (("held-out", 1.0 - p, "Lower"), ("training", p, "Raise")):
        if share * median < 1.0:
            msg = (
                f"Too few molecules for a split: cells have a median of {median:g} counts, so the {part} part "
                f"(split_fraction={p}) would hold {share * median:.2g} per cell. {advice} split_fraction, or keep "
                "deeper cells (e.g. `sc.pp.filter_cells(adata, min_counts=...)`)."
            )
            raise ValueError(msg)
    keep = sample_cells(totals.size, random_state)
    plan = plan_split(sampling, dispersion, sample(keep), totals[keep], random_state)
    if depth is None:  # the output's depth wherever it is defined
        depth = "output" if loss == "mse" and plan.fit is not None else "held_out"
    if depth == "output" and plan.fit is None:
        msg = (
            "depth='output' centres its expansion on each entry's expected count from a smooth fit, and these "
            "data are too small for it; use depth='held_out'."
        )
        raise ValueError(msg)
    train_scales, output_scales = cell_scales(totals, target_sum, p), cell_scales(totals, target_sum)
    conversion = build_conversion(
        transform,
        fraction=p,
        train_scales=train_scales,
        normalized=target_sum is not None,
        max_rate=1.5 * p * float(max_count) + 20.0,  # covers every plausible training rate
        loss=loss,
        test_fraction=1.0 if depth == "output" else None,
        dispersion=plan.split_dispersion,
    )
    output = None
    if depth == "output":
        output = output_depth(
            transform,
            fraction=p,
            scales=output_scales,
            normalized=target_sum is not None,
            max_rate=1.5 * float(max_count) + 20.0,
            dispersion=plan.split_dispersion,
        )
    return McvSetup(p, train_scales, cell_scales(totals, target_sum, 1.0 - p), conversion, plan, output, output_scales)


def mcv_result(
    losses: np.ndarray,
    denoiser: Denoiser,
    grid: np.ndarray,
    shape: tuple[int, int],
    setup: McvSetup,
    *,
    method: str,
    transform: TransformName,
    target_sum: float | None,
    loss: LossName,
    sampling: str,
    random_state: RandomState,
    baseline: np.ndarray | None = None,
) -> CalibrationResult:
    """Return the MCV result from the summed losses (splits × grid values, and of no denoising), per matrix entry."""
    params = {
        "split_fraction": setup.fraction,
        "n_splits": losses.shape[0],
        "transform": transform,
        "target_sum": None if target_sum is None else float(target_sum),
        "loss": loss,
        "sampling": sampling,
        "depth": "held_out" if setup.output is None else "output",
        "random_state": seed_record(random_state),
    }
    return CalibrationResult(
        method=method,
        calibration="mcv",
        grid_names=denoiser.grid_names(grid),
        grid=grid,
        loss=losses / (shape[0] * shape[1]),
        params=params,
        baseline=None if baseline is None else baseline / (shape[0] * shape[1]),
        dispersion=setup.plan.dispersion,
        split_dispersion=setup.plan.split_dispersion,
    )


def run_mcv(
    counts: sparse.csr_matrix,
    denoiser: Denoiser,
    *,
    method: str,
    grid: ArrayLike | None,
    split_fraction: float,
    n_splits: int,
    transform: TransformName,
    target_sum: float | None,
    loss: LossName,
    random_state: RandomState,
    chunk_size: int | None,
    bar: tqdm,
    sampling: str = "poisson",
    dispersion: float | None = None,
    depth: str | None = None,
    totals: np.ndarray | None = None,
) -> CalibrationResult:
    """Molecular cross-validation of ``denoiser`` over ``grid`` on validated canonical-CSR ``counts``.

    ``totals``: each cell's total count the depth normalisation divides by, when ``counts``
    holds only some of the genes (default: the sums of ``counts``).
    """
    totals = np.asarray(counts.sum(axis=1) if totals is None else totals, dtype=np.float64).ravel()
    setup = mcv_setup(
        totals,
        counts.data.max(),
        lambda keep: counts if keep.all() else counts[keep],
        split_fraction=split_fraction,
        transform=transform,
        target_sum=target_sum,
        loss=loss,
        sampling=sampling,
        dispersion=dispersion,
        depth=depth,
        random_state=random_state,
    )
    n_splits = check_positive_int(n_splits, "n_splits")
    grid = _checked_grid(denoiser, grid, counts.shape)
    blocks = chunk_rows(counts.shape[0], counts.shape[1], chunk_size)
    train_scales = setup.train_scales

    losses = np.zeros((n_splits, len(grid)))
    baseline = np.zeros(n_splits)
    add_steps(bar, n_splits)  # the fits; the scoring steps once the sweep's loop order is known

    def mse_scorer(rows: slice, target: np.ndarray) -> RowScorer:  # a dense target, scored in-kernel
        return row_scorer(target, conversion=setup.conversion, train_scales=train_scales[rows])

    scorer = mse_scorer if loss == "mse" else None  # the Poisson loss is scored value by value

    for i in range(n_splits):
        train, test = setup.plan.halves(counts, totals, setup.fraction, split_seed(random_state, Stream.MCV, i))
        values = transform_counts(train, transform, train_scales)
        sweep = fit_on_counts(
            denoiser,
            values,
            grid,
            counts=train,
            scales=train_scales,
            transform=transform,
            max_rate=float(totals.max()) + 1.0,  # as the blockwise engine, which cannot see the halves' totals first
        )
        if i == 0:
            add_steps(bar, n_splits * _sweep_steps(sweep, blocks, grid, scorer))
        bar.update(1)
        targets = _TargetCache(
            lambda rows, reused, test=test: setup.target(
                test[rows], counts[rows], totals[rows], rows, transform=transform, loss=loss, reused=reused
            ),
            # costly to map, and asked for once per grid value in value order: kept there, within a budget
            keep=setup.output is not None and not _block_order(sweep, scorer),
        )
        sums = _sweep_losses(
            sweep,
            blocks,
            len(grid),
            prepare=targets,
            score=lambda rows, target, pred: score_block(
                pred, target, conversion=setup.conversion, train_scales=train_scales[rows], loss=loss
            ),
            bar=bar,
            n_entries=counts.shape[0] * counts.shape[1],
            unchanged=lambda rows, values=values: values[rows].toarray(),  # no denoising
            scorer=scorer,
        )
        losses[i], baseline[i] = sums[:-1], sums[-1]
    return mcv_result(
        losses,
        denoiser,
        grid,
        counts.shape,
        setup,
        method=method,
        transform=transform,
        target_sum=target_sum,
        loss=loss,
        sampling=sampling,
        random_state=random_state,
        baseline=baseline,
    )


class _TargetCache:
    """``prepare(rows, reused)`` for :func:`_sweep_losses`, keeping each block's target when ``keep`` (up to 256 MiB).

    Value-order sweeps ask for every block's target once per grid value; the output-depth map
    costs more than the scoring itself, so its targets are computed once while memory allows.
    """

    BUDGET = 2**28

    def __init__(self, make: Callable[[slice, bool], Any], *, keep: bool) -> None:
        self.make, self.keep, self.kept, self.size = make, keep, {}, 0

    def __call__(self, rows: slice, reused: bool) -> Any:
        key = (rows.start, rows.stop, reused)
        if key in self.kept:
            return self.kept[key]
        target = self.make(rows, reused)
        if self.keep and self.size + getattr(target, "nbytes", self.BUDGET) <= self.BUDGET:
            self.kept[key] = target
            self.size += target.nbytes
        return target


N_CELL_GROUPS = 5


def random_groups(n_items: int, n_groups: int, random_state: RandomState, key: int) -> np.ndarray:
    """Random, balanced assignment of items to ``n_groups`` groups (a group index per item)."""
    rng = np.random.default_rng(seed_sequence(random_state, key))
    return rng.permutation(n_items) % n_groups


def run_genes(
    values: sparse.csr_matrix,
    denoiser: Denoiser,
    *,
    method: str,
    grid: ArrayLike | None,
    n_groups: int,
    random_state: RandomState,
    chunk_size: int | None,
    bar: tqdm,
    params: dict[str, Any],
) -> CalibrationResult:
    """Noise2Self calibration: each gene group predicted from the others, MSE against the data.

    ``values`` are the (transformed) data the denoiser works on. For a J-invariant
    prediction the error against the data differs from the error against the truth by
    a constant (the noise variance), so both have the same minimiser over the grid.
    Cells are also split into random groups (``N_CELL_GROUPS``, or the method's own
    ``n_cell_groups``), so that a method may learn the held-out genes from the other cell
    groups (cross-fitting).
    """
    n_cells, n_genes = values.shape
    n_groups = check_positive_int(n_groups, "n_groups")
    if not 2 <= n_groups <= n_genes:
        msg = f"n_groups must lie in 2..{n_genes} (the number of genes), got {n_groups}."
        raise ValueError(msg)
    masked = isinstance(denoiser, MaskedPartition)
    if not (masked or isinstance(denoiser, GenePartition)):
        msg = f"method {method!r} has no J-invariant form; calibrate it with calibration='mcv'."
        raise ValueError(msg)
    blocks = chunk_rows(n_cells, n_genes, chunk_size)
    groups = random_groups(n_genes, n_groups, random_state, Stream.GENE_GROUPS)
    n_cell_groups = check_positive_int(getattr(denoiser, "n_cell_groups", N_CELL_GROUPS), "n_cell_groups")
    if n_cell_groups < 2:
        msg = f"{type(denoiser).__name__}.n_cell_groups must be at least 2 (cross-fitting), got {n_cell_groups}."
        raise ValueError(msg)
    cell_groups = random_groups(n_cells, min(n_cell_groups, n_cells), random_state, Stream.CELL_GROUPS)
    # Each prediction is fitted on the other genes and the other cell groups: the grid must fit those.
    fitted_on = (n_cells - int(np.bincount(cell_groups).max()), n_genes - int(np.bincount(groups).max()))
    grid = _checked_grid(denoiser, grid, fitted_on)

    if masked:
        losses = _masked_losses(denoiser.fit_masked(values, groups, grid), values, groups, blocks, len(grid), bar)
    else:
        losses = np.zeros((n_groups, len(grid)))
        add_steps(bar, n_groups)
        for g in range(n_groups):
            held_out = groups == g
            sweep = denoiser.held_out_genes(values, held_out, cell_groups, grid)
            if g == 0:
                add_steps(bar, n_groups * _sweep_steps(sweep, blocks, grid, plain_errors))
            bar.update(1)
            losses[g] = _sweep_losses(
                sweep,
                blocks,
                len(grid),
                prepare=_held_out_blocks(values[:, held_out], once=not _block_order(sweep, plain_errors)),
                score=lambda _rows, target, pred: row_squared_errors(pred, target),
                bar=bar,
                n_entries=n_cells * int(held_out.sum()),
                scorer=plain_errors,
            )
    params = {**params, "n_groups": n_groups, "random_state": seed_record(random_state)}
    return CalibrationResult(
        method=method,
        calibration="genes",
        grid_names=denoiser.grid_names(grid),
        grid=grid,
        loss=losses / (n_cells * n_genes / n_groups),
        params=params,
        gene_groups=groups,
    )


def _held_out_blocks(columns: sparse.csr_matrix, *, once: bool) -> Callable[[slice, bool], np.ndarray]:
    """Return ``prepare`` for the held-out genes: each block made dense when asked, or all at ``once``.

    ``once`` suits a sweep that reads every block at every grid value (value order).
    """
    if once:
        dense = columns.toarray()
        return lambda rows, _: dense[rows]
    return lambda rows, _: columns[rows].toarray()


def _masked_losses(
    sweep: ValueSweep, values: sparse.csr_matrix, groups: np.ndarray, blocks: list[slice], n_values: int, bar: tqdm
) -> np.ndarray:
    """Return the squared error of a masked sweep's J-invariant predictions, per gene group (rows) and grid value."""
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], np.arange(groups.max() + 1))
    losses = np.zeros((starts.size, n_values))
    add_steps(bar, n_values)
    with blas_threads(1):
        for j, (value, predict) in enumerate(sweep.sweep_values()):
            total = CellSum(starts.size)
            for rows in blocks:
                errors = (predict(rows).astype(np.float64) - values[rows].toarray()) ** 2
                total.add(rows.start, np.add.reduceat(errors[:, order], starts, axis=1))
            losses[:, j] = total.total()
            _show_value(bar, value, losses[:, j].sum() / (values.shape[0] * values.shape[1]), predict)
    return losses


def fit_on_counts(
    denoiser: Denoiser,
    values: sparse.csr_matrix,
    grid: np.ndarray,
    *,
    counts: sparse.csr_matrix,
    scales: np.ndarray,
    transform: TransformName,
    max_rate: float | None = None,
) -> BlockSweep | ValueSweep:
    """Fit ``denoiser`` on ``values = T(scales · counts)``, handing a :class:`CountModel` the counts too.

    ``max_rate``: the largest rate a count model's output table must cover (default: the largest total).
    """
    if isinstance(denoiser, CountModel):
        return denoiser.fit_counts(values, grid, counts=counts, scales=scales, transform=transform, max_rate=max_rate)
    return denoiser.fit(values, grid)


def refit(
    values: sparse.csr_matrix,
    denoiser: Denoiser,
    value: GridValue,
    gene_groups: np.ndarray | None = None,
    counts: tuple[sparse.csr_matrix, np.ndarray, TransformName] | None = None,
) -> Denoiser:
    """Fit ``denoiser`` on all the (transformed) data at one grid value.

    ``gene_groups``: the partition of ``calibration="genes"``; a :class:`MaskedPartition`
    denoiser is refitted by the same masked training, so its output is the J-invariant
    function that was calibrated. ``counts``: ``(counts, scales, transform)`` behind
    ``values``, for a :class:`CountModel`.
    """
    grid = np.array([value])
    grid = denoiser.check_grid(grid if grid.ndim == 1 else grid.reshape(1, -1), values.shape)
    if gene_groups is not None and isinstance(denoiser, MaskedPartition):
        denoiser.fit_masked(values, gene_groups, grid)
    elif counts is not None:
        fit_on_counts(denoiser, values, grid, counts=counts[0], scales=counts[1], transform=counts[2])
    else:
        denoiser.fit(values, grid)
    return denoiser


def predict_dense(
    denoiser: Denoiser, value: GridValue, shape: tuple[int, int], *, chunk_size: int | None
) -> np.ndarray:
    """Return the refitted denoiser's output as a dense float32 matrix, block by block."""
    out = np.empty(shape, dtype=np.float32)
    for rows in chunk_rows(shape[0], shape[1], chunk_size):
        out[rows] = denoiser.predict(rows, value)
    return out
