"""Low-rank (PCA) denoising: the centred data projected on its top ``k`` components."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
from scipy import linalg, sparse

from .._validate import check_int_grid

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
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


def _as_float(X: ArrayLike) -> ArrayLike:
    return sparse.csr_matrix(X, dtype=np.float64) if sparse.issparse(X) else np.asarray(X, dtype=np.float64)


class _RankSweep:
    """Adds components to one block's prediction in place, grid value by grid value.

    The block is float32: the sweep is memory-bound, and the rounding (~1e-7 relative)
    is far below the loss differences between ranks.
    """

    def __init__(
        self, grid: np.ndarray, offset: np.ndarray, coefs: Callable[[slice], np.ndarray], loadings: np.ndarray
    ):
        self.grid, self.offset, self.coefs = grid, offset, coefs
        self.loadings = np.ascontiguousarray(loadings, dtype=np.float32)

    def sweep_blocks(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        coefs = self.coefs(rows).astype(np.float32)
        pred = np.empty((coefs.shape[0], self.offset.size), dtype=np.float32)
        pred[:] = self.offset
        done = 0
        for k in self.grid:
            _add_product(pred, np.ascontiguousarray(coefs[:, done:k]), self.loadings[done:k])
            done = k
            yield int(k), pred


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

    def __init__(self, *, n_oversamples: int = 20, n_iter: int = 7, random_state: object = 0) -> None:
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.random_state = random_state

    def __repr__(self) -> str:
        return f"PCA(n_oversamples={self.n_oversamples}, n_iter={self.n_iter}, random_state={self.random_state!r})"

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("n_comps",)

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Every rank to 20, then steps of 2 to 40 and of 5 to 100, capped by the data size."""
        grid = np.r_[np.arange(1, 21), np.arange(22, 41, 2), np.arange(45, 101, 5)]
        return grid[grid <= min(shape) - 1]

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Sorted unique ranks in ``1 .. min(n_cells, n_genes) - 1``."""
        return check_int_grid(grid, low=1, high=min(shape) - 1, name="n_comps")

    def _svd(self, X: ArrayLike, n_comps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.random_state)
        return centered_truncated_svd(X, n_comps, n_oversamples=self.n_oversamples, n_iter=self.n_iter, rng=rng)

    def fit(self, X: ArrayLike, grid: np.ndarray) -> Self:
        """Fit one truncated SVD at ``max(grid)`` on (normalised) data ``X``."""
        self.grid_ = np.sort(np.asarray(grid, dtype=np.int64))
        self.mean_, u, s, self.components_ = self._svd(_as_float(X), int(self.grid_[-1]))
        self.singular_values_ = s
        self.scores_ = u * s
        return self

    def sweep_blocks(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        """Predictions for cells ``rows`` at every rank of the grid, updated in place."""
        return _RankSweep(self.grid_, self.mean_, lambda r: self.scores_[r], self.components_).sweep_blocks(rows)

    def predict(self, rows: slice, value: int) -> np.ndarray:
        """``mean + scores[:, :k] @ components[:k]`` for cells ``rows``."""
        return self.mean_ + self.scores_[rows, :value] @ self.components_[:value]

    def factors(self, value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, the first ``k`` scores and components: the rank-``k`` output, factored."""
        return self.mean_, self.scores_[:, :value], self.components_[:value]

    def held_out_genes(
        self, X: ArrayLike, genes: np.ndarray, cell_groups: np.ndarray, grid: np.ndarray
    ) -> _GroupedRankSweep:
        """Predict genes ``genes`` from the other genes' top ``k`` components, cross-fitted over cell groups.

        The components come from the other genes only (one SVD at ``max(grid)``). For
        each cell group, the held-out genes are regressed on those components over the
        cells of the *other* groups and read off for the group's cells, so no prediction
        uses a cell's own held-out values. Orthogonalising the components once (QR) makes
        rank ``k`` the rank ``k - 1`` prediction plus one term.
        """
        X = _as_float(X)
        grid = np.sort(np.asarray(grid, dtype=np.int64))
        _, u, s, _ = self._svd(X[:, ~genes], int(grid[-1]))
        scores = u * s
        target = X[:, genes]
        target = target.toarray() if sparse.issparse(target) else np.asarray(target)
        coefs = np.empty_like(scores)
        offsets, loadings = [], []
        for group in range(int(cell_groups.max()) + 1):
            inside = cell_groups == group
            z_mean, y_mean = scores[~inside].mean(axis=0), target[~inside].mean(axis=0)
            q, r = linalg.qr(scores[~inside] - z_mean, mode="economic")
            # least squares on the first k columns: coefficients (z - z_mean) R^{-1}, loadings Q^T y;
            # R is triangular, so the first k of each come from the first k components only.
            coefs[inside] = linalg.solve_triangular(r, (scores[inside] - z_mean).T, trans="T", lower=False).T
            offsets.append(y_mean)
            loadings.append(q.T @ (target[~inside] - y_mean))
        return _GroupedRankSweep(grid, cell_groups, coefs, offsets, loadings)


class _GroupedRankSweep:
    """Like :class:`_RankSweep`, with offsets and loadings of its own for each cell group."""

    def __init__(
        self,
        grid: np.ndarray,
        cell_groups: np.ndarray,
        coefs: np.ndarray,
        offsets: list[np.ndarray],
        loadings: list[np.ndarray],
    ):
        self.grid, self.cell_groups, self.coefs = grid, cell_groups, coefs
        self.offsets, self.loadings = offsets, loadings

    def sweep_blocks(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        groups = self.cell_groups[rows]
        members = [np.flatnonzero(groups == g) for g in range(len(self.offsets))]
        coefs = self.coefs[rows]
        parts = [np.tile(offset, (idx.size, 1)) for offset, idx in zip(self.offsets, members, strict=True)]
        pred = np.empty((groups.size, self.offsets[0].size))
        done = 0
        for k in self.grid:
            for part, idx, loadings in zip(parts, members, self.loadings, strict=True):
                _add_product(part, np.ascontiguousarray(coefs[idx, done:k]), loadings[done:k])
                pred[idx] = part
            done = k
            yield int(k), pred
