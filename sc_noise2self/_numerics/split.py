"""Splitting each cell's molecules into independent halves (molecular cross-validation).

Under Poisson sampling, thinning ``x' ~ Bin(x, p)``, ``x'' = x - x'`` gives two
independent Poisson samples of the same cell with rates ``p λ`` and ``(1 - p) λ``.
The multinomial variant deals every molecule into one of ``k`` folds.

The draws are counter-based: the fate of the molecules at ``(cell, gene)`` depends only
on the seed and on that position, through a hash (SplitMix64's finaliser) of
``(seed, cell × n_genes + gene, draw)``. So one seed gives the same bytes whatever the
array type (CSR, CSC, dense), dtype or chunking of the input: a block of cells split on
its own (``row_offset``) equals the same rows of the whole matrix split at once, which
is what lets dask split blockwise. Each entry is one exact binomial draw by inversion
of its CDF (one uniform per 512 molecules).

Every random step draws from its own :class:`Stream`. Splitting a part again with the
same uniforms would be degenerate: a molecule kept by the first split is kept again far
more often than ``p`` of the time, so the held-out part of the second split is not an
independent sample. With separate streams, ``pp.denoise(train, random_state=0)`` on the
training part of ``pp.split_counts(adata, random_state=0)`` draws afresh.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np
from scipy import sparse

from .checks import check_seed

if TYPE_CHECKING:
    from .._types import ArrayLike, RandomState

__all__ = [
    "CountSplit",
    "Stream",
    "beta_binomial_split",
    "binomial_split",
    "multinomial_folds",
    "seed_sequence",
    "split_seed",
]


class Stream(IntEnum):
    """What a random step is for: the first element of its key, so no two steps share draws."""

    MCV = 0
    """The calibration's binomial splits."""
    FOLDS = 1
    """:func:`sc_noise2self.pp.split_counts`, multinomial folds."""
    METHOD = 2
    """The seed handed to a denoiser made from its name."""
    GENE_GROUPS = 3
    """Noise2Self gene partition."""
    CELL_GROUPS = 4
    """Noise2Self cell groups."""
    SPLIT = 5
    """:func:`sc_noise2self.pp.split_counts`, binomial splits."""
    DISPERSION = 6
    """The cells and the fit of the sampling-dispersion check (``sc_noise2self._dispersion``)."""
    SCORED = 7
    """The groups of cells an MCV sweep is scored on, when not all of them."""


class CountSplit(NamedTuple):
    """One molecular split: ``train + test`` equals the input exactly."""

    train: ArrayLike
    test: ArrayLike
    fraction: float
    """Expected share of each cell's molecules in ``train``."""
    dispersion: float = 1.0
    """Variance-to-mean ratio the split assumed: 1 for binomial thinning (Poisson molecules)."""


def seed_sequence(random_state: RandomState, *key: int) -> np.random.SeedSequence:
    """Return a child seed for one random step, independent of how many siblings are drawn.

    ``key`` names the step (e.g. ``(0, i)`` for split ``i``) so that adding a split
    never changes the earlier ones.
    """
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(2**63))
    if isinstance(random_state, np.random.BitGenerator | np.random.SeedSequence):  # as numpy's default_rng takes
        random_state = int(np.random.default_rng(random_state).integers(2**63))
    check_seed(random_state)
    entropy = None if random_state is None else int(random_state)
    return np.random.SeedSequence(entropy, spawn_key=tuple(int(k) for k in key))


def split_seed(random_state: RandomState, *key: int) -> int:
    """Return a 64-bit key for the counter-based draws of one random step (see :func:`seed_sequence`)."""
    return int(seed_sequence(random_state, *key).generate_state(1, np.uint64)[0])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 512  # molecules per uniform; (1 - q) ** 512 stays far from underflow for q <= 1/2
_LARGE = 2**20  # molecules in one entry above which the draw is numpy's BTPE, keyed by position


@numba.njit(inline="always")
def _mix(z: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _uniform(key: np.uint64, draw: int) -> float:  # pragma: no cover - compiled
    """Return the ``draw``-th uniform in [0, 1) of the entry with ``key``."""
    return np.float64(_mix(key + np.uint64(draw) * _GOLDEN) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _invert(u: float, m: int, pmf: float, ratio: float) -> int:  # pragma: no cover - compiled
    """Smallest ``j`` with ``P(K <= j) >= u`` for ``K ~ Bin(m, q)``; ``pmf = (1 - q)^m``, ``ratio = q / (1 - q)``."""
    cdf, j = pmf, 0
    while u > cdf and j < m:
        pmf *= (m - j) / (j + 1.0) * ratio
        j += 1
        cdf += pmf
    return j


@numba.njit(parallel=True, cache=True)
def _binomial_kernel(  # pragma: no cover - compiled
    indptr: np.ndarray,
    indices: np.ndarray,
    n: np.ndarray,
    q: float,
    seed: np.uint64,
    row_offset: int,
    n_genes: int,
    out: np.ndarray,
) -> None:
    """``out[i] ~ Bin(n[i], q)`` for each stored entry, keyed by its (global row, column).

    Inversion of the CDF from 0, in chunks of at most ``_CHUNK`` molecules (a sum of
    binomials with the same ``q`` is binomial), one uniform per chunk.
    """
    ratio = q / (1.0 - q)
    first = np.empty(_CHUNK + 1)  # P(K = 0) for m molecules
    for m in range(_CHUNK + 1):
        first[m] = (1.0 - q) ** m
    for r in numba.prange(indptr.size - 1):
        base = np.uint64(row_offset + r) * np.uint64(n_genes)
        for i in range(indptr[r], indptr[r + 1]):
            key = _mix(seed ^ _mix(base + np.uint64(indices[i])))
            left, k, draw = n[i], 0, 0
            while left > 0:
                m = min(left, _CHUNK)
                draw += 1
                k += _invert(_uniform(key, draw), m, first[m], ratio)
                left -= m
            out[i] = k


_BETA_KEY = np.uint64(0xD1B54A32D192ED03)  # the Beta draws' own sequence of an entry's uniforms


@numba.njit(inline="always")
def _log_gamma_variate(shape: float, key: np.uint64, draw: int) -> tuple[float, int]:  # pragma: no cover
    """``log G`` for ``G ~ Gamma(shape, 1)`` from the uniforms after ``draw`` (Marsaglia & Tsang, 2000).

    Shapes below 1 use ``G(a) = G(a + 1) U^(1/a)`` in logs, so tiny shapes give very negative
    logs instead of underflowing to 0. Returns the log and the last uniform used.
    """
    boost = 0.0
    if shape < 1.0:
        draw += 1
        boost = np.log(max(_uniform(key, draw), 1e-300)) / shape
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    while True:
        draw += 3
        u1 = max(_uniform(key, draw - 2), 1e-300)
        x = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * _uniform(key, draw - 1))  # Box-Muller
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        if np.log(max(_uniform(key, draw), 1e-300)) < 0.5 * x * x + d - d * v + d * np.log(v):
            return np.log(d) + np.log(v) + boost, draw


@numba.njit(parallel=True, cache=True)
def _beta_binomial_kernel(  # pragma: no cover - compiled
    indptr: np.ndarray,
    indices: np.ndarray,
    n: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    seed: np.uint64,
    row_offset: int,
    n_genes: int,
    out: np.ndarray,
    share: np.ndarray,
) -> None:
    """``out[i] ~ Bin(n[i], P)``, ``P ~ Beta(a[i], b[i])`` for each stored entry, keyed by its position.

    ``P`` (kept in ``share``) from two gamma variates, then the binomial by inversion as in
    :func:`_binomial_kernel`, of ``min(P, 1 - P)`` (``out`` holds that draw: the caller
    flips the entries with ``P > 1/2``).
    """
    for r in numba.prange(indptr.size - 1):
        base = np.uint64(row_offset + r) * np.uint64(n_genes)
        for i in range(indptr[r], indptr[r + 1]):
            key = _mix(seed ^ _mix(base + np.uint64(indices[i])))
            log_a, draw = _log_gamma_variate(a[i], key ^ _BETA_KEY, 0)
            log_b, draw = _log_gamma_variate(b[i], key ^ _BETA_KEY, draw)
            p = 1.0 / (1.0 + np.exp(log_b - log_a))
            share[i] = p
            q = min(p, 1.0 - p)
            ratio = q / (1.0 - q)
            left, k, draw = n[i], 0, 0
            while left > 0:
                m = min(left, _CHUNK)
                draw += 1
                k += _invert(_uniform(key, draw), m, np.exp(m * np.log1p(-q)), ratio)
                left -= m
            out[i] = k


@numba.njit(cache=True)
def _entry_keys(rows: np.ndarray, columns: np.ndarray, seed: np.uint64, n_genes: int) -> np.ndarray:  # pragma: no cover
    """Return the key :func:`_binomial_kernel` gives the entry at each global (row, column)."""
    out = np.empty(rows.size, dtype=np.uint64)
    for i in range(rows.size):
        out[i] = _mix(seed ^ _mix(np.uint64(rows[i]) * np.uint64(n_genes) + np.uint64(columns[i])))
    return out


def _draw_large(
    X: sparse.csr_matrix, n: np.ndarray, q: float | np.ndarray, seed: int, row_offset: int, out: np.ndarray
) -> None:
    """``Bin(n, q)`` into ``out`` for the entries above :data:`_LARGE` molecules (``q`` scalar or per entry).

    Inversion would take ``n / 512`` uniforms: these use numpy's exact BTPE sampler from a
    Philox stream keyed by the entry's position, so time does not grow with the largest
    count and the draw stays counter-based.
    """
    large = np.flatnonzero(n > _LARGE)
    if not large.size:
        return
    rows = row_offset + np.searchsorted(X.indptr, large, side="right") - 1
    keys = _entry_keys(rows.astype(np.int64), X.indices[large].astype(np.int64), np.uint64(seed), X.shape[1])
    shares = np.broadcast_to(q, n.shape)[large]
    for i, key, share in zip(large, keys, shares, strict=True):
        out[i] = np.random.Generator(np.random.Philox(key=int(key))).binomial(int(n[i]), float(share))


def _binomial(X: sparse.csr_matrix, n: np.ndarray, p: float, seed: int, row_offset: int) -> np.ndarray:
    """``Bin(n, p)`` for the stored entries of canonical-CSR ``X`` (``n`` aligned with ``X.data``)."""
    q = min(p, 1.0 - p)
    out = np.empty(n.size, dtype=np.int64)
    small = np.where(n > _LARGE, 0, n) if n.size and n.max() > _LARGE else n  # the kernel draws nothing for those
    _binomial_kernel(X.indptr, X.indices, small, q, np.uint64(seed), row_offset, X.shape[1], out)
    _draw_large(X, n, q, seed, row_offset, out)
    return n - out if p > 0.5 else out


def _beta_binomial(
    X: sparse.csr_matrix, n: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int, row_offset: int
) -> np.ndarray:
    """``Bin(n, P)``, ``P ~ Beta(a, b)`` per stored entry of canonical-CSR ``X`` (all aligned with ``X.data``)."""
    out = np.empty(n.size, dtype=np.int64)
    share = np.empty(n.size)
    small = np.where(n > _LARGE, 0, n)
    a, b = (np.ascontiguousarray(v, dtype=np.float64) for v in (a, b))
    _beta_binomial_kernel(X.indptr, X.indices, small, a, b, np.uint64(seed), row_offset, X.shape[1], out, share)
    _draw_large(X, n, np.minimum(share, 1.0 - share), seed, row_offset, out)
    return np.where(share > 0.5, n - out, out)


@numba.njit(parallel=True, cache=True)
def _count_halves(indptr, n, train, train_nnz, test_nnz):  # pragma: no cover - compiled
    for r in numba.prange(indptr.size - 1):
        a, b = 0, 0
        for i in range(indptr[r], indptr[r + 1]):
            a += train[i] != 0
            b += n[i] != train[i]
        train_nnz[r], test_nnz[r] = a, b


@numba.njit(parallel=True, cache=True)
def _fill_halves(
    indptr, indices, n, train, train_ptr, test_ptr, train_idx, train_data, test_idx, test_data
):  # pragma: no cover
    for r in numba.prange(indptr.size - 1):
        a, b = train_ptr[r], test_ptr[r]
        for i in range(indptr[r], indptr[r + 1]):
            if train[i] != 0:
                train_idx[a], train_data[a] = indices[i], train[i]
                a += 1
            if n[i] != train[i]:
                test_idx[b], test_data[b] = indices[i], n[i] - train[i]
                b += 1


def _halves(X: sparse.csr_matrix, n: np.ndarray, train: np.ndarray) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Return the CSR halves ``train`` and ``n - train`` of ``X`` (stored ``n``), zeros left out, in its dtype."""
    n_rows = X.shape[0]
    train_nnz, test_nnz = np.empty(n_rows, dtype=np.int64), np.empty(n_rows, dtype=np.int64)
    _count_halves(X.indptr, n, train, train_nnz, test_nnz)
    halves = []
    for nnz in (train_nnz, test_nnz):
        indptr = np.zeros(n_rows + 1, dtype=X.indptr.dtype)
        np.cumsum(nnz, out=indptr[1:])
        halves.append((indptr, np.empty(int(indptr[-1]), dtype=X.indices.dtype), np.empty(int(indptr[-1]), X.dtype)))
    (train_ptr, train_idx, train_data), (test_ptr, test_idx, test_data) = halves
    _fill_halves(X.indptr, X.indices, n, train, train_ptr, test_ptr, train_idx, train_data, test_idx, test_data)
    return (
        sparse.csr_matrix((train_data, train_idx, train_ptr), shape=X.shape),
        sparse.csr_matrix((test_data, test_idx, test_ptr), shape=X.shape),
    )


def _with_data(X: sparse.csr_matrix, data: np.ndarray) -> sparse.csr_matrix:
    out = sparse.csr_matrix((data, X.indices.copy(), X.indptr.copy()), shape=X.shape)
    out.eliminate_zeros()
    return out


def binomial_split(
    X: sparse.csr_matrix, fraction: float, seed: int, *, row_offset: int = 0
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Thin canonical-CSR counts: ``train ~ Bin(X, fraction)``, ``test = X - train``.

    Works on the stored nonzeros only; the halves keep the input dtype. ``X`` may be a
    block of rows starting at row ``row_offset`` of a larger matrix: the draws are those
    of the same entries in the whole matrix.
    """
    n = X.data.astype(np.int64, copy=False)
    return _halves(X, n, _binomial(X, n, fraction, seed, row_offset))


def beta_binomial_split(
    X: sparse.csr_matrix, fraction: float, seed: int, size: np.ndarray, *, row_offset: int = 0
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Thin canonical-CSR counts with overdispersion: ``train ~ BetaBinomial(X, p r, (1 - p) r)``.

    ``size`` is the negative-binomial size ``r`` of each stored entry (aligned with
    ``X.data``): for ``X ~ NB(r, π)`` the halves are independent ``NB(p r, π)`` and
    ``NB((1 - p) r, π)`` (data thinning). Drawn like :func:`binomial_split`, keyed by position.
    """
    n = X.data.astype(np.int64, copy=False)
    size = np.asarray(size, dtype=np.float64)
    return _halves(X, n, _beta_binomial(X, n, fraction * size, (1.0 - fraction) * size, seed, row_offset))


def multinomial_folds(
    X: sparse.csr_matrix, n_folds: int, seeds: list[int], *, row_offset: int = 0, size: np.ndarray | None = None
) -> list[sparse.csr_matrix]:
    """Deal every molecule of canonical-CSR counts into one of ``n_folds`` equal-probability folds.

    ``seeds`` holds one key per fold but the last (see :func:`split_seed`). With ``size``
    (the negative-binomial size ``r`` of each stored entry), the deal is Dirichlet-multinomial
    with parameters ``r / n_folds``: the folds of ``NB(r, π)`` counts are independent ``NB(r / n_folds, π)``.
    """
    left = X.data.astype(np.int64)
    # Sequential binomials (beta-binomials) are the multinomial (Dirichlet-multinomial) draw,
    # without a (nnz × k) temporary.
    folds = []
    for j in range(n_folds - 1):
        if size is None:
            take = _binomial(X, left, 1.0 / (n_folds - j), seeds[j], row_offset)
        else:
            share = np.asarray(size, dtype=np.float64) / n_folds
            take = _beta_binomial(X, left, share, share * (n_folds - 1 - j), seeds[j], row_offset)
        left -= take
        folds.append(_with_data(X, take.astype(X.dtype, copy=False)))
    folds.append(_with_data(X, left.astype(X.dtype, copy=False)))
    return folds
