"""The sweep engine: split, transform, fit once per split, score every grid value, choose.

Knows nothing of a method beyond the :class:`~sc_noise2self.denoisers.Denoiser`
protocol, and nothing of AnnData.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ._loss import check_loss, held_out_target, score_block
from ._split import binomial_split, seed_sequence
from ._transform import build_conversion, cell_scales, check_transform, transform_counts
from ._validate import check_fraction, check_grid, check_positive_int
from .denoisers import PCA, Denoiser

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scipy import sparse

    from ._types import LossName, RandomState, TransformName

__all__ = ["CalibrationResult", "denoise_counts", "package_version", "resolve_method", "run_mcv"]

METHODS = {"pca": PCA}
_CHUNK_ELEMENTS = 2**19  # cells per block × genes; a block of predictions is 4 MiB


def package_version() -> str:
    try:
        return version("sc_noise2self")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def resolve_method(method: str | Denoiser, random_state: RandomState) -> tuple[str, Denoiser]:
    """Turn a method name into a fresh estimator seeded from ``random_state``; use an instance as is."""
    if isinstance(method, str):
        if method not in METHODS:
            msg = f"method must be one of {sorted(METHODS)} or a Denoiser instance, got {method!r}."
            raise ValueError(msg)
        seed = None if random_state is None else int(seed_sequence(random_state, 2).generate_state(1)[0])
        return method, METHODS[method](random_state=seed)
    if not isinstance(method, Denoiser):
        msg = f"method must be one of {sorted(METHODS)} or a Denoiser instance, got {method!r}."
        raise ValueError(msg)
    return type(method).__name__.lower(), method


def _seed_record(random_state: RandomState) -> int | str | None:
    """Return what ``uns`` keeps of the seed: the int, None, or a note that a Generator was passed."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return None if random_state is None else "numpy.random.Generator"
    return int(random_state)


def chunk_rows(n_cells: int, n_genes: int, chunk_size: int | None) -> list[slice]:
    """Blocks of cells so that a block × genes array stays small."""
    size = max(1, _CHUNK_ELEMENTS // n_genes) if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    return [slice(i, min(i + size, n_cells)) for i in range(0, n_cells, size)]


@dataclass
class CalibrationResult:
    """Outcome of a self-supervised sweep (see :func:`sc_noise2self.tl.calibrate`).

    Attributes
    ----------
    method
        Name of the denoiser.
    grid_name
        What the grid values mean (e.g. ``"n_comps"``).
    grid
        Values swept, ascending.
    loss
        Held-out loss per element, one row per split, one column per grid value.
    params
        The calibration settings, h5ad-safe.
    """

    method: str
    grid_name: str
    grid: np.ndarray
    loss: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def loss_mean(self) -> np.ndarray:
        """Loss averaged over splits."""
        return self.loss.mean(axis=0)

    @property
    def best(self) -> int:
        """Grid value with the lowest mean held-out loss (the smallest one on ties)."""
        return int(self.grid[int(np.argmin(self.loss_mean))])

    def to_uns(self) -> dict[str, Any]:
        """Plain types and arrays only, so it survives ``write_h5ad``/``read_h5ad``."""
        return {
            "method": self.method,
            "calibration": "mcv",
            "grid_name": self.grid_name,
            "grid": self.grid.copy(),
            "loss": self.loss.copy(),
            "loss_mean": self.loss_mean,
            "best": self.best,
            "params": dict(self.params),
            "version": package_version(),
        }


def run_mcv(
    counts: sparse.csr_matrix,
    denoiser: Denoiser,
    *,
    method: str,
    grid: Sequence[int] | None,
    split_fraction: float,
    n_splits: int,
    transform: TransformName,
    target_sum: float | None,
    loss: LossName,
    random_state: RandomState,
    chunk_size: int | None,
    progress: bool,
) -> CalibrationResult:
    """Molecular cross-validation of ``denoiser`` over ``grid`` on validated canonical-CSR ``counts``."""
    p = check_fraction(split_fraction)
    check_transform(transform)
    check_loss(loss)
    n_splits = check_positive_int(n_splits, "n_splits")
    max_value = denoiser.max_grid_value(counts.shape)
    if max_value < 1:
        msg = f"Data of shape {counts.shape} is too small to calibrate; it needs at least 2 cells and 2 genes."
        raise ValueError(msg)
    grid = check_grid(denoiser.default_grid(counts.shape) if grid is None else grid, max_value=max_value)
    blocks = chunk_rows(counts.shape[0], counts.shape[1], chunk_size)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    held_out_per_cell = (1.0 - p) * float(np.median(totals))
    if held_out_per_cell < 1.0:
        msg = (
            f"Too few molecules for a split: cells have a median of {np.median(totals):g} counts, so the held-out "
            f"part (split_fraction={p}) would hold {held_out_per_cell:.2g} per cell. Lower split_fraction, or keep "
            "deeper cells (e.g. `sc.pp.filter_cells(adata, min_counts=...)`)."
        )
        raise ValueError(msg)
    train_scales = cell_scales(totals, target_sum, p)
    test_scales = cell_scales(totals, target_sum, 1.0 - p)
    conversion = build_conversion(
        transform,
        fraction=p,
        train_scales=train_scales,
        normalized=target_sum is not None,
        max_rate=1.5 * p * float(counts.data.max()) + 20.0,  # covers every plausible training rate
        loss=loss,
    )

    losses = np.zeros((n_splits, grid.size))
    n_elements = counts.shape[0] * counts.shape[1]
    with tqdm(total=n_splits * len(blocks), desc=f"MCV {method}", unit="block", disable=not progress) as bar:
        for i in range(n_splits):
            train, test = binomial_split(counts, p, np.random.default_rng(seed_sequence(random_state, 0, i)))
            denoiser.fit(transform_counts(train, transform, train_scales), grid)
            for rows in blocks:
                target = held_out_target(test[rows], test_scales[rows], transform=transform, loss=loss)
                for j, (_, pred) in enumerate(denoiser.sweep(rows)):
                    per_cell = score_block(
                        pred, target, conversion=conversion, train_scales=train_scales[rows], loss=loss
                    )
                    losses[i, j] += per_cell.sum()
                bar.update()
    params = {
        "split_fraction": p,
        "n_splits": n_splits,
        "transform": transform,
        "target_sum": None if target_sum is None else float(target_sum),
        "loss": loss,
        "random_state": _seed_record(random_state),
    }
    return CalibrationResult(
        method=method, grid_name=denoiser.grid_name, grid=grid, loss=losses / n_elements, params=params
    )


def denoise_counts(
    counts: sparse.csr_matrix,
    denoiser: Denoiser,
    value: int,
    *,
    transform: TransformName,
    target_sum: float | None,
    chunk_size: int | None,
    dtype: np.dtype = np.float32,
) -> np.ndarray:
    """Refit ``denoiser`` on all counts at one grid value and return the denoised matrix.

    Values are on the transformed scale of the full data, ``T(s · x)`` with
    ``s = target_sum / total`` (or 1 without ``target_sum``).
    """
    scales = cell_scales(np.asarray(counts.sum(axis=1)).ravel(), target_sum, 1.0)
    denoiser.fit(transform_counts(counts, transform, scales), np.array([value]))
    out = np.empty(counts.shape, dtype=dtype)
    for rows in chunk_rows(counts.shape[0], counts.shape[1], chunk_size):
        out[rows] = denoiser.predict(rows, value)
    return out
