"""``pp.denoise``: denoised expression with a setting chosen by self-supervision, written to the AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from .. import _logging as logg
from .._anndata import (
    check_key,
    check_targets,
    commit,
    counts_of,
    describe_outputs,
    output_names,
    output_slots,
    resolve_mask_var,
    writable,
)
from .._docs import shared_docs
from .._engine import (
    Settings,
    add_steps,
    bar_label,
    calibrate,
    calibration_record,
    count_floor,
    is_blockwise,
    log_choice,
    output,
    progress_bar,
    resolve_method,
    warn_about_choice,
)
from .._numerics.checks import check_flag, check_positive_int
from .._numerics.machine import adapts_threads, default_max_dense_bytes
from ..denoisers._registry import registered, with_methods

if TYPE_CHECKING:
    from anndata import AnnData

    from .._types import ArrayLike, Calibration, Depth, Empty, LossName, RandomState, Sampling, Select, TransformName
    from ..denoisers import Denoiser

__all__ = ["denoise", "require_dask"]


@adapts_threads
@shared_docs
def denoise(
    adata: AnnData,
    *,
    method: str | Denoiser = "pca",
    layer: str | None = None,
    key_added: str = "denoised",
    grid: ArrayLike | None = None,
    calibration: Calibration = "mcv",
    split_fraction: float = 0.9,
    n_splits: int | None = None,
    max_scored_cells: int | None = 10_000,
    sampling: Sampling = "poisson",
    dispersion: float | None = None,
    depth: Depth | None = None,
    n_groups: int = 10,
    transform: TransformName = "log1p",
    target_sum: float | None = 1e4,
    loss: LossName = "mse",
    random_state: RandomState = 0,
    empty: Empty = "drop",
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
        dask array (chunks along cells), a backed or a lazily read AnnData is calibrated
        block by block without loading it: PCA and diffusion output is then factored; the
        autoencoder (``calibration="mcv"``) trains from streamed blocks and its layer is lazy.
    method
        {methods}, or a denoiser instance (its parameters are used, the object itself is never
        fitted), e.g. ``sc_noise2self.denoisers.PCA(n_iter=10)``.
    layer
        Layer holding raw counts; ``adata.X`` when None.
    key_added
        Name of the output layer and of the ``uns`` entry.
    grid
        Values to sweep. PCA: numbers of components, default 1..20, then steps up to
        100 (capped by ``min(n_cells, n_genes) - 1``). Diffusion: times ``t``, default
        0..20, or ``(t, n_neighbors)`` pairs from :func:`sc_noise2self.tl.grid`.
        Autoencoder: epochs, or ``(bottleneck, epochs)`` pairs (default widths 4..128 ×
        epochs 1..20).
    {calibration}
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
    {select}
    scale
        What the layer holds: ``"transformed"`` (the denoised values on the scale of
        ``transform``) or ``"counts"``: the denoised expected count of each gene in each cell
        at that cell's depth, for count-based tools and benchmarks (e.g. OpenProblems'
        denoising task), from the exact inversion of ``E[T(s X)]`` — not ``expm1`` or
        squaring, which are biased. With ``calibration="mcv"`` each is at least a share of
        its null rate (its cell's total times its gene's share of all counts), the share
        chosen on the held-out Poisson likelihood of MCV splits (the chosen setting refitted
        on each), so that an expected count is not 0 where the data say it should not be.
        Needs raw counts as input.
    mask_var
        Genes to calibrate and fit on, as ``sc.pp.pca``'s ``mask_var``: a boolean ``var``
        column, a boolean array, or None for all genes. By default
        ``var["highly_variable"]`` when that column exists (e.g. after
        ``sc.pp.highly_variable_genes``), else all genes. Every gene is still written: the
        others are denoised through the fitted low-rank output (regressed on its scores), so
        PCA or diffusion only. Depth normalisation uses each cell's total over all genes.
        Dask and backed input are masked block by block, as in memory.
    max_dense_bytes
        Largest dense output to write (float32 cells × genes); default a quarter of the
        machine's memory. Above it, PCA and diffusion output is stored as low-rank factors
        with a lazy dask layer; other methods raise a ``ValueError``.
    chunk_size
        Cells per block when scoring and writing; default keeps a block under 4 MiB.
    {progress}
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
        ``scale="counts"``, expected counts. Never negative when the input holds no negative
        value (counts always): the output is projected onto values ≥ 0, which can only bring
        it closer to the truth, and the calibration scores that projection. Cells × genes,
        dense; or, when that would exceed ``max_dense_bytes``, a lazy dask array computed
        from the factors below block by block (also when written to h5ad/zarr).
    ``adata.obsm[f"{key_added}_scores"]``, ``adata.varm[f"{key_added}_loadings"]``, ``adata.var[f"{key_added}_offset"]``
        Only for factored output: layer = offset + scores @ loadings.T, projected onto
        values ≥ 0 where ``non_negative`` (and ``adata.obs[f"{key_added}_kept"]`` when
        empty cells were dropped).
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
        block), ``scale`` (``"transformed"`` or ``"counts"``), ``non_negative`` (whether the
        layer was projected onto values ≥ 0), ``count_floor`` (``scale="counts"`` with MCV:
        ``share``, the floor chosen; ``grid`` and ``loss``, the shares swept and their held-out
        Poisson loss per entry), ``outputs`` (the names
        written, per slot) and the package ``version``.
    """
    settings = Settings.from_arguments(locals())
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
    name, denoiser = resolve_method(method, random_state)
    start = logg.info(f"denoising with {name}")
    X, what = counts_of(adata, layer)
    blockwise = is_blockwise(X)
    genes = _gene_mask(adata, mask_var, denoiser)
    if blockwise and denoiser.tags.in_memory_output:
        msg = (
            f"method {name!r} averages each cell over other cells anywhere in the matrix, so its output needs the "
            "counts in memory (a dask array or a backed or lazily read AnnData was given): load them "
            "(`adata = adata.to_memory()`), or calibrate it alone with sc_noise2self.tl.calibrate."
        )
        raise ValueError(msg)
    streamed = blockwise and not denoiser.tags.low_rank  # the autoencoder on dask or backed input: a lazy layer
    factored = not streamed and (blockwise or not _dense_fits(adata, denoiser, max_dense_bytes))
    if factored or streamed:
        require_dask("Blockwise input or factored output (a lazy layer)")
    kind = "lazy" if streamed else "factored" if factored else "dense"
    targets = output_names(key_added, kind, drop=empty == "drop")
    check_targets(adata, key_added, targets, function="denoise", read_layer=layer, overwrite=overwrite)
    with progress_bar(bar_label(name, calibration), progress=settings.progress) as bar:
        add_steps(bar, 1)  # the refit on all counts, last
        fit = calibrate(X, name, denoiser, settings, what=what, bar=bar, mask=None if genes is None else genes[0])
        result = fit.result
        warn_about_choice(result)
        floor = None
        if scale == "counts" and calibration == "mcv" and fit.source.is_counts:
            floor = count_floor(fit.source, fit.denoiser, result, settings, totals=fit.totals, bar=bar)
        out = output(
            fit.source,
            fit.denoiser,
            result,
            settings,
            factored=factored,
            scale=scale,
            totals=fit.totals,
            count_floor=floor,
        )
        bar.update(1)
    uns = calibration_record(
        result,
        cells=fit.source.cells,
        genes=fit.source.genes,
        layer=layer,
        mask_var=None if genes is None else genes[1],
        denoiser=fit.denoiser,
    )
    uns["output"] = out.kind
    uns["scale"] = scale
    uns["non_negative"] = out.non_negative
    uns["n_genes_fitted"] = int(adata.n_vars if genes is None else genes[0].sum())
    if floor is not None:
        uns["count_floor"] = floor.record
    chosen = ", ".join(f"{n}={v}" for n, v in zip(result.grid_names, np.atleast_1d(result.best), strict=True))
    log_choice(result, chosen)

    adata = writable(adata, copy)
    slots = output_slots(key_added, out)
    commit(adata, key_added, slots, uns, function="denoise")
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n{describe_outputs(slots)}    {key_added!r}, calibration curve and choice (adata.uns)",
    )
    logg.info(
        f"    layers[{key_added!r}] is for plots, embeddings and clustering; test differential expression on "
        "the counts (see 'Downstream use' in the documentation)"
    )
    return adata if copy else None


denoise.__doc__ = with_methods(denoise.__doc__)


def _gene_mask(adata: AnnData, mask_var: object, denoiser: Denoiser) -> tuple[np.ndarray, str] | None:
    """Return the genes to fit on and their name (None: all), checked against what can denoise the others."""
    genes = resolve_mask_var(adata, mask_var)
    if genes is not None and not denoiser.tags.low_rank:
        able = " or ".join(repr(n) for n, cls in registered().items() if cls.tags.low_rank)
        msg = (
            f"mask_var={genes[1]!r} denoises the other genes through a low-rank output, which "
            f"{type(denoiser).__name__} has not; pass mask_var=None, or method={able}."
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
    if not denoiser.tags.low_rank:
        able = " or ".join(repr(n) for n, cls in registered().items() if cls.tags.low_rank)
        msg = (
            f"The dense denoised layer would take {size / 2**30:.1f} GiB, over max_dense_bytes "
            f"({budget / 2**30:.1f} GiB), and {type(denoiser).__name__} output has no low-rank form to store "
            f"instead; raise max_dense_bytes, denoise a subset, or use method={able}."
        )
        raise ValueError(msg)
    return False


def require_dask(why: str) -> None:
    """Raise an ``ImportError`` that says how to install dask when it is missing."""
    try:
        import dask.array  # noqa: F401
    except ImportError:
        msg = (
            f"{why} needs dask, which is not installed: install the package's dask extra "
            "(`pip install '.[dask]'` from a clone) or dask itself (`pip install 'dask[array]'`)."
        )
        raise ImportError(msg) from None
