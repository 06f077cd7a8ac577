"""Input checks shared by every entry point, each with a message that says what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ._types import ArrayLike

__all__ = [
    "as_canonical_csr",
    "check_counts",
    "check_fraction",
    "check_grid",
    "check_positive_int",
    "get_counts",
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
    return sparse.csr_matrix(X)


def check_counts(X: sparse.csr_matrix, *, what: str = "the input") -> None:
    """Raise ``ValueError`` unless ``X`` holds raw counts (finite, non-negative integers).

    Also rejects cells or genes without any counts, which carry no information for a
    count split and break per-cell normalisation.
    """
    data = X.data
    if data.dtype.kind not in "iuf":
        msg = f"{what} has dtype {data.dtype}; counts must be integers or floats."
        raise ValueError(msg)
    if data.dtype == np.float16:
        msg = f"{what} is float16, which cannot hold counts above 2048 exactly; cast it to float32 or int32 first."
        raise ValueError(msg)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
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
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        msg = f"{what} has shape {X.shape}; it needs at least one cell and one gene."
        raise ValueError(msg)
    cell_totals = np.asarray(X.sum(axis=1)).ravel()
    empty_cells = int(np.count_nonzero(cell_totals == 0))
    if empty_cells:
        msg = (
            f"{what} has {_plural(empty_cells, 'cell')} without any counts; remove them first, "
            "e.g. `sc.pp.filter_cells(adata, min_counts=1)`."
        )
        raise ValueError(msg)
    gene_totals = np.bincount(X.indices, weights=data, minlength=n_genes)
    empty_genes = int(np.count_nonzero(gene_totals == 0))
    if empty_genes:
        msg = (
            f"{what} has {_plural(empty_genes, 'gene')} without any counts; remove them first, "
            "e.g. `sc.pp.filter_genes(adata, min_counts=1)`."
        )
        raise ValueError(msg)


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
