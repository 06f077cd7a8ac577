"""Tools: the lower-level calibration sweep, returning a result object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._calibrate import CalibrationResult, resolve_method, run_mcv
from ._validate import get_counts, prepare_counts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ._types import ArrayLike, LossName, RandomState, TransformName
    from ._validate import Counts
    from .denoisers import Denoiser

__all__ = ["CalibrationResult", "calibrate"]


def calibrate(
    data: AnnData | ArrayLike,
    *,
    method: str | Denoiser = "pca",
    layer: str | None = None,
    grid: Sequence[int] | None = None,
    split_fraction: float = 0.9,
    n_splits: int = 1,
    transform: TransformName = "sqrt",
    target_sum: float | None = None,
    loss: LossName = "mse",
    random_state: RandomState = 0,
    empty: Literal["error", "drop"] = "error",
    chunk_size: int | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Sweep a denoiser's setting by molecular cross-validation, without writing anything.

    Each cell's molecules are split at random into a training part (``split_fraction``
    of them in expectation) and a held-out part. The denoiser is fitted once on the
    normalised training part, every grid value is scored against the held-out part after
    the exact depth conversion, and the loss curve is returned.

    Parameters
    ----------
    data
        Raw counts: an AnnData (cells × genes) or a matrix (dense, CSR or CSC). Sparse
        input is never densified.
    method
        ``"pca"`` or a :class:`~sc_noise2self.denoisers.Denoiser` instance.
    layer
        Layer holding raw counts; ``adata.X`` when None.
    grid
        Values to sweep (for PCA: numbers of components). Default: the method's grid,
        for PCA 1..20, then steps to 100, capped by the data size.
    split_fraction
        Expected share of each cell's molecules used for fitting.
    n_splits
        Independent random splits; the choice minimises their mean loss.
    transform
        Applied to (optionally depth-normalised) counts before denoising.
    target_sum
        If given, scale each cell to this many counts before the transform.
    loss
        ``"mse"`` on the transformed scale or ``"poisson"`` negative log-likelihood on
        the count scale.
    random_state
        Seed of the splits and of the denoiser; same seed, same result.
    empty
        Cells or genes without any counts: ``"error"`` (say how many) or ``"drop"``
        (calibrate on the others).
    chunk_size
        Cells per block when scoring; default keeps a block under 4 MiB.
    progress
        Show a progress bar.

    Returns
    -------
    The loss per split and grid value, and the chosen value as ``result.best``.
    """
    counts = _counts_from(data, layer, empty)
    name, denoiser = resolve_method(method, random_state)
    return run_mcv(
        counts.matrix,
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
        progress=progress,
    )


def _counts_from(data: AnnData | ArrayLike, layer: str | None, empty: Literal["error", "drop"]) -> Counts:
    """Return validated canonical-CSR counts from an AnnData (X or layer) or a matrix."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        return prepare_counts(get_counts(data, layer), what=where, empty=empty)
    if layer is not None:
        msg = "layer is only meaningful for AnnData input."
        raise ValueError(msg)
    return prepare_counts(data, what="The count matrix", empty=empty)
