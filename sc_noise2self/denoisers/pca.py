"""Low-rank (PCA) denoising: the centred data projected on its top ``k`` components."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
from scipy import linalg, sparse

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Self

    from .._types import ArrayLike

__all__ = ["PCA", "centered_truncated_svd"]


def centered_truncated_svd(
    X: ArrayLike,
    n_comps: int,
    *,
    n_oversamples: int = 20,
    n_iter: int = 7,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top ``n_comps`` singular triplets of ``X - mean`` without forming it.

    Randomised subspace iteration (Halko, Martinsson & Tropp 2011) where every product
    with the centred matrix is a sparse product plus a rank-one correction, so a sparse
    ``X`` stays sparse. Signs are fixed (largest loading of each component positive) so
    results are reproducible.

    Returns
    -------
    mean, U, s, Vt
        Gene means (genes,), left vectors (cells × k), singular values (k,),
        components (k × genes).
    """
    n_cells, n_genes = X.shape
    mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    width = min(n_comps + n_oversamples, n_cells, n_genes)

    def times(m: np.ndarray) -> np.ndarray:  # (X - 1 mean^T) @ m
        return np.asarray(X @ m) - mean @ m

    def times_t(m: np.ndarray) -> np.ndarray:  # (X - 1 mean^T)^T @ m
        return np.asarray(X.T @ m) - np.outer(mean, m.sum(axis=0))

    q, _ = linalg.qr(times(rng.standard_normal((n_genes, width))), mode="economic")
    for _ in range(n_iter):
        q, _ = linalg.qr(times_t(q), mode="economic")
        q, _ = linalg.qr(times(q), mode="economic")
    u_small, s, vt = linalg.svd(times_t(q).T, full_matrices=False)
    u = q @ u_small[:, :n_comps]
    s, vt = s[:n_comps], vt[:n_comps]
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return mean, u * signs, s, vt * signs[:, None]


@numba.njit(parallel=True, cache=True, fastmath=True)
def _add_product(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out += a @ b`` in place, one pass over ``out`` per row of ``b``.

    The sweep adds a few components at a time (inner dimension 1–5), where this is
    memory-bound; it shares numba's thread pool with the scoring kernel instead of
    contending with BLAS threads.
    """
    for c in numba.prange(out.shape[0]):
        for j in range(a.shape[1]):
            coef = a[c, j]
            for g in range(out.shape[1]):
                out[c, g] += coef * b[j, g]


class PCA:
    """Denoise by keeping the top ``n_comps`` principal components of the transformed data.

    One randomised truncated SVD at the largest grid value serves the whole grid: the
    prediction at rank ``k`` is the one at the previous grid value plus the next
    components, added block by block over cells.

    Parameters
    ----------
    n_oversamples
        Extra random directions of the randomised SVD.
    n_iter
        Power iterations of the randomised SVD; more is more accurate for the trailing
        components.
    random_state
        Seed of the random test matrix (anything :func:`numpy.random.default_rng` takes).
    """

    grid_name = "n_comps"

    def __init__(self, *, n_oversamples: int = 20, n_iter: int = 7, random_state: object = 0) -> None:
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.random_state = random_state

    def __repr__(self) -> str:
        return f"PCA(n_oversamples={self.n_oversamples}, n_iter={self.n_iter}, random_state={self.random_state!r})"

    def max_grid_value(self, shape: tuple[int, int]) -> int:
        return min(shape) - 1

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Every rank to 20, then steps of 2 to 40 and of 5 to 100, capped by the data size."""
        grid = np.r_[np.arange(1, 21), np.arange(22, 41, 2), np.arange(45, 101, 5)]
        return grid[grid <= self.max_grid_value(shape)]

    def fit(self, X: ArrayLike, grid: np.ndarray) -> Self:
        """Fit one truncated SVD at ``max(grid)`` on (normalised) data ``X``."""
        if sparse.issparse(X):
            X = sparse.csr_matrix(X, dtype=np.float64)
        else:
            X = np.asarray(X, dtype=np.float64)
        self.grid_ = np.sort(np.asarray(grid, dtype=np.int64))
        rng = np.random.default_rng(self.random_state)
        self.mean_, u, s, self.components_ = centered_truncated_svd(
            X, int(self.grid_[-1]), n_oversamples=self.n_oversamples, n_iter=self.n_iter, rng=rng
        )
        self.singular_values_ = s
        self.scores_ = u * s
        return self

    def sweep(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        """Predictions for cells ``rows`` at every rank of the grid, updated in place."""
        scores = self.scores_[rows]
        pred = np.empty((scores.shape[0], self.mean_.size))
        pred[:] = self.mean_
        done = 0
        for k in self.grid_:
            _add_product(pred, np.ascontiguousarray(scores[:, done:k]), self.components_[done:k])
            done = k
            yield int(k), pred

    def predict(self, rows: slice, value: int) -> np.ndarray:
        """``mean + scores[:, :k] @ components[:k]`` for cells ``rows``."""
        return self.mean_ + self.scores_[rows, :value] @ self.components_[:value]
