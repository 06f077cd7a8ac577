"""Arithmetic whose result does not depend on how cells are blocked or on thread counts.

Two things used to change in the last bits with the chunking (``chunk_size``, dask
chunks) or the BLAS threads, and so could move a near-tie in the loss curve:

- products mapping low-rank scores back to genes (OpenBLAS ``sgemm`` rounds a row
  differently depending on how many rows are in the call and how many threads share
  it). :func:`low_rank_rows` computes every row on its own, in a fixed order, in float64;
- sums of per-cell losses over blocks of cells. :class:`CellSum` adds cells in groups
  of :data:`GROUP` at fixed positions, then the groups in order, whatever the blocks.

Both hold for any chunking and any number of numba or BLAS threads (tested in
``tests/test_determinism.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np
from scipy import sparse

from .loss import squared_error_row

if TYPE_CHECKING:
    from .loss import RowScorer

__all__ = [
    "GROUP",
    "CellSum",
    "PartialSum",
    "ScoredCells",
    "low_rank_rows",
    "low_rank_sweep_losses",
    "partial_sum",
    "sparse_dense_product",
    "sum_rows",
]

GROUP = 256
"""Cells per fixed group of the per-cell loss sums."""


@numba.njit(parallel=True, cache=True)
def _low_rank_kernel(offset, scores, loadings, out):  # pragma: no cover - compiled
    # No fastmath: each element is a fixed sequence of float64 multiply-adds (offset, then
    # the components in order), the same in the vectorised body and the remainder of the
    # gene loop, for every row and thread.
    n_genes = loadings.shape[1]
    for c in numba.prange(scores.shape[0]):
        acc = offset.astype(np.float64)
        for j in range(scores.shape[1]):
            coef = np.float64(scores[c, j])
            for g in range(n_genes):
                acc[g] += coef * loadings[j, g]
        for g in range(n_genes):
            out[c, g] = acc[g]


@numba.njit(cache=True, fastmath={"contract"})
def _low_rank_row_f32(offset, coefs, loadings, out):  # pragma: no cover - compiled
    # float32 fused multiply-adds, in place: a gene's position in the loop, hence its code
    # path, is the same in every row, so a row's result depends on that row alone. Not
    # inlined: callers compiled with other fastmath flags run this very code.
    n_genes = loadings.shape[1]
    for g in range(n_genes):
        out[g] = offset[g]
    for j in range(coefs.size):
        coef = coefs[j]
        for g in range(n_genes):
            out[g] += coef * loadings[j, g]


@numba.njit(parallel=True, cache=True)
def _low_rank_kernel_f32(offset, scores, loadings, out):  # pragma: no cover - compiled
    for c in numba.prange(scores.shape[0]):
        _low_rank_row_f32(offset, scores[c], loadings, out[c])


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _low_rank_sweep_losses(offset, scores, loadings, target, flat, n, rows, weights, inv_step, out):  # pragma: no cover
    # For each cell of a block (one parallel region) and each grid value v: the float32
    # row offset + scores[v, c] @ loadings, made as _low_rank_kernel_f32 makes it, then
    # scored at once against the cell's held-out row (see sc_noise2self._loss.RowScorer).
    for c in numba.prange(scores.shape[1]):
        pred = np.empty(loadings.shape[1], dtype=np.float32)
        for v in range(scores.shape[0]):
            _low_rank_row_f32(offset, scores[v, c], loadings, pred)
            out[c, v] = squared_error_row(pred, target[c], flat, n, rows[c], weights[c], inv_step)


def low_rank_sweep_losses(
    offset: np.ndarray, scores: np.ndarray, loadings: np.ndarray, scorer: RowScorer
) -> np.ndarray:
    """Per-cell MSE of ``offset + scores[v] @ loadings`` for a block, at every grid value ``v`` (cells × values).

    ``scores``: float32, values × cells × components. The predictions are the float32 rows
    :func:`low_rank_rows` makes with ``accumulate=np.float32``, scored as they are made, in
    one parallel region for the whole block.
    """
    out = np.empty((scores.shape[1], scores.shape[0]))
    _low_rank_sweep_losses(
        np.ascontiguousarray(offset, dtype=np.float32),
        np.ascontiguousarray(scores, dtype=np.float32),
        np.ascontiguousarray(loadings, dtype=np.float32),
        *scorer,  # target, table, row length, rows, weights, inverse step
        out,
    )
    return out


def low_rank_rows(
    offset: np.ndarray, scores: np.ndarray, loadings: np.ndarray, *, accumulate: type = np.float64
) -> np.ndarray:
    """``offset + scores @ loadings`` as float32, each row computed alone.

    The factors are first rounded to float32, as factored output stores them, so the dense
    layer and the lazy layer computed from stored factors are the same bytes. Outputs
    accumulate in float64; a calibration sweep, which maps every block at every grid value,
    may accumulate in float32 (``accumulate=np.float32``, about 1.7× faster; rounding ~1e-7
    relative, far below the loss differences between settings).

    Parameters
    ----------
    offset
        Per-gene offset (genes,).
    scores
        Cells × k.
    loadings
        k × genes.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    out = np.empty((scores.shape[0], loadings.shape[1]), dtype=np.float32)
    kernel = _low_rank_kernel if accumulate is np.float64 else _low_rank_kernel_f32
    kernel(
        np.ascontiguousarray(offset, dtype=np.float32), scores, np.ascontiguousarray(loadings, dtype=np.float32), out
    )
    return out


@numba.njit(parallel=True, cache=True)
def _sparse_dense_kernel(indptr, indices, data, dense, out):  # pragma: no cover - compiled
    # No fastmath: each output row is its stored entries' products added in index order,
    # as scipy's own (single-threaded) product does, whatever the threads.
    for r in numba.prange(indptr.size - 1):
        row = out[r]
        row[:] = 0.0
        for q in range(indptr[r], indptr[r + 1]):
            weight = data[q]
            source = dense[indices[q]]
            for c in range(row.size):
                row[c] += weight * source[c]


def sparse_dense_product(A: sparse.csr_matrix, dense: np.ndarray) -> np.ndarray:
    """Return ``A @ dense`` for CSR ``A`` (float64), rows in parallel; equal to scipy's product."""
    dense = np.ascontiguousarray(dense, dtype=np.float64)
    out = np.empty((A.shape[0], dense.shape[1]))
    _sparse_dense_kernel(A.indptr, A.indices, np.asarray(A.data, dtype=np.float64), dense, out)
    return out


@numba.njit(cache=True)
def _sum_rows(values):  # pragma: no cover - compiled
    # Rows added one after the other: the result depends only on the rows, in order.
    out = np.zeros(values.shape[1])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            out[j] += values[i, j]
    return out


def sum_rows(values: np.ndarray) -> np.ndarray:
    """Sum of the rows (rows × values), added one after the other: the same bytes for the same rows."""
    return _sum_rows(np.ascontiguousarray(values, dtype=np.float64).reshape(len(values), -1))


def _group_sums(values: np.ndarray) -> np.ndarray:
    """Sum of each consecutive run of :data:`GROUP` rows (``len(values)`` a multiple of it)."""
    return np.array([_sum_rows(values[i : i + GROUP]) for i in range(0, len(values), GROUP)]).reshape(
        -1, values.shape[1]
    )


class PartialSum(NamedTuple):
    """Per-cell values of a block of cells, reduced to what :class:`CellSum` needs to add them.

    Small enough to return from a dask task: whole fixed groups are already summed.
    """

    start: int
    """Position of the block's first cell."""
    head: np.ndarray
    """Values of the cells before the block's first group boundary."""
    groups: np.ndarray
    """Sums of the whole groups inside the block."""
    tail: np.ndarray
    """Values of the cells after the block's last group boundary."""


def partial_sum(start: int, values: np.ndarray) -> PartialSum:
    """Reduce per-cell values (cells × values) of the cells ``start, start + 1, …``."""
    values = np.ascontiguousarray(np.asarray(values, dtype=np.float64).reshape(len(values), -1))
    stop = start + len(values)
    first = min(-(-start // GROUP) * GROUP, stop)
    last = max(first, stop // GROUP * GROUP)
    return PartialSum(
        start,
        values[: first - start],
        _group_sums(values[first - start : last - start]),
        values[last - start :],
    )


class CellSum:
    """Sum of per-cell values over all cells, added block by block in cell order.

    Cells are summed in groups of :data:`GROUP` at fixed positions and the groups in
    order, so the total is the same bytes for any blocking of the cells.

    Parameters
    ----------
    n_values
        Values per cell (e.g. one loss per grid value).
    scored
        The cells that will be added (default all): the groups outside a sample are skipped.
    """

    def __init__(self, n_values: int, scored: ScoredCells | None = None) -> None:
        self._scored = scored
        self._n_values = n_values
        self._next = 0
        self._pending: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []

    def add(self, start: int, values: np.ndarray) -> None:
        """Add per-cell values (cells × values, or one value per cell) of the cells from ``start``."""
        self.add_partial(partial_sum(start, values))

    def add_partial(self, part: PartialSum) -> None:
        """Add a block reduced by :func:`partial_sum` (blocks must come in cell order)."""
        if part.start != self._next and not self._skips_unscored(part.start):
            msg = f"blocks must be added in cell order: expected cell {self._next}, got {part.start}"
            raise RuntimeError(msg)
        self._pending.append(part.head)
        if (part.start + len(part.head)) % GROUP == 0:  # the head completes a group
            self._close()
        self._groups.extend(part.groups)
        self._pending.append(part.tail)
        self._next = part.start + len(part.head) + len(part.groups) * GROUP + len(part.tail)

    def _skips_unscored(self, start: int) -> bool:
        """Whether the cells from the next expected one to ``start`` are whole groups outside the sample."""
        groups = None if self._scored is None else self._scored.groups
        if groups is None or start < self._next or self._next % GROUP or start % GROUP:
            return False
        lo, hi = np.searchsorted(groups, [self._next // GROUP, start // GROUP])
        return bool(lo == hi)

    def _close(self) -> None:
        pending = [v for v in self._pending if len(v)]
        if pending:
            self._groups.append(_sum_rows(np.concatenate(pending)))
        self._pending = []

    def group_sums(self) -> np.ndarray:
        """Return the sum of each fixed group of cells (groups × values; the last may be partial)."""
        groups = list(self._groups)
        pending = [v for v in self._pending if len(v)]
        if pending:
            groups.append(_sum_rows(np.concatenate(pending)))
        return np.array(groups).reshape(-1, self._n_values)

    def total(self) -> np.ndarray:
        """Sum over every cell added (one entry per value); call once all blocks are in."""
        return _sum_rows(self.group_sums())


class ScoredCells(NamedTuple):
    """The fixed groups of :data:`GROUP` cells a sweep is scored on: all of them, or a sample.

    Whole groups, so that :class:`CellSum` adds the same cells in the same order whatever
    the blocks.
    """

    n_cells: int
    """Cells in the data."""
    groups: np.ndarray | None = None
    """Sorted indices of the groups scored; None: every cell."""

    @property
    def n_scored(self) -> int:
        """Cells scored."""
        if self.groups is None:
            return self.n_cells
        starts = self.groups * GROUP
        return int((np.minimum(starts + GROUP, self.n_cells) - starts).sum())

    def positions(self) -> np.ndarray | None:
        """Return the scored cells' positions, sorted (None: every cell)."""
        if self.groups is None:
            return None
        return np.concatenate([np.arange(r.start, r.stop) for r in self.runs(slice(0, self.n_cells))])

    def runs(self, rows: slice) -> list[slice]:
        """Return the scored cells among ``rows`` as runs of neighbouring cells (positions in the data)."""
        if rows.stop <= rows.start:
            return []
        if self.groups is None:
            return [rows]
        lo, hi = np.searchsorted(self.groups, [rows.start // GROUP, (rows.stop - 1) // GROUP + 1])
        runs: list[slice] = []
        for group in self.groups[lo:hi].tolist():
            start, stop = max(group * GROUP, rows.start), min((group + 1) * GROUP, rows.stop)
            if runs and runs[-1].stop == start:
                runs[-1] = slice(runs[-1].start, stop)
            else:
                runs.append(slice(start, stop))
        return runs
