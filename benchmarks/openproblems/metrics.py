"""The OpenProblems denoising task's two metrics, re-implemented from the task's definition.

- ``mse``: held-out counts and denoised counts are each normalised to 10,000 per cell
  (``sc.pp.normalize_total``; a cell without counts stays 0) and ``log1p``'d; the mean
  squared error over all entries.
- ``poisson``: the denoised counts are rescaled by the ratio of the held-out part's total
  count to the training part's (one global factor), then the task calls
  ``molecular_cross_validation``'s ``poisson_nll_loss(y_pred, y_true) =
  mean(y_pred - y_true * log(y_pred + 1e-6))`` as ``poisson_nll_loss(test, denoised)``: the
  arguments are swapped, so the held-out counts stand where the prediction should.
  ``poisson_task`` reproduces that; ``poisson_prediction_first`` is the likelihood of the
  held-out counts under the prediction, ``mean(ρ - y log(ρ + 1e-6))``. Lower is better for all.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

EPS = 1e-6


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)


def _log_normalised(x: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    totals = x.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log1p(np.where(totals > 0, x / totals, 0.0) * target_sum)


def scores(train, test, denoised) -> dict[str, float]:
    """Both metrics (and the Poisson score both ways) of denoised counts against the held-out counts."""
    y, d = _dense(test), _dense(denoised)
    if not np.isfinite(d).all() or (d < 0).any():
        msg = "denoised counts must be finite and non-negative"
        raise ValueError(msg)
    mse = float(np.mean((_log_normalised(y) - _log_normalised(d)) ** 2))
    rho = d * (y.sum() / _dense(train).sum())
    return {
        "mse": mse,
        "poisson_task": float(np.mean(y - rho * np.log(y + EPS))),
        "poisson_prediction_first": float(np.mean(rho - y * np.log(rho + EPS))),
    }


def score_table(train, test, setting: str):
    """Print the header of a Markdown table of scores; return ``row(method, value, denoised, seconds)`` for its rows.

    ``setting`` heads the column of each method's setting (e.g. ``"rank"``).
    """
    print(f"| method | {setting} | MSE | Poisson (task) | Poisson (prediction first) | wall time (s) |")
    print("|---|---|---|---|---|---|")

    def row(method: str, value: object, denoised, seconds: float) -> None:
        s = scores(train, test, denoised)
        print(
            f"| {method} | {value} | {s['mse']:.4f} | {s['poisson_task']:.4f} | "
            f"{s['poisson_prediction_first']:.4f} | {seconds:.1f} |",
            flush=True,
        )

    return row
