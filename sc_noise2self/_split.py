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
from typing import TYPE_CHECKING, Any, NamedTuple

import numba
import numpy as np
from scipy import sparse

from ._validate import as_canonical_csr, check_count_values, check_fraction, check_known_chunks, check_positive_int

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._types import ArrayLike, RandomState, SplitScheme

__all__ = [
    "CountSplit",
    "Stream",
    "binomial_split",
    "multinomial_folds",
    "seed_sequence",
    "split_array",
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


class CountSplit(NamedTuple):
    """One molecular split: ``train + test`` equals the input exactly."""

    train: ArrayLike
    test: ArrayLike
    fraction: float
    """Expected share of each cell's molecules in ``train``."""


def seed_sequence(random_state: RandomState, *key: int) -> np.random.SeedSequence:
    """Return a child seed for one random step, independent of how many siblings are drawn.

    ``key`` names the step (e.g. ``(0, i)`` for split ``i``) so that adding a split
    never changes the earlier ones.
    """
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(2**63))
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0
    ):
        msg = f"random_state must be a non-negative int, a numpy Generator or None, got {random_state!r}."
        raise ValueError(msg)
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
                u = np.float64(_mix(key + np.uint64(draw) * _GOLDEN) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
                pmf = first[m]
                cdf, j = pmf, 0
                while u > cdf and j < m:
                    pmf *= (m - j) / (j + 1.0) * ratio
                    j += 1
                    cdf += pmf
                k += j
                left -= m
            out[i] = k


@numba.njit(cache=True)
def _entry_keys(rows: np.ndarray, columns: np.ndarray, seed: np.uint64, n_genes: int) -> np.ndarray:  # pragma: no cover
    """Return the key :func:`_binomial_kernel` gives the entry at each global (row, column)."""
    out = np.empty(rows.size, dtype=np.uint64)
    for i in range(rows.size):
        out[i] = _mix(seed ^ _mix(np.uint64(rows[i]) * np.uint64(n_genes) + np.uint64(columns[i])))
    return out


def _binomial(X: sparse.csr_matrix, n: np.ndarray, p: float, seed: int, row_offset: int) -> np.ndarray:
    """``Bin(n, p)`` for the stored entries of canonical-CSR ``X`` (``n`` aligned with ``X.data``).

    Entries above :data:`_LARGE` molecules (inversion would take ``n / 512`` uniforms) are
    drawn by numpy's exact BTPE sampler from a Philox stream keyed by the entry's position,
    so time does not grow with the largest count and the draw stays counter-based.
    """
    q = min(p, 1.0 - p)
    large = np.flatnonzero(n > _LARGE)
    out = np.empty(n.size, dtype=np.int64)
    small = np.where(n > _LARGE, 0, n) if large.size else n  # the kernel draws nothing for the large ones
    _binomial_kernel(X.indptr, X.indices, small, q, np.uint64(seed), row_offset, X.shape[1], out)
    if large.size:
        rows = row_offset + np.searchsorted(X.indptr, large, side="right") - 1
        keys = _entry_keys(rows.astype(np.int64), X.indices[large].astype(np.int64), np.uint64(seed), X.shape[1])
        for i, key in zip(large, keys, strict=True):
            out[i] = np.random.Generator(np.random.Philox(key=int(key))).binomial(int(n[i]), q)
    return n - out if p > 0.5 else out


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
    train = _binomial(X, n, fraction, seed, row_offset)
    test = n - train
    return _with_data(X, train.astype(X.dtype, copy=False)), _with_data(X, test.astype(X.dtype, copy=False))


def multinomial_folds(
    X: sparse.csr_matrix, n_folds: int, seeds: list[int], *, row_offset: int = 0
) -> list[sparse.csr_matrix]:
    """Deal every molecule of canonical-CSR counts into one of ``n_folds`` equal-probability folds.

    ``seeds`` holds one key per fold but the last (see :func:`split_seed`).
    """
    left = X.data.astype(np.int64)
    # Sequential binomials are the multinomial draw, without a (nnz × k) temporary.
    folds = []
    for j in range(n_folds - 1):
        take = _binomial(X, left, 1.0 / (n_folds - j), seeds[j], row_offset)
        left -= take
        folds.append(_with_data(X, take.astype(X.dtype, copy=False)))
    folds.append(_with_data(X, left.astype(X.dtype, copy=False)))
    return folds


def _like(template: ArrayLike, X: sparse.csr_matrix) -> ArrayLike:
    """Return ``X`` in the container type of ``template`` (dense, CSR, CSC; matrix or array API)."""
    if not sparse.issparse(template):
        return X.toarray()
    out = X.asformat(template.format) if template.format in {"csr", "csc"} else X
    if isinstance(template, sparse.sparray):
        out = sparse.csr_array(out) if out.format == "csr" else sparse.csc_array(out)
    return out


def _split_dask(X: Any, parts: Callable[[sparse.csr_matrix, int], list[sparse.csr_matrix]], n: int) -> list[Any]:
    """Lazy parts of a dask array of counts, block by block; ``parts(counts, row_offset)`` splits one block.

    The draws are keyed by (cell, gene), so the parts do not depend on the chunking.
    """
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})

    def part(block: ArrayLike, which: int, block_info: dict | None = None) -> ArrayLike:
        start = block_info[0]["array-location"][0][0]
        counts = as_canonical_csr(block)
        check_count_values(counts, what=f"The count matrix (cells {start}..{start + counts.shape[0] - 1})")
        return _like(block, parts(counts, start)[which])

    return [X.map_blocks(part, which, dtype=X.dtype, meta=X._meta) for which in range(n)]


def split_array(
    X: ArrayLike,
    *,
    split_fraction: float | None = None,
    n_splits: int = 1,
    scheme: SplitScheme = "binomial",
    random_state: RandomState = 0,
) -> list[CountSplit]:
    """Split raw counts into training and test molecules; see :func:`sc_noise2self.pp.split_counts`."""
    n_splits = check_positive_int(n_splits, "n_splits")
    lazy = type(X).__module__.split(".")[0] == "dask"
    check_known_chunks(X, "The count matrix")
    if lazy and len(X.shape) != 2:
        msg = f"Expected a 2-D cells × genes matrix, got an array of shape {X.shape}."
        raise ValueError(msg)
    counts = None if lazy else as_canonical_csr(X)
    if not lazy:
        check_count_values(counts, what="The count matrix")
    if scheme == "binomial":
        fraction = check_fraction(0.9 if split_fraction is None else split_fraction)
        splits = []
        for i in range(n_splits):
            seed = split_seed(random_state, Stream.SPLIT, i)
            if lazy:
                train, test = _split_dask(
                    X, lambda c, start, seed=seed: binomial_split(c, fraction, seed, row_offset=start), 2
                )
            else:
                train, test = (_like(X, half) for half in binomial_split(counts, fraction, seed))
            splits.append(CountSplit(train, test, fraction))
        return splits
    if scheme == "multinomial":
        if split_fraction is not None:
            msg = (
                "With scheme='multinomial' the training share is (k-1)/k for k = n_splits folds; "
                "leave split_fraction unset."
            )
            raise ValueError(msg)
        if n_splits < 2:
            msg = "scheme='multinomial' needs n_splits >= 2 folds."
            raise ValueError(msg)
        seeds = [split_seed(random_state, Stream.FOLDS, j) for j in range(n_splits - 1)]

        def folds_of(block: sparse.csr_matrix, start: int) -> list[sparse.csr_matrix]:
            folds = multinomial_folds(block, n_splits, seeds, row_offset=start)
            trains = []
            for fold in folds:
                train = block - fold
                train.eliminate_zeros()
                train.sort_indices()
                trains.append(train)
            return trains + folds

        parts = _split_dask(X, folds_of, 2 * n_splits) if lazy else [_like(X, p) for p in folds_of(counts, 0)]
        fraction = (n_splits - 1) / n_splits
        return [CountSplit(parts[j], parts[n_splits + j], fraction) for j in range(n_splits)]
    msg = f"scheme must be 'binomial' or 'multinomial', got {scheme!r}."
    raise ValueError(msg)
