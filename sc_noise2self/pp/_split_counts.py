"""``pp.split_counts``: each cell's molecules split into independent training and held-out parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy import sparse

from .._anndata import check_key, check_targets, commit, get_counts, writable
from .._engine import package_version, seed_record
from .._numerics.checks import (
    as_canonical_csr,
    check_count_values,
    check_flag,
    check_fraction,
    check_known_chunks,
    check_positive_int,
    check_sampling,
)
from .._numerics.dispersion import SplitPlan, plan_split, sample_cells
from .._numerics.machine import adapts_threads
from .._numerics.split import CountSplit, Stream, multinomial_folds, split_seed

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

    from .._types import ArrayLike, RandomState, Sampling, SplitScheme

__all__ = ["SplitOptions", "split_array", "split_counts"]


@adapts_threads
def split_counts(
    data: AnnData | ArrayLike,
    *,
    layer: str | None = None,
    split_fraction: float | None = None,
    n_splits: int = 1,
    scheme: SplitScheme = "binomial",
    sampling: Sampling = "poisson",
    dispersion: float | None = None,
    random_state: RandomState = 0,
    key_added: str = "split",
    overwrite: bool = False,
    copy: bool = False,
) -> AnnData | list[CountSplit] | None:
    """Split raw counts into independent training and held-out molecules.

    ``"binomial"`` thinning draws ``x' ~ Bin(x, split_fraction)`` and ``x'' = x - x'``
    for every entry; ``n_splits`` independent repeats. ``"multinomial"`` deals every
    molecule into one of ``n_splits`` folds and returns, per fold, the other folds as
    training and the fold as held-out (k-fold). Under Poisson sampling both halves are
    independent samples of the same cells. With ``sampling="negative_binomial"`` (read
    counts) the thinning is beta-binomial and the deal Dirichlet-multinomial, so counts
    whose variance is ``dispersion`` times their mean split into uncorrelated parts. Only
    stored nonzeros are touched, so sparse input stays sparse; one seed gives the same
    bytes for CSR, CSC and dense input, and for any chunking of a dask array.

    Parameters
    ----------
    data
        Raw counts: an AnnData or a matrix (dense, CSR or CSC; integer or float dtype
        holding integers).
    layer
        For AnnData, the layer holding raw counts; ``adata.X`` when None.
    split_fraction
        Expected training share for ``"binomial"`` (default 0.9). For ``"multinomial"``
        it is ``(k - 1) / k`` and must not be given.
    n_splits
        Number of repeats (binomial) or folds (multinomial).
    scheme
        ``"binomial"`` or ``"multinomial"``.
    sampling
        ``"poisson"`` (UMI counts) or ``"negative_binomial"`` (read counts without UMIs):
        see :func:`denoise`. Each entry's negative-binomial size is its expected count from
        a smooth fit of a seeded sample of cells, over ``dispersion - 1``.
    dispersion
        ``sampling="negative_binomial"``: the counts' variance over their mean given the
        cell; None estimates it.
    random_state
        Seed; split ``i`` does not depend on ``n_splits``. The draws are independent of
        those :func:`denoise` makes with the same seed, so a training part can be
        calibrated with any seed; to split a part again here, pass a different seed.
    key_added
        For AnnData, prefix of the layers written, and the ``uns`` entry that records the split.
    overwrite
        For AnnData, replace layers or an ``uns`` entry of those names that this package did
        not write (by default that is refused); never the layer being read.
    copy
        For AnnData, return a modified copy instead of writing to ``data``.

    Returns
    -------
    For a matrix, a list of :class:`~sc_noise2self.CountSplit`
    ``(train, test, fraction)`` in the input's format. For AnnData, None (or a copy with ``copy=True``)
    and sets ``layers[f"{key_added}_train"]`` and ``layers[f"{key_added}_test"]``
    (suffixed ``_0``, ``_1``, … when there are several splits), and ``uns[key_added]``
    (``scheme``, ``split_fraction``, ``n_splits``, ``sampling``, ``dispersion`` (the one the
    split assumed), ``random_state``, ``layer``, the layers written); all at once, or nothing
    when an error occurs.
    """
    from anndata import AnnData

    options = SplitOptions.from_arguments(locals())
    if not isinstance(data, AnnData):
        if layer is not None or copy or overwrite:
            msg = "layer, overwrite and copy are only meaningful for AnnData input."
            raise ValueError(msg)
        return split_array(data, options)
    key_added = check_key(key_added)
    check_flag(copy, "copy")
    counts = get_counts(data, layer)
    if data.isbacked:
        msg = (
            "pp.split_counts writes the halves as layers, which a backed AnnData cannot hold; load it with "
            "`adata.to_memory()`, or split a dask array of its counts (`anndata.experimental.read_elem_lazy`)."
        )
        raise ValueError(msg)
    n = options.n_splits
    suffixes = [""] if n == 1 else [f"_{i}" for i in range(n)]
    names = [f"{key_added}_{part}{suffix}" for suffix in suffixes for part in ("train", "test")]
    check_targets(data, key_added, {"layers": names}, function="split_counts", read_layer=layer, overwrite=overwrite)
    splits = split_array(counts, options)
    layers = {}
    for suffix, split in zip(suffixes, splits, strict=True):
        layers[f"{key_added}_train{suffix}"] = split.train
        layers[f"{key_added}_test{suffix}"] = split.test
    record = {
        "scheme": scheme,
        "split_fraction": splits[0].fraction,
        "n_splits": n,
        "sampling": sampling,
        "dispersion": splits[0].dispersion,
        "random_state": seed_record(random_state),
        "layer": layer,
        "version": package_version(),
    }
    adata = writable(data, copy)
    commit(adata, key_added, {"layers": layers}, record, function="split_counts")
    return adata if copy else None


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
        where = f"The count matrix (cells {start}..{start + counts.shape[0] - 1})"
        check_count_values(counts, what=where, calibrating=False)
        return _like(block, parts(counts, start)[which])

    return [X.map_blocks(part, which, dtype=X.dtype, meta=X._meta) for which in range(n)]


def _row_sums(counts: sparse.csr_matrix) -> np.ndarray:
    """Each cell's total count (all genes: a block holds whole rows)."""
    return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()


def _plan(
    X: Any, counts: sparse.csr_matrix | None, sampling: str, dispersion: float | None, random_state: RandomState
) -> SplitPlan:
    """Return the split plan (:mod:`sc_noise2self._numerics.dispersion`) for in-memory ``counts`` or the dask ``X``."""
    if sampling == "poisson":
        return SplitPlan(None, 1.0, None)  # binomial: the check is the calibration's business
    keep = sample_cells(X.shape[0], random_state)
    if counts is not None:
        sample = counts[keep]
    else:  # one pass over the blocks for the sampled cells
        sample = _gather(X, keep)
        check_count_values(sample, what="The count matrix", calibrating=False)
    return plan_split(sampling, dispersion, sample, _row_sums(sample), random_state)


def _gather(X: Any, keep: np.ndarray) -> sparse.csr_matrix:
    """Return the cells ``keep`` marks of a dask array of counts, in one pass, as one CSR matrix."""
    import dask

    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    bounds = np.cumsum((0, *X.chunks[0]))

    def rows(block: ArrayLike, mask: np.ndarray) -> sparse.csr_matrix:
        return as_canonical_csr(block)[mask]

    parts = [
        dask.delayed(rows)(block, keep[a:b])
        for block, a, b in zip(X.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True)
    ]
    return sparse.vstack(dask.compute(*parts), format="csr")


class SplitOptions(NamedTuple):
    """The settings of :func:`split_counts`, checked when made."""

    split_fraction: float | None
    n_splits: int
    scheme: SplitScheme
    sampling: Sampling
    dispersion: float | None
    random_state: RandomState

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> SplitOptions:
        """Return the checked settings among a call's arguments (``locals()``)."""
        options = cls(**{name: arguments[name] for name in cls._fields})
        n_splits = check_positive_int(options.n_splits, "n_splits")
        sampling, dispersion = check_sampling(options.sampling, options.dispersion)
        if options.scheme not in ("binomial", "multinomial"):
            msg = f"scheme must be 'binomial' or 'multinomial', got {options.scheme!r}."
            raise ValueError(msg)
        if options.scheme == "multinomial" and options.split_fraction is not None:
            msg = (
                "With scheme='multinomial' the training share is (k-1)/k for k = n_splits folds; "
                "leave split_fraction unset."
            )
            raise ValueError(msg)
        if options.scheme == "multinomial" and n_splits < 2:
            msg = "scheme='multinomial' needs n_splits >= 2 folds."
            raise ValueError(msg)
        fraction = options.split_fraction
        if options.scheme == "binomial":
            fraction = check_fraction(0.9 if fraction is None else fraction)
        return options._replace(split_fraction=fraction, n_splits=n_splits, sampling=sampling, dispersion=dispersion)


def split_array(X: ArrayLike, options: SplitOptions) -> list[CountSplit]:
    """Split raw counts into training and test molecules; see :func:`sc_noise2self.pp.split_counts`."""
    fraction, n_splits, scheme, sampling, dispersion, random_state = options
    lazy = type(X).__module__.split(".")[0] == "dask"
    check_known_chunks(X, "The count matrix")
    if lazy and len(X.shape) != 2:
        msg = f"Expected a 2-D cells × genes matrix, got an array of shape {X.shape}."
        raise ValueError(msg)
    counts = None if lazy else as_canonical_csr(X)
    if not lazy:
        check_count_values(counts, what="The count matrix", calibrating=False)
    plan = _plan(X, counts, sampling, dispersion, random_state)

    if scheme == "binomial":
        splits = []
        for i in range(n_splits):
            seed = split_seed(random_state, Stream.SPLIT, i)

            def halves(block: sparse.csr_matrix, start: int, seed: int = seed) -> list[sparse.csr_matrix]:
                return list(plan.halves(block, _row_sums(block), fraction, seed, row_offset=start))

            train, test = _split_dask(X, halves, 2) if lazy else (_like(X, half) for half in halves(counts, 0))
            splits.append(CountSplit(train, test, fraction, plan.split_dispersion))
        return splits
    seeds = [split_seed(random_state, Stream.FOLDS, j) for j in range(n_splits - 1)]

    def folds_of(block: sparse.csr_matrix, start: int) -> list[sparse.csr_matrix]:
        folds = multinomial_folds(block, n_splits, seeds, row_offset=start, size=plan.sizes(block, _row_sums(block)))
        trains = []
        for fold in folds:
            train = block - fold
            train.eliminate_zeros()
            train.sort_indices()
            trains.append(train)
        return trains + folds

    parts = _split_dask(X, folds_of, 2 * n_splits) if lazy else [_like(X, p) for p in folds_of(counts, 0)]
    fraction = (n_splits - 1) / n_splits
    return [CountSplit(parts[j], parts[n_splits + j], fraction, plan.split_dispersion) for j in range(n_splits)]
