"""Input checks shared by every entry point, each with a message that says what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ._types import ArrayLike

__all__ = [
    "Counts",
    "as_canonical_csr",
    "check_count_values",
    "check_fraction",
    "check_grid",
    "check_positive_int",
    "get_counts",
    "prepare_counts",
]


def get_counts(adata: AnnData, layer: str | None) -> ArrayLike:
    """Return ``adata.X`` or ``adata.layers[layer]``, failing clearly when absent."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty; pass the layer that holds raw counts, e.g. `layer='counts'`."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(repr(k) for k in adata.layers) or "none"
        msg = f"Layer {layer!r} not found in adata.layers (available: {available})."
        raise ValueError(msg)
    return adata.layers[layer]


def as_canonical_csr(X: ArrayLike) -> sparse.csr_matrix:
    """CSR with sorted, summed indices; never modifies ``X`` and never densifies it.

    The canonical form fixes the order in which random draws meet the nonzeros
    (row-major), so the same seed gives the same split for CSR, CSC and dense input.
    """
    if sparse.issparse(X):
        if X.format == "csr":
            out = sparse.csr_matrix(X)  # shares buffers with X
            if not out.has_canonical_format:
                out = out.copy()
                out.sum_duplicates()
            return out
        out = sparse.csr_matrix(X.tocsr())  # new buffers; sorted for CSC/COO
        out.sum_duplicates()
        return out
    X = np.asarray(X)
    if X.ndim != 2:
        msg = f"Expected a 2-D cells × genes matrix, got an array of shape {X.shape}."
        raise ValueError(msg)
    if X.dtype == np.float16:  # scipy.sparse has no float16
        msg = "The count matrix is float16, which cannot hold counts above 2048 exactly; cast it to float32 or int32."
        raise ValueError(msg)
    return sparse.csr_matrix(X)


def check_count_values(X: sparse.csr_matrix, *, what: str = "the input") -> None:
    """Raise ``ValueError`` unless ``X`` holds raw counts (finite, non-negative integers)."""
    data = X.data
    if data.dtype.kind not in "iuf":
        msg = f"{what} has dtype {data.dtype}; counts must be integers or floats."
        raise ValueError(msg)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        msg = f"{what} contains {n_bad} NaN or infinite values; counts must be finite."
        raise ValueError(msg)
    if data.size and data.min() < 0:
        msg = (
            f"{what} contains negative values ({int(np.count_nonzero(data < 0))} entries), so it is not raw counts "
            "(scaled or centred data?). Molecular cross-validation splits molecules and needs raw UMI counts: "
            "pass the layer that holds them, e.g. `layer='counts'`."
        )
        raise ValueError(msg)
    if data.dtype.kind == "f" and data.size and not np.array_equal(data, np.floor(data)):
        msg = (
            f"{what} contains non-integer values, so it is not raw counts (log-normalised data?). "
            "Molecular cross-validation splits molecules and needs raw UMI counts: pass the layer that holds "
            "them, e.g. `layer='counts'` (keep one with `adata.layers['counts'] = adata.X.copy()` before normalising)."
        )
        raise ValueError(msg)
    if X.shape[0] == 0 or X.shape[1] == 0:
        msg = f"{what} has shape {X.shape}; it needs at least one cell and one gene."
        raise ValueError(msg)


class Counts(NamedTuple):
    """Validated counts for calibration, with the cells and genes they were taken from."""

    matrix: sparse.csr_matrix
    """Canonical CSR counts without empty cells or genes."""
    cells: np.ndarray | None
    """Boolean mask of the input's cells kept, or None when all were."""
    genes: np.ndarray | None
    """Boolean mask of the input's genes kept, or None when all were."""


def prepare_counts(X: ArrayLike, *, what: str, empty: Literal["error", "drop"] = "error") -> Counts:
    """Canonical CSR raw counts without cells or genes that have no counts.

    Empty cells and genes carry no information for a molecular split and break per-cell
    normalisation: with ``empty="error"`` they raise a ``ValueError`` that gives their
    number, with ``empty="drop"`` they are left out (and reported in the masks).
    """
    if empty not in ("error", "drop"):
        msg = f"empty must be 'error' or 'drop', got {empty!r}."
        raise ValueError(msg)
    counts = as_canonical_csr(X)
    check_count_values(counts, what=what)
    keep_cells = np.asarray(counts.sum(axis=1)).ravel() > 0
    keep_genes = np.bincount(counts.indices, weights=counts.data, minlength=counts.shape[1]) > 0
    n_cells, n_genes = int((~keep_cells).sum()), int((~keep_genes).sum())
    if empty == "error" and n_cells:
        msg = (
            f"{what} has {_plural(n_cells, 'cell')} without any counts; remove them first, "
            "e.g. `sc.pp.filter_cells(adata, min_counts=1)`, or pass `empty='drop'`."
        )
        raise ValueError(msg)
    if empty == "error" and n_genes:
        msg = (
            f"{what} has {_plural(n_genes, 'gene')} without any counts; remove them first, "
            "e.g. `sc.pp.filter_genes(adata, min_counts=1)`, or pass `empty='drop'`."
        )
        raise ValueError(msg)
    if not keep_cells.any():
        msg = f"{what} has no counts at all."
        raise ValueError(msg)
    if n_cells or n_genes:
        counts = as_canonical_csr(counts[keep_cells][:, keep_genes])
    return Counts(counts, keep_cells if n_cells else None, keep_genes if n_genes else None)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_fraction(split_fraction: float) -> float:
    """Check that the training share of molecules lies strictly between 0 and 1."""
    p = float(split_fraction)
    if not 0.0 < p < 1.0:
        msg = f"split_fraction must lie strictly between 0 and 1, got {split_fraction!r}."
        raise ValueError(msg)
    return p


def check_positive_int(value: object, name: str) -> int:
    """Check that ``value`` is a positive integer (``True``/``False`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"{name} must be a positive integer, got {value!r}."
        raise ValueError(msg)
    return int(value)


def check_grid(grid: Sequence[int], *, max_value: int, name: str = "grid") -> np.ndarray:
    """Sorted, unique, positive integers below ``max_value`` (inclusive)."""
    values = np.asarray(grid)
    if values.ndim != 1 or values.size == 0:
        msg = f"{name} must be a non-empty 1-D sequence of integers, got {grid!r}."
        raise ValueError(msg)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        msg = f"{name} must hold integers, got {grid!r}."
        raise ValueError(msg)
    if values.dtype.kind not in "iuf":
        msg = f"{name} must hold integers, got {grid!r}."
        raise ValueError(msg)
    values = np.unique(values.astype(np.int64))
    if values[0] < 1 or values[-1] > max_value:
        msg = (
            f"{name} values must lie in 1..{max_value} for this data (at most min(n_cells, n_genes) - 1), "
            f"got {values[0]}..{values[-1]}; pass a smaller grid or use more cells."
        )
        raise ValueError(msg)
    return values
