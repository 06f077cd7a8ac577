"""Preprocessing: the AnnData-facing API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _logging as logg
from ._blockwise import BlockCounts, check_streaming, is_blockwise, refit_blockwise, refit_streaming
from ._calibrate import (
    add_steps,
    bar_label,
    calibration_record,
    check_finite_output,
    chunk_rows,
    package_version,
    predict_dense,
    progress_bar,
    refit,
    resolve_method,
    seed_record,
    warn_about_choice,
)
from ._docs import shared_docs
from ._genes import DEFAULT as DEFAULT_MASK
from ._genes import GeneMask, extend_factors, resolve_mask_var
from ._output import (
    check_key,
    check_targets,
    commit,
    default_max_dense_bytes,
    embed,
    factored_outputs,
    require_dask,
    writable,
)
from ._pipeline import neighbors, pca
from ._rows import low_rank_rows
from ._split import split_array
from ._threads import adapts_threads
from ._transform import cell_scales, to_counts, transform_counts
from ._validate import check_flag, check_positive_int, get_counts
from .denoisers import LowRank
from .tl import _run

if TYPE_CHECKING:
    from anndata import AnnData

    from ._split import CountSplit
    from ._transform import ToCounts
    from ._types import ArrayLike, Depth, LossName, RandomState, Sampling, Select, SplitScheme, TransformName
    from ._validate import Counts
    from .denoisers import Denoiser
    from .denoisers._base import GridValue

__all__ = ["denoise", "neighbors", "pca", "split_counts"]


@adapts_threads
@shared_docs
def denoise(
    adata: AnnData,
    *,
    method: str | Denoiser = "pca",
    layer: str | None = None,
    key_added: str = "denoised",
    calibration: Literal["mcv", "genes"] = "mcv",
    grid: ArrayLike | None = None,
    split_fraction: float = 0.9,
    n_splits: int | None = None,
    sampling: Sampling = "poisson",
    dispersion: float | None = None,
    depth: Depth | None = None,
    n_groups: int = 10,
    transform: TransformName = "log1p",
    target_sum: float | None = 1e4,
    loss: LossName = "mse",
    random_state: RandomState = 0,
    empty: Literal["drop", "error"] = "drop",
    select: Select = "min",
    scale: Literal["transformed", "counts"] = "transformed",
    mask_var: str | ArrayLike | None = "highly_variable",
    max_dense_bytes: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Denoise expression with a setting chosen by self-supervision.

    By default (``calibration="mcv"``, molecular cross-validation) every cell's molecules
    are split into a training and a held-out part; the denoiser's setting (PCA: the
    number of components; diffusion: the time ``t``) is swept on the training part and
    each value is scored against the held-out part, after the exact depth conversion for
    the non-linear transform. With ``calibration="genes"`` (Noise2Self) each random group
    of genes is predicted without being seen and scored against the data itself, which
    also works for values that are not counts. The best value is refitted on all data.

    Parameters
    ----------
    adata
        Annotated data matrix with raw UMI counts (cells × genes), sparse or dense. A
        dask array (chunks along cells) or a backed AnnData is calibrated block by block
        without loading it (``calibration="mcv"``): PCA and diffusion output is then
        factored; the autoencoder trains from streamed blocks and its layer is lazy.
    method
        ``"pca"``, ``"diffusion"``, ``"knn"`` (:class:`~sc_noise2self.denoisers.KNNAverage`), ``"autoencoder"``,
        or a :class:`~sc_noise2self.denoisers.Denoiser`
        instance, e.g. ``sc_noise2self.denoisers.PCA(n_iter=10)``.
    layer
        Layer holding raw counts; ``adata.X`` when None.
    key_added
        Name of the output layer and of the ``uns`` entry.
    calibration
        ``"mcv"`` (molecular cross-validation, needs counts) or ``"genes"``
        (Noise2Self gene partition, any values; the autoencoder then trains by masking).
    grid
        Values to sweep. PCA: numbers of components, default 1..20, then steps up to
        100 (capped by ``min(n_cells, n_genes) - 1``). Diffusion: times ``t``, default
        0..20, or ``(t, n_neighbors)`` pairs from :func:`sc_noise2self.tl.grid`.
        Autoencoder: epochs, or ``(bottleneck, epochs)`` pairs (default widths 4..128 ×
        epochs 1..20).
    split_fraction
        MCV: expected share of each cell's molecules used for fitting.
    {mcv_sampling}
    n_groups
        Noise2Self: number of random gene groups.
    transform
        ``"log1p"`` (the default, with ``target_sum=1e4``: scanpy's log-normalised
        scale, as ``sc.pp.normalize_total`` + ``sc.pp.log1p``), ``"sqrt"`` (with
        ``target_sum=None``: the variance-stabilising scale of raw counts that molecular
        cross-validation was introduced with) or ``"none"``; applied to the
        (depth-normalised) counts before denoising.
    target_sum
        Scale each cell to this many counts before the transform (as
        ``sc.pp.normalize_total``); None keeps each cell's own depth.
    loss
        ``"mse"`` on the transformed scale, or (MCV only) ``"poisson"`` negative
        log-likelihood on the count scale.
    random_state
        Seed of the splits or gene groups and of the denoiser; same seed, same bytes.
    empty
        Cells or genes without any counts (common after subsetting, or in the training
        part of a split): ``"drop"`` (the default) calibrates and denoises the others,
        writes zeros for them (their transformed counts) and logs how many; ``"error"``
        refuses them, saying how many.
    select
        ``"min"``: the value with the lowest mean loss. ``"1se"``: the simplest value (fewest
        components, shortest diffusion time, fewest neighbours, narrowest bottleneck) whose mean
        loss is within one standard error of the minimum, the error of the difference
        estimated across splits (MCV, needs ``n_splits >= 2``) or gene groups.
    scale
        What the layer holds: ``"transformed"`` (the denoised values on the scale of
        ``transform``) or ``"counts"``: the denoised expected count of each gene in each cell
        at that cell's depth, for count-based tools and benchmarks (e.g. OpenProblems'
        denoising task), from the exact inversion of ``E[T(s X)]`` — not ``expm1`` or
        squaring, which are biased. Needs raw counts as input.
    mask_var
        Genes to calibrate and fit on, as ``sc.pp.pca``'s ``mask_var``: a boolean ``var``
        column, a boolean array, or None for all genes. By default
        ``var["highly_variable"]`` when that column exists (e.g. after
        ``sc.pp.highly_variable_genes``), else all genes. Every gene is still written: the
        others are denoised through the fitted low-rank output (regressed on its scores), so
        PCA or diffusion only. Depth normalisation uses each cell's total over all genes.
    max_dense_bytes
        Largest dense output to write (float32 cells × genes); default a quarter of the
        machine's memory. Above it, PCA and diffusion output is stored as low-rank factors
        with a lazy dask layer; other methods raise a ``ValueError``.
    chunk_size
        Cells per block when scoring and writing; default keeps a block under 4 MiB.
    progress
        Show a progress bar; by default when scanpy's verbosity is at least ``"info"``
        (``sc.settings.verbosity = "info"``).
    overwrite
        Replace entries of the names below that this package did not write (by default
        that is refused before any work). The layer being read is never written over; the
        package's own earlier output under ``key_added`` is always replaced, all of it.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    Returns None if ``copy=False``, else a new AnnData. Everything is computed and
    checked (finite, right shape) first, then written at once: an error or an
    interruption leaves ``adata`` as it was. Sets the following fields:

    ``adata.layers[key_added]`` : :class:`numpy.ndarray` (dtype ``float32``) or dask array
        Denoised expression on the transformed scale of the full data,
        ``T(x · target_sum / total)`` (by default ``log1p`` of counts per 10,000, the scale
        of scanpy's log-normalised ``X``) or ``T(x)`` with ``target_sum=None``; with
        ``scale="counts"``, expected counts. Cells × genes, dense; or, when that would
        exceed ``max_dense_bytes``, a lazy dask array computed from the factors below
        block by block (also when written to h5ad/zarr).
    ``adata.obsm[f"{key_added}_scores"]``, ``adata.varm[f"{key_added}_loadings"]``, ``adata.var[f"{key_added}_offset"]``
        Only for factored output: layer = offset + scores @ loadings.T (and
        ``adata.obs[f"{key_added}_kept"]`` when empty cells were dropped).
    ``adata.uns[key_added]`` : :class:`dict`
        ``method``, ``calibration``, ``grid_names``, ``grid``, ``loss`` (splits or gene
        groups × grid, per matrix entry), ``loss_mean``, ``loss_se`` (its standard error
        across splits or gene groups), ``difference_se`` (that of each value's difference to
        the minimum), ``loss_no_denoising`` (MCV: the same loss for the training part
        itself), ``select``, ``best`` (the chosen value), ``best_min`` (the minimum's),
        ``grid_edge`` (the axes on which the choice is the largest value swept, comma-separated;
        empty when none),
        ``params`` (every setting, including ``layer``), ``output`` (``"dense"``,
        ``"factored"`` or ``"lazy"``: a dask layer that runs the autoencoder block by
        block), ``scale`` (``"transformed"`` or ``"counts"``), ``outputs`` (the names
        written, per slot) and the package ``version``.
    """
    key_added = check_key(key_added)
    if scale not in ("transformed", "counts"):
        msg = f"scale must be 'transformed' or 'counts', got {scale!r}."
        raise ValueError(msg)
    if check_flag(copy, "copy") and adata.isbacked:
        msg = (
            "copy=True needs an AnnData in memory, and this one is backed (on disk); denoise it in place "
            "(copy=False: the output is written to the object, not the file), or load it with `adata.to_memory()`."
        )
        raise ValueError(msg)
    start = logg.info(f"denoising with {method if isinstance(method, str) else type(method).__name__}")
    _, denoiser = resolve_method(method, random_state)
    blockwise = is_blockwise(get_counts(adata, layer))
    genes = _gene_mask(adata, mask_var, layer, denoiser, blockwise=blockwise, calibration=calibration)
    streamed = blockwise and check_streaming(denoiser)  # the autoencoder on dask or backed input: a lazy layer
    factored = not streamed and (blockwise or not _dense_fits(adata, denoiser, max_dense_bytes))
    if factored or streamed:
        require_dask("Blockwise input or factored output (a lazy layer)")
    check_targets(
        adata,
        key_added,
        _targets(key_added, factored=factored, streamed=streamed, drop=empty == "drop"),
        function="denoise",
        read_layer=layer,
        overwrite=overwrite,
    )
    with progress_bar(bar_label(method, calibration), progress=progress) as bar:
        add_steps(bar, 1)  # the refit on all counts, last
        data, denoiser, result = _run(
            adata if genes is None else genes.counts[:, genes.mask],
            method=denoiser,
            layer=layer if genes is None else None,
            calibration=calibration,
            grid=grid,
            split_fraction=split_fraction,
            n_splits=n_splits,
            sampling=sampling,
            dispersion=dispersion,
            depth=depth,
            n_groups=n_groups,
            transform=transform,
            target_sum=target_sum,
            loss=loss,
            random_state=random_state,
            empty=empty,
            select=select,
            chunk_size=chunk_size,
            bar=bar,
            cell_totals=None if genes is None else genes.totals,
        )
        warn_about_choice(result)
        outputs = _outputs(
            data,
            denoiser,
            result.best,
            key=key_added,
            factored=factored,
            transform=transform,
            target_sum=target_sum,
            scale=scale,
            chunk_size=chunk_size,
            n_cells=adata.n_obs,
            genes=genes,
            gene_groups=result.gene_groups,
        )
        bar.update(1)
    uns = calibration_record(result, data, genes, layer, denoiser)
    uns["output"] = "factored" if factored else "lazy" if streamed else "dense"
    uns["scale"] = scale
    uns["n_genes_fitted"] = int(adata.n_vars if genes is None else genes.mask.sum())
    chosen = ", ".join(f"{n}={v}" for n, v in zip(result.grid_names, np.atleast_1d(result.best), strict=True))
    logg.info(f"    chose {chosen} ({result.calibration} loss {result.loss_mean.min():.6g})")

    adata = writable(adata, copy)
    commit(adata, key_added, outputs, uns, function="denoise")
    added = "".join(
        f"    {name!r}, {_DESCRIPTIONS[slot]} (adata.{slot})\n" for slot, names in outputs.items() for name in names
    )
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n{added}    {key_added!r}, calibration curve and choice (adata.uns)",
    )
    return adata if copy else None


_DESCRIPTIONS = {
    "layers": "denoised expression",
    "obsm": "scores of the factored output",
    "varm": "loadings of the factored output",
    "var": "offset of the factored output",
    "obs": "cells kept by the calibration",
}


def _targets(key: str, *, factored: bool, drop: bool, streamed: bool = False) -> dict[str, list[str]]:
    """Names ``denoise`` may write, per slot."""
    if streamed:
        return {"layers": [key], "obs": [f"{key}_kept"]} if drop else {"layers": [key]}
    if not factored:
        return {"layers": [key]}
    targets = {"layers": [key], "obsm": [f"{key}_scores"], "varm": [f"{key}_loadings"], "var": [f"{key}_offset"]}
    if drop:
        targets["obs"] = [f"{key}_kept"]
    return targets


def _outputs(
    data: Counts | BlockCounts,
    denoiser: Denoiser,
    best: GridValue,
    *,
    key: str,
    factored: bool,
    transform: TransformName,
    target_sum: float | None,
    scale: str,
    chunk_size: int | None,
    n_cells: int,
    genes: GeneMask | None,
    gene_groups: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Refit at the chosen value on all counts; return every output, checked finite, per AnnData slot.

    ``gene_groups``: the partition of ``calibration="genes"``, for a denoiser refitted by masked training.
    """
    if isinstance(data, BlockCounts) and check_streaming(denoiser):
        return _streamed_outputs(data, denoiser, best, key=key, transform=transform, target_sum=target_sum, scale=scale)
    counts = _to_counts(data, transform, target_sum, genes) if scale == "counts" else None
    columns = data.genes  # the genes the output's columns come from (None: all)
    if isinstance(data, BlockCounts):
        factors = refit_blockwise(data, denoiser, best, transform=transform, target_sum=target_sum)
    else:
        totals = (
            np.asarray(data.matrix.sum(axis=1), dtype=np.float64).ravel()
            if genes is None
            else genes.kept_totals(data.cells)
        )
        scales = cell_scales(totals, target_sum)
        values = transform_counts(data.matrix, transform, scales)
        behind = (data.matrix, scales, transform) if data.is_counts else None  # for a denoiser trained on counts
        fitted = refit(values, denoiser, best, gene_groups, behind)
        if genes is not None:  # fitted on the masked genes: every other gene through the low-rank output
            factors = extend_factors(
                fitted.factors(best), genes, data.genes, data.cells, transform=transform, target_sum=target_sum
            )
            columns = None
        elif factored:
            factors = fitted.factors(best)
        else:
            denoised = predict_dense(fitted, best, values.shape, chunk_size=chunk_size)
    if factored:
        check_finite_output(factors, best, denoiser)
        return factored_outputs(key, factors, data.cells, columns, n_cells, counts)
    if genes is not None:
        denoised = _low_rank_dense(factors, chunk_size)
    check_finite_output((denoised,), best, denoiser)
    layer = embed(denoised, data.cells, columns)
    if counts is not None:
        for rows in chunk_rows(*layer.shape, chunk_size):
            layer[rows] = counts(layer[rows], rows)
        check_finite_output((layer,), best, denoiser)
    return {"layers": {key: layer}}


def _streamed_outputs(
    data: BlockCounts,
    denoiser: Denoiser,
    best: GridValue,
    *,
    key: str,
    transform: TransformName,
    target_sum: float | None,
    scale: str,
) -> dict[str, dict[str, Any]]:
    """Train on all blocks at the chosen value; the output is a lazy layer that runs the networks block by block."""
    counts = _to_counts(data, transform, target_sum, None, by_kept_cell=True) if scale == "counts" else None
    layer = refit_streaming(data, denoiser, best, transform=transform, target_sum=target_sum, counts=counts)
    outputs: dict[str, dict[str, Any]] = {"layers": {key: layer}}
    if data.cells is not None:
        outputs["obs"] = {f"{key}_kept": data.cells}
    return outputs


def _low_rank_dense(factors: tuple[np.ndarray, np.ndarray, np.ndarray], chunk_size: int | None) -> np.ndarray:
    """``offset + scores @ loadings`` as a dense float32 array, block by block."""
    offset, scores, loadings = factors
    out = np.empty((scores.shape[0], offset.size), dtype=np.float32)
    for rows in chunk_rows(*out.shape, chunk_size):
        out[rows] = low_rank_rows(offset, scores[rows], loadings)
    return out


def _to_counts(
    data: Counts | BlockCounts,
    transform: TransformName,
    target_sum: float | None,
    genes: GeneMask | None,
    *,
    by_kept_cell: bool = False,
) -> ToCounts:
    """Return the map from the output's transformed scale to expected counts, for the cells calibrated.

    Its rows are the input's cells, or with ``by_kept_cell`` the kept cells only.
    """
    if not data.is_counts:
        msg = "scale='counts' maps the output back to counts, which needs raw counts as input; use scale='transformed'."
        raise ValueError(msg)
    if genes is not None:
        return to_counts(transform, genes.kept_totals(data.cells), target_sum, genes.counts.data.max(), data.cells)
    if isinstance(data, BlockCounts):
        totals, max_count = data.totals, data.max_count
    else:
        totals, max_count = np.asarray(data.matrix.sum(axis=1), dtype=np.float64).ravel(), data.matrix.data.max()
    return to_counts(transform, totals, target_sum, max_count, None if by_kept_cell else data.cells)


def _gene_mask(
    adata: AnnData, mask_var: object, layer: str | None, denoiser: Denoiser, *, blockwise: bool, calibration: str
) -> GeneMask | None:
    """Return the genes to fit on (None: all), checked against what can denoise the others through them."""
    if blockwise:  # dask or backed input: a mask given explicitly is refused, the default is not applied
        if mask_var is not None and not (mask_var == DEFAULT_MASK and DEFAULT_MASK not in adata.var.columns):
            msg = "mask_var needs the counts in memory; for dask or backed input select the genes first, or pass None."
            raise ValueError(msg)
        return None
    genes = resolve_mask_var(adata, mask_var, layer, counts=calibration == "mcv")
    if genes is not None and not isinstance(denoiser, LowRank):
        msg = (
            f"mask_var={genes.name!r} denoises the other genes through a low-rank output, which "
            f"{type(denoiser).__name__} has not; pass mask_var=None, or method='pca' or 'diffusion'."
        )
        raise ValueError(msg)
    return genes


def _dense_fits(adata: AnnData, denoiser: Denoiser, max_dense_bytes: int | None) -> bool:
    """Whether the dense output fits the budget; raises if it does not and cannot be factored."""
    budget = (
        default_max_dense_bytes() if max_dense_bytes is None else check_positive_int(max_dense_bytes, "max_dense_bytes")
    )
    size = adata.n_obs * adata.n_vars * 4
    if size <= budget:
        return True
    if not isinstance(denoiser, LowRank):
        msg = (
            f"The dense denoised layer would take {size / 2**30:.1f} GiB, over max_dense_bytes "
            f"({budget / 2**30:.1f} GiB), and {type(denoiser).__name__} output has no low-rank form to store "
            "instead; raise max_dense_bytes, denoise a subset, or use method='pca' or 'diffusion'."
        )
        raise ValueError(msg)
    return False


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

    options = {
        "split_fraction": split_fraction,
        "n_splits": n_splits,
        "scheme": scheme,
        "sampling": sampling,
        "dispersion": dispersion,
        "random_state": random_state,
    }
    if not isinstance(data, AnnData):
        if layer is not None or copy or overwrite:
            msg = "layer, overwrite and copy are only meaningful for AnnData input."
            raise ValueError(msg)
        return split_array(data, **options)
    key_added = check_key(key_added)
    check_flag(copy, "copy")
    counts = get_counts(data, layer)
    if data.isbacked:
        msg = (
            "pp.split_counts writes the halves as layers, which a backed AnnData cannot hold; load it with "
            "`adata.to_memory()`, or split a dask array of its counts (`anndata.experimental.read_elem_lazy`)."
        )
        raise ValueError(msg)
    n = check_positive_int(n_splits, "n_splits")
    suffixes = [""] if n == 1 else [f"_{i}" for i in range(n)]
    names = [f"{key_added}_{part}{suffix}" for suffix in suffixes for part in ("train", "test")]
    check_targets(data, key_added, {"layers": names}, function="split_counts", read_layer=layer, overwrite=overwrite)
    splits = split_array(counts, **options)
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
