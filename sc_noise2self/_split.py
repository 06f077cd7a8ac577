"""Splitting each cell's molecules into independent halves (molecular cross-validation).

Under Poisson sampling, thinning ``x' ~ Bin(x, p)``, ``x'' = x - x'`` gives two
independent Poisson samples of the same cell with rates ``p λ`` and ``(1 - p) λ``.
The multinomial variant deals every molecule into one of ``k`` folds.

Draws meet the nonzeros in row-major order of a canonical CSR matrix, so one seed
gives the same bytes whatever the array type (CSR, CSC, dense) or dtype of the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import sparse

from ._validate import as_canonical_csr, check_count_values, check_fraction, check_positive_int

if TYPE_CHECKING:
    from ._types import ArrayLike, RandomState, SplitScheme

__all__ = ["CountSplit", "binomial_split", "multinomial_folds", "seed_sequence", "split_array"]


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
    if random_state is not None and (not isinstance(random_state, int | np.integer) or random_state < 0):
        msg = f"random_state must be a non-negative int, a numpy Generator or None, got {random_state!r}."
        raise ValueError(msg)
    entropy = None if random_state is None else int(random_state)
    return np.random.SeedSequence(entropy, spawn_key=key)


def _with_data(X: sparse.csr_matrix, data: np.ndarray) -> sparse.csr_matrix:
    out = sparse.csr_matrix((data, X.indices.copy(), X.indptr.copy()), shape=X.shape)
    out.eliminate_zeros()
    return out


def binomial_split(
    X: sparse.csr_matrix, fraction: float, rng: np.random.Generator
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Thin canonical-CSR counts: ``train ~ Bin(X, fraction)``, ``test = X - train``.

    Works on the stored nonzeros only; the halves keep the input dtype.
    """
    n = X.data.astype(np.int64, copy=False)
    train = rng.binomial(n, fraction)
    test = n - train
    return _with_data(X, train.astype(X.dtype, copy=False)), _with_data(X, test.astype(X.dtype, copy=False))


def multinomial_folds(X: sparse.csr_matrix, n_folds: int, rng: np.random.Generator) -> list[sparse.csr_matrix]:
    """Deal every molecule of canonical-CSR counts into one of ``n_folds`` equal-probability folds."""
    n = X.data.astype(np.int64, copy=False)
    # Sequential binomials are the multinomial draw, without a (nnz × k) temporary.
    folds, left = [], n.copy()
    for j in range(n_folds - 1):
        take = rng.binomial(left, 1.0 / (n_folds - j))
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
    counts = as_canonical_csr(X)
    check_count_values(counts, what="The count matrix")
    if scheme == "binomial":
        fraction = check_fraction(0.9 if split_fraction is None else split_fraction)
        splits = []
        for i in range(n_splits):
            rng = np.random.default_rng(seed_sequence(random_state, 0, i))
            train, test = binomial_split(counts, fraction, rng)
            splits.append(CountSplit(_like(X, train), _like(X, test), fraction))
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
        rng = np.random.default_rng(seed_sequence(random_state, 1))
        folds = multinomial_folds(counts, n_splits, rng)
        splits = []
        for fold in folds:
            train = counts - fold
            train.eliminate_zeros()
            train.sort_indices()
            splits.append(CountSplit(_like(X, train), _like(X, fold), (n_splits - 1) / n_splits))
        return splits
    msg = f"scheme must be 'binomial' or 'multinomial', got {scheme!r}."
    raise ValueError(msg)
