"""Noise2Self: partition the genes at random, predict each group without seeing it, score against the data.

For a J-invariant prediction the error against the data differs from the error against the truth
by a constant (the noise variance), so both have the same minimiser over the grid. Cells are also
split into random groups, so that a method may learn the held-out genes from the other cell groups
(cross-fitting). A method either fits once per gene group (``gene_partition="held_out"``) or once
by masked training over every group (``"masked"``, Noise2Self's own loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._numerics.checks import check_largest, check_magnitude, check_positive_int
from .._numerics.loss import DataScorer, row_squared_errors
from .._numerics.machine import blas_threads
from .._numerics.rows import CellSum
from .._numerics.split import Stream, seed_sequence
from .._numerics.transform import cell_scales, transform_counts, transformed
from ..denoisers._base import ArrayData, Block, Partition
from .blocks import BlockData, chunk_rows
from .progress import add_steps
from .result import CalibrationResult
from .scoring import Passes, Scoring, show_step, sweep_losses, sweep_steps, total

if TYPE_CHECKING:
    from scipy import sparse
    from tqdm import tqdm

    from .._types import RandomState
    from ..denoisers._base import Denoiser, Sweep
    from .blocks import Source
    from .settings import Settings

__all__ = ["random_groups", "run_genes"]


def random_groups(n_items: int, n_groups: int, random_state: RandomState, key: int) -> np.ndarray:
    """Random, balanced assignment of items to ``n_groups`` groups (a group index per item)."""
    rng = np.random.default_rng(seed_sequence(random_state, key))
    return rng.permutation(n_items) % n_groups


class _Data(Scoring):
    """The gene partition's scoring: squared error of the held-out genes against the data themselves."""

    kind = "data"
    costly_targets = True  # a sweep in value order reads every block at every grid value

    def __init__(self, genes: np.ndarray, lower: float) -> None:
        self.genes, self.lower = genes, lower

    def target(self, part: Block, extra: Any) -> np.ndarray:
        return part.values[:, self.genes].toarray()

    def score(self, part: Block, target: Any, pred: np.ndarray) -> np.ndarray:
        return row_squared_errors(pred, target, self.lower)

    def scorer(self, part: Block, target: Any) -> DataScorer:
        return DataScorer(target, self.lower)


def run_genes(
    source: Source, denoiser: Denoiser, settings: Settings, *, method: str, totals: np.ndarray, bar: tqdm
) -> CalibrationResult:
    """Noise2Self calibration of ``denoiser`` over its grid on validated data (in memory, or read block by block)."""
    if settings.loss != "mse":
        msg = "calibration='genes' scores predictions against the data itself with loss='mse'."
        raise ValueError(msg)
    if not source.is_counts and (settings.transform != "none" or settings.target_sum is not None):
        msg = (
            "These values are not raw counts (negative or non-integer), so they are denoised as they are: "
            "pass transform='none' and target_sum=None, or pass raw counts."
        )
        raise ValueError(msg)
    data = _values(source, settings, totals)
    n_cells, n_genes = data.shape
    n_groups = check_positive_int(settings.n_groups, "n_groups")
    if not 2 <= n_groups <= n_genes:
        msg = f"n_groups must lie in 2..{n_genes} (the number of genes), got {n_groups}."
        raise ValueError(msg)
    kind = denoiser.tags.gene_partition
    if kind is None:
        msg = f"method {method!r} has no J-invariant form; calibrate it with calibration='mcv'."
        raise ValueError(msg)
    groups = random_groups(n_genes, n_groups, settings.random_state, Stream.GENE_GROUPS)
    n_cell_groups = check_positive_int(denoiser.tags.n_cell_groups, "n_cell_groups")
    if n_cell_groups < 2:
        msg = f"{type(denoiser).__name__}.tags.n_cell_groups must be at least 2 (cross-fitting), got {n_cell_groups}."
        raise ValueError(msg)
    cell_groups = random_groups(n_cells, min(n_cell_groups, n_cells), settings.random_state, Stream.CELL_GROUPS)
    # Each prediction is fitted on the other genes and the other cell groups: the grid must fit those.
    fitted_on = (n_cells - int(np.bincount(cell_groups).max()), n_genes - int(np.bincount(groups).max()))
    grid = denoiser.check_grid(denoiser.default_grid(fitted_on) if settings.grid is None else settings.grid, fitted_on)
    lower = 0.0 if source.non_negative else -np.inf  # predictions scored as the output is written

    if kind == "masked":
        sweep = denoiser.fit(data, grid, partition=Partition(groups, None, cell_groups))
        losses = _masked_losses(sweep, data, groups, len(grid), bar, settings.chunk_size, lower)
    else:
        losses = np.zeros((n_groups, len(grid)))
        add_steps(bar, n_groups)
        passes = Passes(data, lambda counts, rows: (data.make(counts, rows), None), None, lambda extra, rows: None)
        for g in range(n_groups):
            held_out = groups == g
            sweep = denoiser.fit(data, grid, partition=Partition(groups, g, cell_groups))
            if g == 0:
                add_steps(bar, n_groups * sweep_steps(sweep, passes, len(grid), settings.chunk_size))
            bar.update(1)
            losses[g] = total(
                sweep_losses(
                    sweep,
                    passes,
                    _Data(held_out, lower),
                    len(grid),
                    bar=bar,
                    n_entries=n_cells * int(held_out.sum()),
                    chunk_size=settings.chunk_size,
                )
            )
    return CalibrationResult(
        method=method,
        calibration="genes",
        grid_names=denoiser.grid_names(grid),
        grid=grid,
        loss=losses / (n_cells * n_genes / n_groups),
        params=settings.params(n_groups=n_groups),
        select=settings.select,
        gene_groups=groups,
    )


def _values(source: Source, settings: Settings, totals: np.ndarray) -> ArrayData | BlockData:
    """Return the transformed values the gene partition predicts, checked: in memory, or made block by block."""
    if source.in_memory:
        values = transformed(source.matrix(), settings.transform, settings.target_sum, totals=totals)
        check_magnitude(values, what=source.what)
        return ArrayData(values, transform=settings.transform)
    scales = cell_scales(totals, settings.target_sum)

    def make(counts: sparse.csr_matrix, rows: slice) -> Block:
        return Block(rows, transform_counts(counts, settings.transform, scales[rows]), None)

    data = BlockData(source, make, scales=scales, transform=settings.transform, max_rate=float(totals.max()) + 1.0)
    largest, nnz = data.reduce(
        lambda block: (float(np.abs(block.values.data).max()) if block.values.nnz else 0.0, block.values.nnz),
        lambda a, b: (max(a[0], b[0]), a[1] + b[1]),
    )
    check_largest(largest, nnz, what=source.what)
    return data


def _masked_losses(
    sweep: Sweep, data: ArrayData, groups: np.ndarray, n_values: int, bar: tqdm, chunk_size: int | None, lower: float
) -> np.ndarray:
    """Squared error of a masked sweep's J-invariant predictions, per gene group (rows) and grid value."""
    values: sparse.csr_matrix = data.matrix()
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], np.arange(groups.max() + 1))
    losses = np.zeros((starts.size, n_values))
    add_steps(bar, n_values)
    with blas_threads(1):
        for j, step in enumerate(sweep.values()):
            sums = CellSum(starts.size)
            for rows in chunk_rows(*values.shape, chunk_size):
                pred = np.maximum(step.predict(data.block(rows)).astype(np.float64), lower)  # NaN stays NaN
                errors = (pred - values[rows].toarray()) ** 2
                sums.add(rows.start, np.add.reduceat(errors[:, order], starts, axis=1))
            losses[:, j] = sums.total()
            show_step(bar, step, losses[:, j].sum() / (values.shape[0] * values.shape[1]))
    return losses
