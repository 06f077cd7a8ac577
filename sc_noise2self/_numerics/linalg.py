"""Principal components of transformed counts: sparse-aware, in blocks of cells, the same bytes whatever the threads.

- :func:`centered_truncated_svd`: randomised subspace iteration with implicit centring (many genes);
- :func:`gram_randomized_svd`: the same iteration on the centred Gram matrix, one pass over blocks
  of cells per iteration, never forming it (many genes, data read in blocks);
- :func:`gram_stats` / :func:`merge_gram_stats` / :func:`covariance_svd`: the genes × genes centred
  Gram matrix accumulated over blocks of cells and merged (Chan, Golub & LeVeque), then one
  eigenproblem (exact; the route for data read in blocks);
- :func:`centred_scores`: a block's scores on given components, each row on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numba
import numpy as np
from scipy import linalg, sparse

from .machine import blas_threads
from .rows import sparse_dense_product

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._types import ArrayLike

__all__ = [
    "GramStats",
    "as_float",
    "centered_truncated_svd",
    "centred_scores",
    "covariance_svd",
    "fix_signs",
    "gram_randomized_svd",
    "gram_stats",
    "merge_gram_stats",
]

_GRAM_ELEMENTS = 2**22  # cells per dense block × genes when accumulating the Gram matrix (32 MiB)
_DENSE_SHARE = 0.1  # sparse input: genes detected in more of the cells than this share are multiplied dense


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
    signs = fix_signs(vt)
    return mean, u * signs, s, vt * signs[:, None]


def fix_signs(vt: np.ndarray) -> np.ndarray:
    """Sign of each component so that its largest loading is positive (reproducible output)."""
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return signs


class GramStats(NamedTuple):
    """Cell count, gene means and centred Gram matrix (genes × genes) of a block of cells."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


@numba.njit(parallel=True, cache=True)
def _add_sparse_gram(indptr, indices, data, t_indptr, t_indices, t_data, out):  # pragma: no cover - compiled
    # out += Aᵀ A for CSR A (and its transpose t), one row of out per thread: row i adds, cell by
    # cell in order, A[c, i] times row c of A. No fastmath: the same bytes whatever the threads,
    # and exactly symmetric (out[j, i] multiplies the same pairs in the same order).
    for i in numba.prange(out.shape[0]):
        row = out[i]
        for q in range(t_indptr[i], t_indptr[i + 1]):
            weight, c = t_data[q], t_indices[q]
            for p in range(indptr[c], indptr[c + 1]):
                row[indices[p]] += weight * data[p]


@numba.njit(parallel=True, cache=True)
def _add_sparse_dense_gram(t_indptr, t_indices, t_data, dense, out):  # pragma: no cover - compiled
    # out += Aᵀ D for A given by its transpose t (CSR) and dense D with the same rows, a row of out per thread.
    for j in numba.prange(out.shape[0]):
        row = out[j]
        for q in range(t_indptr[j], t_indptr[j + 1]):
            weight, source = t_data[q], dense[t_indices[q]]
            for d in range(row.size):
                row[d] += weight * source[d]


def gram_stats(X: ArrayLike) -> GramStats:
    """Centred second moments of the rows of ``X``: see :func:`_sparse_gram_stats` for sparse ``X``.

    Dense ``X`` goes a block of cells at a time, each block centred on its own mean.
    """
    if sparse.issparse(X):
        return _sparse_gram_stats(sparse.csr_matrix(X, dtype=np.float64))
    n_cells, n_genes = X.shape
    step = max(1, _GRAM_ELEMENTS // n_genes)
    total = GramStats(0, np.zeros(n_genes), np.zeros((n_genes, n_genes)))
    for start in range(0, n_cells, step):
        block = X[start : start + step]
        block = np.array(block, dtype=np.float64)
        mean = block.mean(axis=0)
        block -= mean
        total = merge_gram_stats(total, GramStats(block.shape[0], mean, block.T @ block))
    return total


def _sparse_gram_stats(X: sparse.csr_matrix) -> GramStats:
    """:func:`gram_stats` of sparse ``X`` without densifying all of it.

    Genes detected in more than :data:`_DENSE_SHARE` of the cells are taken dense, a block of
    cells at a time, and multiplied by BLAS; the products that involve the other genes add
    only their stored entries (compiled kernels), which on shallow data is most of the
    matrix at a fraction of the cost. The Gram matrix of the raw values is centred at the
    end, ``Xᵀ X - n x̄ x̄ᵀ``, in float64 (a relative error of about ``ε x̄² / var``: negligible
    on transformed counts).
    """
    n_cells, n_genes = X.shape
    dense = np.bincount(X.indices, minlength=n_genes) > _DENSE_SHARE * n_cells
    d_genes, s_genes = np.flatnonzero(dense), np.flatnonzero(~dense)
    dd, sd, ss = np.zeros((d_genes.size,) * 2), np.zeros((s_genes.size, d_genes.size)), np.zeros((s_genes.size,) * 2)
    starts = range(0, n_cells, max(1, _GRAM_ELEMENTS // max(1, d_genes.size)))
    step = starts.step
    for start in starts:  # the compiled products, then BLAS's: their threads never wait on each other
        block = X[start : start + step]
        rest = block[:, s_genes].tocsr()
        rest_t = rest.T.tocsr()
        _add_sparse_dense_gram(rest_t.indptr, rest_t.indices, rest_t.data, block[:, d_genes].toarray(), sd)
        _add_sparse_gram(rest.indptr, rest.indices, rest.data, rest_t.indptr, rest_t.indices, rest_t.data, ss)
    for start in starts:
        block = X[start : start + step][:, d_genes].toarray()
        dd += block.T @ block
    gram = np.empty((n_genes, n_genes))
    gram[np.ix_(d_genes, d_genes)], gram[np.ix_(s_genes, s_genes)] = dd, ss
    gram[np.ix_(s_genes, d_genes)], gram[np.ix_(d_genes, s_genes)] = sd, sd.T
    mean = np.asarray(X.sum(axis=0), dtype=np.float64).ravel() / max(n_cells, 1)
    return GramStats(n_cells, mean, gram - n_cells * np.outer(mean, mean))


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
    return s, vt * fix_signs(vt)[:, None]


def gram_times(values: ArrayLike, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column sums of ``values`` and ``valuesᵀ (values q)``: a block's share of a :func:`gram_randomized_svd` pass."""
    values = as_float(values)
    if sparse.issparse(values):
        product = sparse_dense_product(values.T.tocsr(), sparse_dense_product(values, q))
    else:
        product = values.T @ (values @ q)
    return np.asarray(values.sum(axis=0)).ravel(), product


def gram_randomized_svd(
    reduce: Callable[[Callable[[ArrayLike], Any], Callable[[Any, Any], Any]], Any],
    shape: tuple[int, int],
    n_comps: int,
    *,
    n_oversamples: int,
    n_iter: int,
    rng: np.random.Generator,
    terms: Callable[[ArrayLike, np.ndarray], tuple[np.ndarray, np.ndarray]] = gram_times,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``n_comps`` singular values and components of the centred data, read in blocks of cells.

    Randomised subspace iteration (Halko, Martinsson & Tropp 2011) on the centred Gram matrix
    ``G = (X - 1 m^T)^T (X - 1 m^T) = X^T X - n m m^T``, applied to a genes × width basis
    ``Q`` as the sum over blocks of ``X_b^T (X_b Q)`` and a rank-one correction after the merge:
    one pass over the cells per iteration and genes × width numbers in memory, where the
    covariance route holds genes × genes. The first pass also gives the means; the last,
    ``Q^T G Q``, whose eigenvectors rotate ``Q`` onto the components. ``reduce(fn, merge)``
    maps ``fn`` over the blocks of values (cells × genes, sparse or dense) and merges the
    results; ``shape`` is the whole data's; ``terms``: a block's share of a pass
    (:func:`gram_times`, or its counterpart on a device). Signs are fixed as in :func:`covariance_svd`.

    Returns
    -------
    mean, s, Vt
        Gene means (genes,), singular values (k,), components (k × genes).
    """
    n_cells, n_genes = shape
    width = min(n_comps + n_oversamples, n_cells, n_genes)

    def pass_over(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums, product = reduce(lambda values: terms(values, q), lambda a, b: (a[0] + b[0], a[1] + b[1]))
        mean = sums / n_cells
        return mean, product - n_cells * np.outer(mean, mean @ q)

    with blas_threads(1):  # the small QRs and eigenproblem: the same bytes whatever the threads
        mean, gq = pass_over(rng.standard_normal((n_genes, width)))
        for _ in range(n_iter):
            q, _ = linalg.qr(gq, mode="economic")
            gq = pass_over(q)[1]
        q, _ = linalg.qr(gq, mode="economic")
        gq = pass_over(q)[1]
        small = q.T @ gq
        values, vectors = linalg.eigh((small + small.T) / 2, subset_by_index=[width - n_comps, width - 1])
    s = np.sqrt(np.clip(values[::-1], 0.0, None))
    vt = (q @ vectors[:, ::-1]).T
    return mean, s, vt * fix_signs(vt)[:, None]


def centred_scores(X: ArrayLike, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``(X - mean) @ components.T`` without centring a sparse ``X``."""
    loadings = np.ascontiguousarray(components.T)
    product = sparse_dense_product(sparse.csr_matrix(X), loadings) if sparse.issparse(X) else np.asarray(X @ loadings)
    return product - mean @ loadings


def as_float(X: ArrayLike) -> ArrayLike:
    """``X`` as float64, sparse (CSR) or dense as it came."""
    return sparse.csr_matrix(X, dtype=np.float64) if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
