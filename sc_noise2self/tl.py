"""Tools: the lower-level calibration sweep, returning a result object."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import _logging as logg
from ._blockwise import BlockCounts, check_blockwise_request, is_blockwise, prepare_blocks, run_mcv_blockwise
from ._calibrate import (
    CalibrationResult,
    bar_label,
    check_finite_loss,
    check_select,
    progress_bar,
    resolve_method,
    resolve_n_splits,
    run_genes,
    run_mcv,
    warn_about_choice,
)
from ._docs import shared_docs
from ._loss import check_loss
from ._output import denoised_genes
from ._score import score_denoising
from ._split import seed_sequence
from ._threads import adapts_threads
from ._transform import check_transform, transformed
from ._validate import (
    check_depth,
    check_fraction,
    check_magnitude,
    check_positive_int,
    check_sampling,
    check_target_sum,
    get_counts,
    prepare_counts,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anndata import AnnData
    from tqdm import tqdm

    from ._types import ArrayLike, Depth, LossName, RandomState, Sampling, Select, TransformName
    from ._validate import Counts
    from .denoisers import Denoiser

__all__ = ["CalibrationResult", "calibrate", "denoised_genes", "grid", "score_denoising"]

Calibration = Literal["mcv", "genes"]


@adapts_threads
@shared_docs
def calibrate(
    data: AnnData | ArrayLike,
    *,
    method: str | Denoiser = "pca",
    layer: str | None = None,
    calibration: Calibration = "mcv",
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
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> CalibrationResult:
    """Sweep a denoiser's setting by self-supervision, without writing anything.

    With ``calibration="mcv"`` (molecular cross-validation) each cell's molecules are
    split at random into a training part (``split_fraction`` of them in expectation) and
    a held-out part; the denoiser is fitted once on the normalised training part, every
    grid value is scored against the held-out part after the exact depth conversion, and
    the loss curve is returned. With ``calibration="genes"`` (Noise2Self) the genes are
    partitioned at random into ``n_groups`` groups, each group is predicted by a denoiser
    that does not see it, and the error against the data itself is minimised; this also
    works on values that are not counts (with ``transform="none"``).

    Parameters
    ----------
    data
        Raw counts (or, for ``calibration="genes"``, any values): an AnnData (cells ×
        genes) or a matrix (dense, CSR or CSC). Sparse input is never densified. Dask
        arrays and backed AnnData are read block by block (PCA or diffusion, ``calibration="mcv"``).
    method
        ``"pca"``, ``"diffusion"``, ``"knn"`` (:class:`~sc_noise2self.denoisers.KNNAverage`), ``"autoencoder"``,
        or a :class:`~sc_noise2self.denoisers.Denoiser`
        instance, e.g. ``sc_noise2self.denoisers.Diffusion(kernel="adaptive")``.
    layer
        Layer holding the data; ``adata.X`` when None.
    calibration
        ``"mcv"`` or ``"genes"``.
    grid
        Values to sweep. PCA: numbers of components (default 1..20, then steps to 100,
        capped by the data size). Diffusion: times ``t`` (default 0..20), or
        ``(t, n_neighbors)`` pairs from :func:`grid`.
    split_fraction
        MCV: expected share of each cell's molecules used for fitting.
    {mcv_sampling}
    n_groups
        Noise2Self: number of gene groups.
    transform
        Applied to the (depth-normalised) counts before denoising: ``"log1p"`` (default,
        scanpy's scale with ``target_sum=1e4``), ``"sqrt"`` or ``"none"``.
    target_sum
        Scale each cell to this many counts before the transform; None keeps each
        cell's own depth (e.g. ``transform="sqrt", target_sum=None``: ``sqrt`` of raw counts).
    loss
        MCV: ``"mse"`` on the transformed scale or ``"poisson"`` negative
        log-likelihood on the count scale. Noise2Self: ``"mse"``.
    random_state
        Seed of the splits or gene groups and of the denoiser; same seed, same result.
    empty
        Cells or genes without any counts: ``"drop"`` (the default: calibrate on the
        others, and log how many were left out) or ``"error"`` (refuse, saying how many).
    select
        ``"min"``: the value with the lowest mean loss. ``"1se"``: the simplest value
        (fewest components, shortest diffusion time, fewest neighbours, narrowest bottleneck)
        whose mean loss is within one standard error of the minimum, the error of the
        difference being estimated across splits (MCV, needs ``n_splits >= 2``) or gene groups.
    chunk_size
        Cells per block when scoring; default keeps a block under 4 MiB.
    progress
        Show a progress bar; by default when scanpy's verbosity is at least ``"info"``
        (``sc.settings.verbosity = "info"``).

    Returns
    -------
    The loss per split (or gene group) and grid value, its standard errors, and the chosen
    value as ``result.best``. A choice at the largest value swept logs a warning.
    """
    with progress_bar(bar_label(method, calibration), progress=progress) as bar:
        result = _run(
            data,
            method=method,
            layer=layer,
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
        )[2]
    warn_about_choice(result)
    return result


def grid(**axes: Iterable[int]) -> np.ndarray:
    """All combinations of several settings, as a 2-D grid with one column per setting.

    Parameters
    ----------
    **axes
        Setting name to values, in the denoiser's axis order, e.g.
        ``grid(t=range(21), n_neighbors=[5, 15, 30])`` for :class:`~sc_noise2self.denoisers.Diffusion`.

    Returns
    -------
    Array of shape (number of combinations, number of settings).
    """
    return np.array(list(itertools.product(*(list(v) for v in axes.values()))), dtype=np.int64)


def _run(
    data: AnnData | ArrayLike,
    *,
    method: str | Denoiser,
    layer: str | None,
    calibration: Calibration,
    grid: ArrayLike | None,
    split_fraction: float,
    n_splits: int | None,
    n_groups: int,
    transform: TransformName,
    target_sum: float | None,
    loss: LossName,
    random_state: RandomState,
    empty: Literal["drop", "error"],
    chunk_size: int | None,
    bar: tqdm,
    select: Select = "min",
    sampling: Sampling = "poisson",
    dispersion: float | None = None,
    depth: Depth | None = None,
    cell_totals: np.ndarray | None = None,
) -> tuple[Counts | BlockCounts, Denoiser, CalibrationResult]:
    """Validate, calibrate; return the prepared data, the denoiser and the result.

    ``cell_totals`` (one per cell of ``data``): the totals the depth normalisation divides
    by, when ``data`` holds only some of the genes (``mask_var``).
    """
    sampling, dispersion = _check_settings(
        calibration=calibration,
        transform=transform,
        loss=loss,
        split_fraction=split_fraction,
        target_sum=target_sum,
        n_splits=n_splits,
        n_groups=n_groups,
        chunk_size=chunk_size,
        random_state=random_state,
        empty=empty,
        select=select,
        sampling=sampling,
        dispersion=dispersion,
        depth=depth,
    )
    matrix, what = _source(data, layer)
    name, denoiser = resolve_method(method, random_state)
    if is_blockwise(matrix):
        check_blockwise_request(denoiser, name, calibration)
        data_counts = prepare_blocks(matrix, what=what, empty=empty, counts=calibration == "mcv")
    else:
        data_counts = prepare_counts(matrix, what=what, empty=empty, counts=calibration == "mcv")
    _log_dropped(data_counts.cells, data_counts.genes)
    totals = None
    if cell_totals is not None:
        totals = cell_totals if data_counts.cells is None else cell_totals[data_counts.cells]
    if calibration == "mcv":
        blockwise = isinstance(data_counts, BlockCounts)
        cell_counts = data_counts.totals if blockwise else np.asarray(data_counts.matrix.sum(axis=1)).ravel()
        n_splits = resolve_n_splits(
            n_splits, select=select, median_count=float(np.median(cell_counts)), split_fraction=split_fraction
        )
        result = (run_mcv_blockwise if blockwise else run_mcv)(
            data_counts if blockwise else data_counts.matrix,
            denoiser,
            method=name,
            grid=grid,
            split_fraction=split_fraction,
            n_splits=n_splits,
            transform=transform,
            target_sum=target_sum,
            loss=loss,
            random_state=random_state,
            chunk_size=chunk_size,
            bar=bar,
            sampling=sampling,
            dispersion=dispersion,
            depth=depth,
            **({} if totals is None else {"totals": totals}),
        )
    else:
        if loss != "mse":
            msg = "calibration='genes' scores predictions against the data itself with loss='mse'."
            raise ValueError(msg)
        if not data_counts.is_counts and (transform != "none" or target_sum is not None):
            msg = (
                "These values are not raw counts (negative or non-integer), so they are denoised as they are: "
                "pass transform='none' and target_sum=None, or pass raw counts."
            )
            raise ValueError(msg)
        values = transformed(data_counts.matrix, transform, target_sum, totals=totals)
        check_magnitude(values, what=what)
        target_record = None if target_sum is None else float(target_sum)
        result = run_genes(
            values,
            denoiser,
            method=name,
            grid=grid,
            n_groups=n_groups,
            random_state=random_state,
            chunk_size=chunk_size,
            bar=bar,
            params={"transform": transform, "target_sum": target_record, "loss": loss},
        )
    check_finite_loss(result, denoiser)
    result.select = select
    return data_counts, denoiser, result


def _check_settings(
    *,
    calibration: object,
    transform: object,
    loss: object,
    split_fraction: object,
    target_sum: object,
    n_splits: object,
    n_groups: object,
    chunk_size: object,
    random_state: object,
    empty: object,
    select: object,
    sampling: object,
    dispersion: object,
    depth: object,
) -> tuple[str, float | None]:
    """Check every setting before the data are read; return ``sampling`` and ``dispersion`` as checked."""
    if calibration not in ("mcv", "genes"):
        msg = f"calibration must be 'mcv' or 'genes', got {calibration!r}."
        raise ValueError(msg)
    check_transform(transform)
    check_loss(loss)
    check_fraction(split_fraction)
    check_target_sum(target_sum)
    if n_splits is not None:
        check_positive_int(n_splits, "n_splits")
    check_positive_int(n_groups, "n_groups")
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    if not isinstance(random_state, np.random.Generator):
        seed_sequence(random_state)  # its checks only: a Generator would advance
    if empty not in ("error", "drop"):
        msg = f"empty must be 'error' or 'drop', got {empty!r}."
        raise ValueError(msg)
    check_select(select, n_repeats=n_splits, calibration=calibration)
    sampling, dispersion = check_sampling(sampling, dispersion)
    check_depth(depth, calibration=calibration, loss=loss)
    if calibration != "mcv" and (sampling != "poisson" or dispersion is not None):
        msg = "sampling and dispersion decide how molecules are split: they apply to calibration='mcv' only."
        raise ValueError(msg)
    return sampling, dispersion


def _log_dropped(cells: np.ndarray | None, genes: np.ndarray | None) -> None:
    """One info line on the cells and genes left out for having no counts."""
    parts = [
        f"{int((~mask).sum())} {noun}{'' if int((~mask).sum()) == 1 else 's'}"
        for mask, noun in ((cells, "cell"), (genes, "gene"))
        if mask is not None
    ]
    if parts:
        logg.info(f"    left out {' and '.join(parts)} without any counts (their output is 0)")


def _source(data: AnnData | ArrayLike, layer: str | None) -> tuple[ArrayLike, str]:
    """Return the matrix to calibrate (X or a layer of an AnnData, or the matrix itself) and its name."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        return get_counts(data, layer), "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if layer is not None:
        msg = "layer is only meaningful for AnnData input."
        raise ValueError(msg)
    return data, "The count matrix"
