"""Held-out losses, accumulated block by block over cells.

Both losses compare a denoiser's training-depth prediction with the held-out half after
the exact depth conversion (:mod:`sc_noise2self._transform`):

- ``"mse"``: squared error on the transformed scale, ``(c(ŷ) - T(s'' x''))²``.
- ``"poisson"``: Poisson negative log-likelihood on the count scale, prediction first:
  ``ρ - x'' log ρ`` with ``ρ = max(rate(ŷ), 1e-6)`` the predicted held-out rate.

Losses are summed per cell by a compiled kernel (held-out counts stay sparse), and the
caller adds the per-cell sums in a fixed order, so results do not depend on threading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

from ._transform import TRANSFORM_CODES

if TYPE_CHECKING:
    from scipy import sparse

    from ._transform import DepthConversion
    from ._types import LossName, TransformName

__all__ = ["LOSSES", "POISSON_FLOOR", "score_block"]

LOSSES = ("mse", "poisson")
POISSON_FLOOR = 1e-6


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        msg = f"loss must be one of {LOSSES}, got {loss!r}."
        raise ValueError(msg)
    return loss


@numba.njit(cache=True, inline="always")
def _convert(table, row, weight, value, inv_step):  # noqa: ANN001, ANN202
    n = table.shape[1]
    pos = value * inv_step
    if pos <= 0.0:
        pos = 0.0
    j = int(pos)
    if j > n - 2:
        j = n - 2
    frac = pos - j
    lo = table[row, j]
    out = lo + frac * (table[row, j + 1] - lo)
    if weight > 0.0:
        lo2 = table[row + 1, j]
        out2 = lo2 + frac * (table[row + 1, j + 1] - lo2)
        out += weight * (out2 - out)
    return out


@numba.njit(cache=True, inline="always")
def _apply_transform(x, code):  # noqa: ANN001, ANN202
    if code == 0:
        return np.sqrt(x)
    if code == 1:
        return np.log1p(x)
    return x


@numba.njit(parallel=True, cache=True)
def _score_rows(  # noqa: PLR0913
    pred, indptr, indices, data, test_scales, rows, weights, table, inv_step, tcode, poisson, floor, out
):  # noqa: ANN001, ANN202
    n_cells, n_genes = pred.shape
    for c in numba.prange(n_cells):
        row, weight, scale = rows[c], weights[c], test_scales[c]
        q, q_end = indptr[c], indptr[c + 1]
        acc = 0.0
        for g in range(n_genes):
            value = _convert(table, row, weight, pred[c, g], inv_step)
            x = 0.0
            if q < q_end and indices[q] == g:
                x = data[q]
                q += 1
            if poisson:
                rate = max(value, floor)
                acc += rate - x * np.log(rate)
            else:
                d = value - (_apply_transform(scale * x, tcode) if x != 0.0 else 0.0)
                acc += d * d
        out[c] = acc


def score_block(
    pred: np.ndarray,
    test: sparse.csr_matrix,
    *,
    conversion: DepthConversion,
    train_scales: np.ndarray,
    test_scales: np.ndarray,
    transform: TransformName,
    loss: LossName,
) -> np.ndarray:
    """Per-cell summed loss of a block of predictions against the held-out counts.

    Parameters
    ----------
    pred
        Training-depth predictions for a block of cells, cells × genes, on the
        transformed scale of the training half.
    test
        Held-out raw counts of the same cells (canonical CSR).
    conversion
        The split's depth conversion.
    train_scales, test_scales
        Per-cell multipliers of the training and held-out halves for these cells.
    transform, loss
        As in :func:`sc_noise2self.pp.denoise`.
    """
    pred = np.ascontiguousarray(pred, dtype=np.float64)
    rows, weights = conversion.rows_for(train_scales)
    out = np.empty(pred.shape[0])
    _score_rows(
        pred,
        test.indptr,
        test.indices,
        test.data.astype(np.float64, copy=False),
        np.ascontiguousarray(test_scales, dtype=np.float64),
        rows,
        weights,
        conversion.table,
        conversion.inv_step,
        TRANSFORM_CODES[transform],
        loss == "poisson",
        POISSON_FLOOR,
        out,
    )
    return out
