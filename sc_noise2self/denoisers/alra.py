"""ALRA: adaptively-thresholded low-rank approximation (Linderman, Zhao, Roulis et al., Nat Commun 2022).

The rank-``k`` reconstruction of the (log-normalised) data, computed without centring; for each
gene, every reconstructed value up to the magnitude of the gene's lowest values (their 0.001
quantile: the spread of the noise around the zeros a low-rank fit cannot reach) is set to zero;
the values kept are rescaled to the mean and standard deviation of the gene's observed nonzero
values; negative values are zeroed, and observed nonzero values the thresholding zeroed are
restored. ``k`` is calibrated like any other setting; ALRA's own rule, the last rank whose
singular-value gap stands more than six standard deviations above the gaps of ranks 80..100, is
reported beside the calibration (``uns[key]["method_report"]["spectral_gap_rank"]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from sklearn.utils.extmath import randomized_svd

from .._numerics.checks import check_int_grid, check_non_negative_int, check_number
from .._numerics.machine import blas_threads
from ._base import BaseDenoiser, Predicted, Tags
from ._registry import register
from .pca import _add_product

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._types import ArrayLike
    from ._base import Block, Data, Partition

__all__ = ["ALRA", "spectral_gap_rank"]

_BLOCK = 1024  # cells per block of the fit's passes (fixed: the statistics do not depend on the caller's blocks)


def spectral_gap_rank(
    singular_values: np.ndarray, *, noise: slice = slice(78, 99), threshold: float = 6.0
) -> int | None:
    """Return ALRA's rank: the last gap between consecutive singular values over ``threshold`` noise SDs.

    The noise gaps are those of ranks 80..100 (``noise``, over the gaps); None with fewer than 100
    singular values.
    """
    gaps = -np.diff(singular_values)
    if gaps.size < noise.stop:
        return None
    scaled = (gaps - gaps[noise].mean()) / gaps[noise].std(ddof=1)
    above = np.flatnonzero(scaled > threshold)
    return int(above[-1]) + 1 if above.size else None


@register("alra")
class ALRA(BaseDenoiser):
    """Denoise by ALRA: a rank-``k`` reconstruction, thresholded and rescaled gene by gene.

    Parameters
    ----------
    quantile
        Each gene's threshold is the magnitude of this quantile of its reconstructed values.
    n_oversamples
        Extra random directions of the randomised SVD.
    n_iter
        Power iterations of the randomised SVD.
    random_state
        Seed of the randomised SVD.
    """

    tags = Tags()
    axis_labels: ClassVar[dict[str, str]] = {"k": "rank of the approximation"}

    def __init__(
        self, *, quantile: float = 0.001, n_oversamples: int = 10, n_iter: int = 10, random_state: object = 0
    ) -> None:
        self.quantile = quantile
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.random_state = random_state

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range (called before any work)."""
        super().check_params()
        check_number(self.quantile, "quantile", low=0.0, high=0.5, open_low=True, example="0.001")
        check_non_negative_int(self.n_oversamples, "n_oversamples")
        check_non_negative_int(self.n_iter, "n_iter")

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("k",)

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Every rank to 20, then steps of 2 to 40 and of 5 to 100, capped by the data size."""
        grid = np.r_[np.arange(1, 21), np.arange(22, 41, 2), np.arange(45, 101, 5)]
        return grid[grid <= min(shape) - 1]

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Sorted unique ranks from 1 to ``min(n_cells, n_genes) - 1``."""
        self.check_params()
        return check_int_grid(grid, low=1, high=min(shape) - 1, name="k")

    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> ALRA:
        """Fit one uncentred randomised SVD, and each rank's per-gene thresholds and moments.

        The SVD goes to rank ``max(grid)``, or 100 where the data allow, for the rank rule.
        """
        X = data.matrix()
        self.grid_ = np.sort(np.asarray(grid, dtype=np.int64))
        n_comps = min(max(int(self.grid_[-1]), 100), min(X.shape) - 1)
        with blas_threads(1):  # the same bytes whatever the threads
            u, s, vt = randomized_svd(
                X, n_comps, n_oversamples=self.n_oversamples, n_iter=self.n_iter, random_state=self._rng()
            )
        self.scores_, self.singular_values_, self.components_ = u * s, s, vt
        count = np.bincount(X.indices[X.data != 0], minlength=X.shape[1])
        squares = np.asarray(X.multiply(X).sum(axis=0)).ravel()
        self.observed_ = _moments(count, np.asarray(X.sum(axis=0)).ravel(), squares)
        blocks = [slice(a, min(a + _BLOCK, X.shape[0])) for a in range(0, X.shape[0], _BLOCK)]
        self.thresholds_ = self._thresholds(blocks, X.shape[0])
        self.kept_ = self._kept_moments(blocks, X.shape[1])
        return self

    def _rng(self) -> np.random.RandomState:
        seed = np.random.default_rng(self.random_state).integers(2**31 - 1)
        return np.random.RandomState(int(seed))

    def _reconstructions(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        """Yield the rank-``k`` reconstruction of the cells ``rows`` at every rank of the grid (float32, in place)."""
        coefs = np.ascontiguousarray(self.scores_[rows], dtype=np.float32)
        loadings = np.ascontiguousarray(self.components_, dtype=np.float32)
        out = np.zeros((coefs.shape[0], loadings.shape[1]), dtype=np.float32)
        done = 0
        for v, k in enumerate(self.grid_):
            _add_product(out, np.ascontiguousarray(coefs[:, done:k]), loadings[done:k])
            done = k
            yield v, out

    def _thresholds(self, blocks: list[slice], n_cells: int) -> np.ndarray:
        """Each rank's threshold per gene: the magnitude of the ``quantile`` of its reconstructed values.

        Only each gene's lowest values decide it: they are kept block by block (ranks × few × genes).
        """
        position = (n_cells - 1) * self.quantile  # numpy's (and R's) default: linear between order statistics
        below = int(np.floor(position))
        above = min(below + 1, n_cells - 1)
        keep = above + 1
        lowest: list[np.ndarray] = [np.empty((0, self.components_.shape[1]), np.float32)] * len(self.grid_)
        for rows in blocks:
            for v, block in self._reconstructions(rows):
                merged = np.vstack([lowest[v], block])
                lowest[v] = np.partition(merged, keep - 1, axis=0)[:keep] if len(merged) > keep else merged
        ordered = [np.sort(values, axis=0) for values in lowest]
        fraction = position - below
        return np.stack([np.abs(v[below] + fraction * (v[above] - v[below])) for v in ordered])

    def _kept_moments(self, blocks: list[slice], n_genes: int) -> np.ndarray:
        """Each rank's mean and SD per gene of the reconstructed values kept (ranks × 2 × genes)."""
        sums = np.zeros((len(self.grid_), 3, n_genes))
        for rows in blocks:
            for v, block in self._reconstructions(rows):
                kept = np.where(block > self.thresholds_[v], block, 0.0).astype(np.float64)
                sums[v] += [np.count_nonzero(kept, axis=0), kept.sum(axis=0), np.square(kept).sum(axis=0)]
        return np.stack([_moments(*s) for s in sums])

    def predictions(self, block: Block) -> Iterator[tuple[int, np.ndarray]]:
        """ALRA's output for the block at every rank of the grid."""
        observed = block.values.toarray()
        for v, reconstruction in self._reconstructions(block.rows):
            yield int(self.grid_[v]), self._completed(reconstruction, v, observed)

    def _completed(self, reconstruction: np.ndarray, v: int, observed: np.ndarray) -> np.ndarray:
        """Threshold, rescale to the observed nonzero values, zero negatives, restore observed values zeroed."""
        kept = reconstruction > self.thresholds_[v]
        (mu_1, sigma_1), (mu_2, sigma_2) = self.kept_[v], self.observed_
        scale = np.isfinite(sigma_1) & np.isfinite(sigma_2) & (sigma_1 > 0)
        factor = np.where(scale, sigma_2 / np.where(scale, sigma_1, 1.0), 1.0)
        shift = np.where(scale, mu_2 - mu_1 * factor, 0.0)
        out = np.where(kept, reconstruction * factor + shift, 0.0)
        out = np.maximum(out, 0.0)
        out = np.where((observed > 0) & (out == 0), observed, out)
        return out.astype(np.float32)

    def output(self, value: int) -> Predicted:
        """ALRA's output at rank ``value`` (after a fit whose grid holds it)."""
        v = int(np.flatnonzero(self.grid_ == value)[0])

        def predict(block: Block) -> np.ndarray:
            for at, reconstruction in self._reconstructions(block.rows):
                if at == v:
                    return self._completed(reconstruction, v, block.values.toarray())
            raise AssertionError  # pragma: no cover - v is a position in the grid

        return Predicted(predict)

    def report(self) -> dict[str, float]:
        """ALRA's own rank (the spectral gap), where 100 singular values allow it."""
        rank = spectral_gap_rank(self.singular_values_)
        return {} if rank is None else {"spectral_gap_rank": rank}


def _moments(count: np.ndarray, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """Mean and SD (ddof 1) from counts, sums and sums of squares; NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        variance = (squares - count * np.square(mean)) / (count - 1)
    return np.stack([mean, np.sqrt(np.maximum(variance, 0.0)) * np.where(count > 1, 1.0, np.nan)])
