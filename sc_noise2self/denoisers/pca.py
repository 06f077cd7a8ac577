"""Low-rank (PCA) denoising: the centred data projected on its top ``k`` components."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Literal, NamedTuple

import numba
import numpy as np
from scipy import linalg, sparse

from .._loss import squared_error_row
from .._rows import low_rank_rows, sparse_dense_product
from .._threads import blas_threads
from .._validate import check_int_grid, check_non_negative_int

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Self

    from .._loss import RowScorer
    from .._types import ArrayLike

__all__ = ["PCA", "GramStats", "centered_truncated_svd", "covariance_svd", "gram_stats", "merge_gram_stats"]

_GRAM_ELEMENTS = 2**22  # cells per dense block × genes when accumulating the Gram matrix (32 MiB)
AUTO_MAX_GENES = 4096  # solver="auto" uses the covariance route up to this many genes


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

    if sparse.issparse(X):  # products on all threads (scipy's are single-threaded), the same bytes
        X = sparse.csr_matrix(X)
        XT = X.T.tocsr()

        def product(m: np.ndarray) -> np.ndarray:
            return sparse_dense_product(X, m)

        def product_t(m: np.ndarray) -> np.ndarray:
            return sparse_dense_product(XT, m)
    else:

        def product(m: np.ndarray) -> np.ndarray:
            return X @ m

        def product_t(m: np.ndarray) -> np.ndarray:
            return X.T @ m

    def times(m: np.ndarray) -> np.ndarray:  # (X - 1 mean^T) @ m
        return product(m) - mean @ m

    def times_t(m: np.ndarray) -> np.ndarray:  # (X - 1 mean^T)^T @ m
        return product_t(m) - np.outer(mean, m.sum(axis=0))

    # With the compiled products, BLAS (the small QRs) keeps to one thread: its threads left
    # spinning between calls would wait on numba's, ten times slower on a busy machine.
    with blas_threads(1 if sparse.issparse(X) else None):
        q, _ = linalg.qr(times(rng.standard_normal((n_genes, width))), mode="economic")
        for _ in range(n_iter):
            q, _ = linalg.qr(times_t(q), mode="economic")
            q, _ = linalg.qr(times(q), mode="economic")
        u_small, s, vt = linalg.svd(times_t(q).T, full_matrices=False)
    u = q @ u_small[:, :n_comps]
    s, vt = s[:n_comps], vt[:n_comps]
    signs = _fix_signs(vt)
    return mean, u * signs, s, vt * signs[:, None]


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    """Sign of each component so that its largest loading is positive (reproducible output)."""
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return signs


class GramStats(NamedTuple):
    """Cell count, gene means and centred Gram matrix (genes × genes) of a block of cells."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


def gram_stats(X: ArrayLike) -> GramStats:
    """Centred second moments of the rows of ``X`` (sparse or dense), a dense block at a time."""
    n_cells, n_genes = X.shape
    step = max(1, _GRAM_ELEMENTS // n_genes)
    total = GramStats(0, np.zeros(n_genes), np.zeros((n_genes, n_genes)))
    for start in range(0, n_cells, step):
        block = X[start : start + step]
        block = block.toarray() if sparse.issparse(block) else np.array(block, dtype=np.float64)
        mean = block.mean(axis=0)
        block -= mean
        total = merge_gram_stats(total, GramStats(block.shape[0], mean, block.T @ block))
    return total


def merge_gram_stats(a: GramStats, b: GramStats) -> GramStats:
    """Statistics of two blocks of cells together (Chan, Golub & LeVeque's pairwise update)."""
    if a.n == 0 or b.n == 0:
        return b if a.n == 0 else a
    n = a.n + b.n
    delta = b.mean - a.mean
    return GramStats(n, a.mean + delta * (b.n / n), a.m2 + b.m2 + np.outer(delta, delta) * (a.n * b.n / n))


def covariance_svd(stats: GramStats, n_comps: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n_comps`` singular values and components of the centred data from its Gram matrix.

    The eigenvectors of ``(X - mean)^T (X - mean)`` are the right singular vectors and its
    eigenvalues the squared singular values: one pass over the cells, then a genes × genes
    eigenproblem, so it suits many cells and up to a few thousand genes (dask input).

    LAPACK runs on one thread here: its threaded reduction rounds differently with the thread
    count (the components would then change with it), and on a busy machine two threads of
    it took many times as long as one.
    """
    n_genes = stats.m2.shape[0]
    with blas_threads(1):
        values, vectors = linalg.eigh(stats.m2, subset_by_index=[n_genes - n_comps, n_genes - 1])
    s = np.sqrt(np.clip(values[::-1], 0.0, None))
    vt = vectors[:, ::-1].T
    return s, vt * _fix_signs(vt)[:, None]


def centred_scores(X: ArrayLike, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``(X - mean) @ components.T`` without centring a sparse ``X``."""
    loadings = np.ascontiguousarray(components.T)
    product = sparse_dense_product(sparse.csr_matrix(X), loadings) if sparse.issparse(X) else np.asarray(X @ loadings)
    return product - mean @ loadings


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


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _rank_sweep_losses(
    offset, coefs, loadings, ranks, target, flat, n, rows, weights, inv_step, out
):  # pragma: no cover
    """Score every rank of ``ranks`` for a block of cells in one parallel region.

    Each cell's prediction is built up component by component in float32 (the same
    multiply-adds, in the same order, as :func:`_add_product`) and scored after each rank
    of the grid; nothing cells × genes is stored. No ``nnan``/``ninf`` fastmath: a
    non-finite prediction must give a NaN loss (see :mod:`sc_noise2self._loss`).
    """
    n_genes = loadings.shape[1]
    for c in numba.prange(coefs.shape[0]):
        pred = offset.copy()
        done = 0
        for v in range(ranks.size):
            for j in range(done, ranks[v]):
                coef = coefs[c, j]
                for g in range(n_genes):
                    pred[g] += coef * loadings[j, g]
            done = ranks[v]
            out[c, v] = squared_error_row(pred, target[c], flat, n, rows[c], weights[c], inv_step)


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _grouped_rank_errors(offsets, coefs, loadings, groups, ranks, target, out):  # pragma: no cover - compiled
    """Write each cell's summed squared error against ``target`` at every rank of ``ranks`` (its group's fit).

    One parallel region per block of cells for the whole grid (the gene partition's
    counterpart of :func:`_rank_sweep_losses`, on the data's own scale: no conversion).
    """
    n_genes = offsets.shape[1]
    for c in numba.prange(coefs.shape[0]):
        group = groups[c]
        pred = offsets[group].copy()
        done = 0
        for v in range(ranks.size):
            for j in range(done, ranks[v]):
                coef = coefs[c, j]
                for g in range(n_genes):
                    pred[g] += coef * loadings[group, j, g]
            done = ranks[v]
            acc = 0.0
            for g in range(n_genes):
                d = pred[g] - target[c, g]
                acc += d * d
            out[c, v] = acc


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

    def block_losses(self, rows: slice, scorer: RowScorer) -> np.ndarray:
        """Per-cell MSE of cells ``rows`` at every rank (cells × ranks), in one parallel region."""
        coefs = np.ascontiguousarray(self.coefs(rows), dtype=np.float32)
        out = np.empty((coefs.shape[0], len(self.grid)))
        _rank_sweep_losses(
            self.offset.astype(np.float32),
            coefs,
            self.loadings,
            np.asarray(self.grid, dtype=np.int64),
            *scorer,  # target, table, row length, rows, weights, inverse step
            out,
        )
        return out


class PCA:
    """Denoise by keeping the top ``n_comps`` principal components of the transformed data.

    One truncated SVD at the largest grid value serves the whole grid: the prediction at
    rank ``k`` is the one at the previous grid value plus the next components, added
    block by block over cells.

    Parameters
    ----------
    solver
        ``"covariance"``: eigenvectors of the genes × genes centred Gram matrix,
        accumulated over blocks of cells (exact, one pass; the route for dask input).
        ``"randomized"``: randomised subspace iteration with implicit centring (for many
        genes). ``"auto"``: covariance up to 4,096 genes, randomised above.
    n_oversamples
        Extra random directions of the randomised SVD.
    n_iter
        Power iterations of the randomised SVD; more is more accurate for the trailing
        components.
    random_state
        Seed of the randomised SVD's test matrix (anything :func:`numpy.random.default_rng` takes).
    """

    def __init__(
        self,
        *,
        solver: Literal["auto", "covariance", "randomized"] = "auto",
        n_oversamples: int = 20,
        n_iter: int = 7,
        random_state: object = 0,
    ) -> None:
        self.solver = solver
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.random_state = random_state

    def __repr__(self) -> str:
        return (
            f"PCA(solver={self.solver!r}, n_oversamples={self.n_oversamples}, n_iter={self.n_iter}, "
            f"random_state={self.random_state!r})"
        )

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("n_comps",)

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Every rank to 20, then steps of 2 to 40 and of 5 to 100, capped by the data size."""
        grid = np.r_[np.arange(1, 21), np.arange(22, 41, 2), np.arange(45, 101, 5)]
        return grid[grid <= min(shape) - 1]

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range (called before any work)."""
        if self.solver not in {"auto", "covariance", "randomized"}:
            msg = f"solver must be 'auto', 'covariance' or 'randomized', got {self.solver!r}."
            raise ValueError(msg)
        check_non_negative_int(self.n_oversamples, "n_oversamples")
        check_non_negative_int(self.n_iter, "n_iter")

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Sorted unique ranks from 1 to ``min(n_cells, n_genes) - 1``."""
        self.check_params()
        return check_int_grid(grid, low=1, high=min(shape) - 1, name="n_comps")

    def uses_covariance(self, n_genes: int) -> bool:
        """Whether data with ``n_genes`` genes go through the covariance route."""
        self.check_params()
        return self.solver == "covariance" or (self.solver == "auto" and n_genes <= AUTO_MAX_GENES)

    def _svd(self, X: ArrayLike, n_comps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean, scores (``U S``), singular values and components of the centred ``X``."""
        if self.uses_covariance(X.shape[1]):
            stats = gram_stats(X)
            s, vt = covariance_svd(stats, n_comps)
            return stats.mean, centred_scores(X, stats.mean, vt), s, vt
        rng = np.random.default_rng(self.random_state)
        mean, u, s, vt = centered_truncated_svd(
            X, n_comps, n_oversamples=self.n_oversamples, n_iter=self.n_iter, rng=rng
        )
        return mean, u * s, s, vt

    def embed(self, X: ArrayLike, n_comps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gene means, scores (``U S``, cells × ``n_comps``) and components of the centred ``X``."""
        mean, scores, _, vt = self._svd(_as_float(X), n_comps)
        return mean, scores, vt

    def fit(self, X: ArrayLike, grid: np.ndarray) -> Self:
        """Fit one truncated SVD at ``max(grid)`` on (normalised) data ``X``."""
        self.grid_ = np.sort(np.asarray(grid, dtype=np.int64))
        self.mean_, self.scores_, self.singular_values_, self.components_ = self._svd(_as_float(X), int(self.grid_[-1]))
        self._gram_cache = None
        return self

    def sweep_blocks(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        """Predictions for cells ``rows`` at every rank of the grid, updated in place."""
        return self._ranks().sweep_blocks(rows)

    def block_losses(self, rows: slice, scorer: RowScorer) -> np.ndarray:
        """Per-cell MSE of cells ``rows`` at every rank of the grid, predicted and scored in one pass."""
        return self._ranks().block_losses(rows, scorer)

    def _ranks(self) -> _RankSweep:
        return _RankSweep(self.grid_, self.mean_, lambda r: self.scores_[r], self.components_)

    def predict(self, rows: slice, value: int) -> np.ndarray:
        """``mean + scores[:, :k] @ components[:k]`` for cells ``rows`` (float32, from float32 factors)."""
        return low_rank_rows(self.mean_, self.scores_[rows, :value], self.components_[:value])

    def factors(self, value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, the first ``k`` scores and components: the rank-``k`` output, factored."""
        return self.mean_, self.scores_[:, :value], self.components_[:value]

    # Blockwise fitting (dask or backed input): statistics per block of cells, merged, then
    # each block predicted from its own rows. Equal to ``fit`` with solver="covariance".

    def block_stats(self, X: ArrayLike) -> GramStats:
        """Statistics of one block of cells of the (normalised) data, to be merged."""
        return gram_stats(_as_float(X))

    def merge_stats(self, a: GramStats, b: GramStats) -> GramStats:
        """Statistics of two blocks of cells together."""
        return merge_gram_stats(a, b)

    def fit_stats(self, stats: GramStats, grid: np.ndarray) -> Self:
        """Fit from the merged statistics of every block (no scores are kept)."""
        self.grid_ = np.sort(np.asarray(grid, dtype=np.int64))
        self.singular_values_, self.components_ = covariance_svd(stats, int(self.grid_[-1]))
        self.mean_ = stats.mean
        return self

    def sweep_rows(self, X: ArrayLike, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        """Like :meth:`sweep_blocks`, for a block of cells given by its own (normalised) rows."""
        scores = centred_scores(_as_float(X), self.mean_, self.components_)
        return _RankSweep(self.grid_, self.mean_, lambda r: scores[r], self.components_).sweep_blocks(slice(None))

    def row_scores(self, X: ArrayLike, value: int) -> np.ndarray:
        """Scores of a block of cells on the first ``value`` components, from its own rows."""
        return centred_scores(_as_float(X), self.mean_, self.components_[:value])

    def loadings(self, value: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and the first ``value`` components: output = mean + scores @ components."""
        return self.mean_, self.components_[:value]

    def held_out_genes(
        self, X: ArrayLike, genes: np.ndarray, cell_groups: np.ndarray, grid: np.ndarray
    ) -> _GroupedRankSweep:
        """Predict genes ``genes`` from the other genes' top ``k`` components, cross-fitted over cell groups.

        The components come from the other genes only (one SVD at ``max(grid)``; on the
        covariance route, one eigenproblem of the other genes' block of a Gram matrix
        computed once for every gene group of ``X``). For each cell group, the held-out
        genes are regressed on those components over the cells of the *other* groups and
        read off for the group's cells, so no prediction uses a cell's own held-out values.
        """
        grid = np.sort(np.asarray(grid, dtype=np.int64))
        scores = self.other_genes_scores(X, genes, int(grid[-1]))
        target = _as_float(X)[:, genes]
        target = target.toarray() if sparse.issparse(target) else target
        coefs, offsets, loadings = _cross_fitted_regression(scores, target, cell_groups)
        return _GroupedRankSweep(grid, cell_groups, coefs, offsets, loadings)

    def other_genes_scores(self, X: ArrayLike, genes: np.ndarray, n_comps: int) -> np.ndarray:
        """Scores (``U S``) of the top ``n_comps`` components of the genes other than ``genes``.

        Equal to ``embed(X[:, ~genes], n_comps)[1]``. On the covariance route the other genes'
        block of one Gram matrix of ``X`` is used, computed once for all the gene groups of a
        calibration: the components are padded with zeros on ``genes``, whose values then add
        exact zeros to the scores, so they never reach them.
        """
        source, X = X, _as_float(X)
        others = ~np.asarray(genes, dtype=bool)
        if not self.uses_covariance(int(others.sum())):
            return self._svd(X[:, others], n_comps)[1]
        stats = self._gram_of(source, X)
        _, vt = covariance_svd(GramStats(stats.n, stats.mean[others], stats.m2[np.ix_(others, others)]), n_comps)
        padded = np.zeros((n_comps, X.shape[1]))
        padded[:, others] = vt
        return centred_scores(X, stats.mean, padded)

    def __getstate__(self) -> dict:
        """Pickle without the gene groups' Gram matrix (a cache holding a weak reference)."""
        return {key: value for key, value in self.__dict__.items() if key != "_gram_cache"}

    def _gram_of(self, source: ArrayLike, X: ArrayLike) -> GramStats:
        """:func:`gram_stats` of ``X`` (``source`` as float), computed once for the gene groups of a calibration.

        Kept while ``source`` is the same object with the same values (its sum, a cheap
        check against changes in place); :meth:`fit` drops it.
        """
        key = (X.shape, float(X.sum()))
        cached = getattr(self, "_gram_cache", None)
        if cached is None or cached[0]() is not source or cached[1] != key:
            self._gram_cache = (weakref.ref(source), key, gram_stats(X))
        return self._gram_cache[2]


def _cross_fitted_regression(
    scores: np.ndarray, target: np.ndarray, cell_groups: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Regress ``target`` on the first ``k`` columns of ``scores`` for every ``k``, leaving out each cell group.

    Returns the coefficients of each cell in the orthonormalised basis of the other groups'
    centred scores ``Z - z̄ = Q R``, and per group the offset ``ȳ`` and loadings ``Qᵀ (Y - ȳ)``:
    rank ``k`` is ``ȳ + coefs[:, :k] @ loadings[:k]``, one term more than rank ``k - 1``
    (``R`` is triangular). ``R`` is the Cholesky factor of the centred Gram matrix of the
    other groups, assembled from per-group sums (in a fixed order, never as a total minus
    the group, so a group's own values cannot reach its coefficients even by rounding);
    columns are scaled to unit norm first, which the predictions do not depend on.
    """
    norms = np.sqrt(np.einsum("ij,ij->j", scores, scores))
    Z = scores / np.where(norms > 0, norms, 1.0)
    n_groups = int(cell_groups.max()) + 1
    members = [np.flatnonzero(cell_groups == g) for g in range(n_groups)]
    sums = [
        (idx.size, Z[idx].sum(axis=0), target[idx].sum(axis=0), Z[idx].T @ Z[idx], Z[idx].T @ target[idx])
        for idx in members
    ]
    coefs = np.empty_like(Z)
    offsets, loadings = [], []
    for g, inside in enumerate(members):
        n, z_sum, y_sum, zz, zy = (sum(parts[1:], parts[0]) for parts in zip(*(sums[:g] + sums[g + 1 :]), strict=True))
        z_mean, y_mean = z_sum / n, y_sum / n
        try:
            r = linalg.cholesky(zz - n * np.outer(z_mean, z_mean), lower=False)
        except linalg.LinAlgError:  # rank-deficient components (tiny data): QR of the rows themselves
            rest = np.concatenate([m for h, m in enumerate(members) if h != g])
            r = linalg.qr(Z[rest] - z_mean, mode="economic")[1]
        coefs[inside] = linalg.solve_triangular(r, (Z[inside] - z_mean).T, trans="T", lower=False).T
        offsets.append(y_mean)
        loadings.append(linalg.solve_triangular(r, zy - n * np.outer(z_mean, y_mean), trans="T", lower=False))
    return coefs, offsets, loadings


def _cross_fitted_prediction(scores: np.ndarray, target: np.ndarray, cell_groups: np.ndarray) -> np.ndarray:
    """Each cell's ``target`` regressed on all columns of ``scores``, learnt from the other cell groups.

    The highest rank of :func:`_cross_fitted_regression`, for every cell at once.
    """
    coefs, offsets, loadings = _cross_fitted_regression(scores, target, cell_groups)
    out = np.empty(target.shape)
    for c, (offset, load) in enumerate(zip(offsets, loadings, strict=True)):
        inside = cell_groups == c
        out[inside] = offset + coefs[inside] @ load
    return out


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
        self.offsets, self.loadings = np.stack(offsets), np.ascontiguousarray(np.stack(loadings))

    def block_errors(self, rows: slice, target: np.ndarray) -> np.ndarray:
        """Per-cell squared error of cells ``rows`` against their dense ``target`` at every rank, in one pass."""
        out = np.empty((target.shape[0], len(self.grid)))
        _grouped_rank_errors(
            self.offsets,
            np.ascontiguousarray(self.coefs[rows]),
            self.loadings,
            np.ascontiguousarray(self.cell_groups[rows], dtype=np.int64),
            self.grid,
            np.ascontiguousarray(target, dtype=np.float64),
            out,
        )
        return out

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
