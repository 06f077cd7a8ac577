"""Held-out losses, accumulated block by block over cells.

Both losses compare a denoiser's training-depth prediction with the held-out half after
the exact depth conversion (:mod:`sc_noise2self._numerics.transform`), which maps a negative
prediction as 0: the score is that of the output as written, projected onto values ≥ 0.

- ``"mse"``: squared error on the transformed scale, ``(c(ŷ) - T(s'' x''))²``.
- ``"poisson"``: Poisson negative log-likelihood on the count scale, prediction first:
  ``ρ - x'' log ρ`` with ``ρ = max(rate(ŷ), 1e-6)`` the predicted held-out rate.

Losses are summed per cell by a compiled kernel (held-out values stay sparse), and the
caller adds the per-cell sums in a fixed order, so results do not depend on threading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np
from scipy import sparse

from .transform import transform_counts

if TYPE_CHECKING:
    from .._types import LossName, TransformName
    from .transform import DepthConversion

__all__ = [
    "LOSSES",
    "POISSON_FLOOR",
    "DataScorer",
    "RowScorer",
    "at_least",
    "held_out_target",
    "row_scorer",
    "row_squared_errors",
    "score_block",
    "squared_error_row",
]

LOSSES = ("mse", "poisson")
POISSON_FLOOR = 1e-6


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        msg = f"loss must be one of {LOSSES}, got {loss!r}."
        raise ValueError(msg)
    return loss


# fastmath without "nnan"/"ninf": the checks below must hold for any value, so that no
# input can read outside the table, and a non-finite prediction makes a NaN loss.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _lookup(table, base, last, value, inv_step):
    # Linear interpolation in one row (starting at flat index ``base``) of a regular table;
    # clamped below at 0 and extrapolated linearly past the end. The index is clamped
    # before the conversion to int, so it stays in the row even for huge values; a
    # non-finite prediction (a diverged denoiser) gives NaN, so the loss is NaN and refused.
    if not np.isfinite(value):
        return np.nan
    pos = max(value * inv_step, 0.0)
    j = int(min(pos, last - 1.0))
    lo = table[base + j]
    return lo + (pos - j) * (table[base + j + 1] - lo)


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _convert(table, n, row, weight, value, inv_step):
    out = _lookup(table, row * n, n - 1, value, inv_step)
    if weight > 0.0:
        out += weight * (_lookup(table, (row + 1) * n, n - 1, value, inv_step) - out)
    return out


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _squares(flat, n, row, weight, pred, target, inv_step, dense):
    # Sum over genes of (c(ŷ) - t)² for one cell's rows ``pred`` and ``target``, with
    # t = target when ``dense`` and 0 otherwise. Branch-free per gene: ``dense`` is fixed
    # per call and the scale row per cell.
    acc = 0.0
    if weight > 0.0:
        for g in range(pred.size):
            d = _convert(flat, n, row, weight, pred[g], inv_step)
            if dense:
                d -= target[g]
            acc += d * d
    else:  # one scale row: the common case, kept free of the second lookup
        base = row * n
        for g in range(pred.size):
            d = _lookup(flat, base, n - 1, pred[g], inv_step)
            if dense:
                d -= target[g]
            acc += d * d
    return acc


@numba.njit(cache=True, inline="always")
def at_least(value, lower):
    """``max(value, lower)``, but NaN stays NaN (a diverged prediction must not score as the floor)."""
    return lower if value < lower else value


@numba.njit(parallel=True, cache=True)
def _row_squared_errors(pred, target, lower, out):  # pragma: no cover - compiled
    for c in numba.prange(pred.shape[0]):
        acc = 0.0
        for g in range(pred.shape[1]):
            d = at_least(pred[c, g], lower) - target[c, g]
            acc += d * d
        out[c] = acc


def row_squared_errors(pred: np.ndarray, target: np.ndarray, lower: float = -np.inf) -> np.ndarray:
    """Return the summed squared difference of each row of ``max(pred, lower)`` and ``target`` (rows in parallel)."""
    out = np.empty(pred.shape[0])
    _row_squared_errors(np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64), float(lower), out)
    return out


class DataScorer(NamedTuple):
    """What a fused sweep scores a block against in the gene partition: the data, and a floor for predictions."""

    target: np.ndarray
    """Dense values of the block's held-out genes, float64 cells × genes."""
    lower: float
    """Predictions are scored as ``max(ŷ, lower)``: 0 for data without negative values (as the
    output is written), ``-inf`` otherwise."""


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def squared_error_row(pred, target, flat, n, row, weight, inv_step):
    """Return the summed squared error of one cell's converted prediction row against its held-out row.

    For kernels that build a cell's predictions themselves and score each at once (one
    parallel region per block of cells for a whole grid; see :class:`RowScorer`).
    """
    return _squares(flat, n, row, weight, pred, target, inv_step, True)


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _mse_dense_rows(pred, target, rows, weights, table, inv_step, out):
    # For sweeps that score one block at every grid value: the held-out block is
    # densified once and reused.
    n = table.shape[1]
    flat = table.ravel()
    for c in numba.prange(pred.shape[0]):
        out[c] = _squares(flat, n, rows[c], weights[c], pred[c], target[c], inv_step, True)


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _mse_sparse_rows(pred, indptr, indices, data, rows, weights, table, inv_step, out):
    # For sweeps that visit each block once per value: c(ŷ)² over every gene (the target
    # is T(0) = 0 off the held-out nonzeros), then (c - t)² = c² - t (2c - t) at them.
    n = table.shape[1]
    flat = table.ravel()
    for c in numba.prange(pred.shape[0]):
        row, weight = rows[c], weights[c]
        acc = _squares(flat, n, row, weight, pred[c], pred[c], inv_step, False)
        for q in range(indptr[c], indptr[c + 1]):
            t = data[q]
            acc -= t * (2.0 * _convert(flat, n, row, weight, pred[c, indices[q]], inv_step) - t)
        out[c] = acc


@numba.njit(cache=True, inline="always", fastmath=_FAST)
def _floored(rate, floor):
    # max(rate, floor), but a NaN rate stays NaN (max would return the floor)
    return rate if np.isnan(rate) else max(rate, floor)


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _poisson_rows(pred, indptr, indices, data, rows, weights, table, inv_step, floor, out):
    # Sum of rates over all genes, then - y log(rate) at the held-out nonzeros only.
    n_cells, n_genes = pred.shape
    n = table.shape[1]
    flat = table.ravel()
    for c in numba.prange(n_cells):
        row, weight = rows[c], weights[c]
        acc = 0.0
        for g in range(n_genes):
            acc += _floored(_convert(flat, n, row, weight, pred[c, g], inv_step), floor)
        for q in range(indptr[c], indptr[c + 1]):
            rate = _floored(_convert(flat, n, row, weight, pred[c, indices[q]], inv_step), floor)
            acc -= data[q] * np.log(rate)
        out[c] = acc


def held_out_target(
    test: sparse.csr_matrix,
    test_scales: np.ndarray,
    *,
    transform: TransformName,
    loss: LossName,
    reused: bool = False,
) -> np.ndarray | sparse.csr_matrix:
    """Held-out values of a block of cells on the scale its loss compares at.

    MSE: ``T(s'' x'')``; Poisson: the counts. Float64 CSR with the held-out part's
    sparsity (``T(0) = 0``), O(nonzeros) per block. With ``reused`` (the block is scored
    at many grid values in a row) the MSE target is a dense block instead, which the
    dense kernel reads faster than it would pay for the sparse correction each time.
    """
    if loss == "poisson":
        return sparse.csr_matrix((test.data.astype(np.float64), test.indices, test.indptr), shape=test.shape)
    target = transform_counts(test, transform, test_scales)
    return target.toarray() if reused else target


class RowScorer(NamedTuple):
    """What a compiled kernel needs to score a block's predictions cell by cell (MSE, dense target).

    Pass the fields to :func:`squared_error_row` inside a kernel that makes each cell's
    prediction at every grid value and scores it at once, so a whole grid costs one
    parallel region per block of cells instead of one per grid value.
    """

    target: np.ndarray
    """Dense held-out values of the block, float64 cells × genes."""
    flat: np.ndarray
    """The depth-conversion table, raveled."""
    n: int
    """Entries per table row."""
    rows: np.ndarray
    """Each cell's lower table row."""
    weights: np.ndarray
    """Each cell's interpolation weight towards the next row."""
    inv_step: float
    """Table entries per unit of prediction."""


def row_scorer(target: np.ndarray, *, conversion: DepthConversion, train_scales: np.ndarray) -> RowScorer:
    """Return the :class:`RowScorer` of a block: its dense MSE target (``held_out_target(..., reused=True)``)."""
    rows, weights = conversion.rows_for(train_scales)
    table = np.ascontiguousarray(conversion.table)
    return RowScorer(
        np.ascontiguousarray(target, dtype=np.float64),
        table.ravel(),
        table.shape[1],
        rows,
        weights,
        conversion.inv_step,
    )


def score_block(
    pred: np.ndarray,
    target: np.ndarray | sparse.csr_matrix,
    *,
    conversion: DepthConversion,
    train_scales: np.ndarray,
    loss: LossName,
) -> np.ndarray:
    """Per-cell summed loss of a block of predictions against the held-out half.

    Parameters
    ----------
    pred
        Training-depth predictions for a block of cells, cells × genes, on the
        transformed scale of the training half (float32 or float64).
    target
        The same cells' held-out values from :func:`held_out_target`.
    conversion
        The split's depth conversion (built for the same ``loss``).
    train_scales
        Per-cell multipliers of the training half for these cells.
    loss
        ``"mse"`` or ``"poisson"``.
    """
    pred = np.ascontiguousarray(pred)
    rows, weights = conversion.rows_for(train_scales)
    table = np.ascontiguousarray(conversion.table)
    out = np.empty(pred.shape[0])
    if loss == "poisson":
        _poisson_rows(
            pred,
            target.indptr,
            target.indices,
            target.data,
            rows,
            weights,
            table,
            conversion.inv_step,
            POISSON_FLOOR,
            out,
        )
    elif isinstance(target, np.ndarray):
        _mse_dense_rows(pred, np.ascontiguousarray(target), rows, weights, table, conversion.inv_step, out)
    else:
        _mse_sparse_rows(
            pred, target.indptr, target.indices, target.data, rows, weights, table, conversion.inv_step, out
        )
    return out
