"""``tl.calibrate``: the calibration sweep alone, returning its result without writing anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._anndata import counts_of
from .._docs import shared_docs
from .._engine import (
    CalibrationResult,
    Settings,
    bar_label,
    grid_product,
    progress_bar,
    resolve_method,
    warn_about_choice,
)
from .._engine import calibrate as run_calibration
from .._numerics.machine import adapts_threads
from ..denoisers._registry import with_methods

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np
    from anndata import AnnData

    from .._types import ArrayLike, Calibration, Depth, Empty, LossName, RandomState, Sampling, Select, TransformName
    from ..denoisers import Denoiser

__all__ = ["calibrate", "grid"]


@adapts_threads
@shared_docs
def calibrate(
    data: AnnData | ArrayLike,
    *,
    method: str | Denoiser = "pca",
    layer: str | None = None,
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
        arrays, backed and lazily read AnnData are read block by block (PCA, diffusion and the
        kNN average with either calibration; the autoencoder with ``calibration="mcv"``).
    method
        {methods}, or a denoiser instance (its parameters are used, the object itself is never
        fitted), e.g. ``sc_noise2self.denoisers.Diffusion(kernel="adaptive")``.
    layer
        Layer holding the data; ``adata.X`` when None.
    grid
        Values to sweep. PCA: numbers of components (default 1..20, then steps to 100,
        capped by the data size). Diffusion: times ``t`` (default 0..20), or
        ``(t, n_neighbors)`` pairs from :func:`grid`.
    {calibration}
    loss
        MCV: ``"mse"`` on the transformed scale or ``"poisson"`` negative
        log-likelihood on the count scale. Noise2Self: ``"mse"``.
    random_state
        Seed of the splits or gene groups and of the denoiser; same seed, same result.
    empty
        Cells or genes without any counts: ``"drop"`` (the default: calibrate on the
        others, and log how many were left out) or ``"error"`` (refuse, saying how many).
    {select}
    chunk_size
        Cells per block when scoring; default keeps a block under 4 MiB.
    {progress}

    Returns
    -------
    The loss per split (or gene group) and grid value, its standard errors, and the chosen
    value as ``result.best``. A choice at the largest value swept logs a warning.
    """
    settings = Settings.from_arguments(locals())
    X, what = counts_of(data, layer)
    name, denoiser = resolve_method(method, random_state)
    with progress_bar(bar_label(name, calibration), progress=settings.progress) as bar:
        result = run_calibration(X, name, denoiser, settings, what=what, bar=bar).result
    warn_about_choice(result)
    return result


calibrate.__doc__ = with_methods(calibrate.__doc__)


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
    return grid_product(**axes)
