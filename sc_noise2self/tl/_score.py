"""Scoring any denoiser's output on held-out counts (the OpenProblems denoising protocol)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from .._numerics.checks import (
    MAX_TARGET_SUM,
    as_canonical_csr,
    check_count_values,
    check_dtype,
    check_number,
    check_positive_int,
)
from .._numerics.loss import POISSON_FLOOR

if TYPE_CHECKING:
    from .._types import ArrayLike

__all__ = ["score_denoising"]

_TO_COUNTS = {"counts": lambda v: v, "sqrt": np.square, "log1p": np.expm1}


def score_denoising(
    denoised: ArrayLike,
    test: ArrayLike,
    *,
    scale: Literal["counts", "sqrt", "log1p"] = "counts",
    target_sum: float = 1e4,
    chunk_size: int = 2048,
) -> dict[str, float]:
    """Score a denoised matrix against held-out counts, as the OpenProblems denoising task does.

    The protocol: split raw counts 0.9/0.1 (:func:`sc_noise2self.pp.split_counts`),
    denoise the 0.9 part with any method, and score its output against the 0.1 part.

    - ``"mse"``: both sides normalised to ``target_sum`` counts per cell and ``log1p``'d,
      mean squared error over all entries.
    - ``"poisson"``: the prediction rescaled to the held-out total of each cell,
      ``ρ = d · Σy / Σd``, then the Poisson negative log-likelihood with the prediction
      first, ``mean(ρ - y log ρ)`` (``ρ`` floored at 1e-6; the ``log y!`` term, which no
      method can change, is left out).

    Parameters
    ----------
    denoised
        Output of a denoiser for the training cells × genes, dense or sparse.
    test
        Held-out raw counts of the same cells and genes.
    scale
        What ``denoised`` holds: counts, or ``sqrt``/``log1p`` of counts (as
        :func:`sc_noise2self.pp.denoise` writes with that transform); it is mapped back
        by squaring or ``expm1`` (negative values clipped to 0), as OpenProblems' own
        wrappers do. Inverting ``E[T(Poisson(μ))]`` instead would give unbiased rates, but
        at the held-out depth this protocol's log-MSE rewards shrinking small values, so the
        convention is kept for comparability.
    target_sum
        Counts per cell after normalisation, for the MSE.
    chunk_size
        Cells per block; neither matrix is densified whole.

    Returns
    -------
    ``{"mse": ..., "poisson": ...}``, lower is better for both.
    """
    if scale not in _TO_COUNTS:
        msg = f"scale must be one of {sorted(_TO_COUNTS)}, got {scale!r}."
        raise ValueError(msg)
    target_sum = check_number(target_sum, "target_sum", low=0.0, high=MAX_TARGET_SUM, open_low=True, example="1e4")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    denoised = denoised if sparse.issparse(denoised) or hasattr(denoised, "dask") else np.asarray(denoised)
    test = test if sparse.issparse(test) else np.asarray(test)
    if len(denoised.shape) != 2 or denoised.shape != test.shape:
        msg = f"denoised {denoised.shape} and test {test.shape} must be 2-D and of the same shape."
        raise ValueError(msg)
    check_dtype(denoised.dtype)
    test = as_canonical_csr(test)
    check_count_values(test, what="The held-out counts")
    n_cells, n_genes = test.shape
    mse = poisson = 0.0
    for start in range(0, n_cells, chunk_size):
        rows = slice(start, min(start + chunk_size, n_cells))
        block = denoised[rows]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block, dtype=np.float64)
        if not np.isfinite(block).all():
            msg = f"denoised holds NaN or infinite values (cells {rows.start}..{rows.stop - 1}); it must be finite."
            raise ValueError(msg)
        with np.errstate(over="ignore"):
            pred = np.maximum(_TO_COUNTS[scale](block.astype(np.float64)), 0.0)
        if not np.isfinite(pred).all():
            msg = f"denoised overflows when mapped back to counts (scale={scale!r}); is it on that scale?"
            raise ValueError(msg)
        y = test[rows].toarray().astype(np.float64)
        pred_total = pred.sum(axis=1, keepdims=True)
        y_total = y.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            norm_pred = np.where(pred_total > 0, pred / pred_total, 0.0) * target_sum
            norm_y = np.where(y_total > 0, y / y_total, 0.0) * target_sum
            rate = np.where(pred_total > 0, pred * (y_total / pred_total), 0.0)
        mse += float(np.sum((np.log1p(norm_pred) - np.log1p(norm_y)) ** 2))
        rate = np.maximum(rate, POISSON_FLOOR)
        poisson += float(np.sum(rate - y * np.log(rate)))
    n = n_cells * n_genes
    return {"mse": mse / n, "poisson": poisson / n}
