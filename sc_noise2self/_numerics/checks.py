"""Input checks shared by every entry point, each with a message that says what to do."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from .._types import ArrayLike

__all__ = [
    "as_canonical_csr",
    "check_count_values",
    "check_dtype",
    "check_empty",
    "check_flag",
    "check_fraction",
    "check_int_grid",
    "check_known_chunks",
    "check_largest",
    "check_magnitude",
    "check_non_negative_int",
    "check_number",
    "check_positive_int",
    "check_seed",
    "check_target_sum",
    "nonzero_counts",
]


def as_canonical_csr(X: ArrayLike) -> sparse.csr_matrix:
    """CSR with sorted, summed indices; never modifies ``X`` and never densifies it.

    The canonical form fixes the order in which random draws meet the nonzeros
    (row-major), so the same seed gives the same split for CSR, CSC and dense input.
    """
    check_dtype(X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype)
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
    check_dtype(X.dtype)
    if X.ndim != 2:
        msg = f"Expected a 2-D cells × genes matrix, got an array of shape {X.shape}."
        raise ValueError(msg)
    return sparse.csr_matrix(X)


def check_dtype(dtype: np.dtype) -> None:
    """Refuse dtypes that cannot hold counts or values, saying how to cast."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:  # scipy.sparse has no float16
        msg = "The count matrix is float16, which cannot hold counts above 2048 exactly; cast it to float32 or int32."
        raise ValueError(msg)
    if dtype.kind == "b":
        msg = (
            "The matrix is boolean (detected or not), not counts; if it is what you mean to denoise, cast it "
            "with `.astype(np.float32)`."
        )
        raise ValueError(msg)
    if dtype.kind == "c":
        msg = "The matrix is complex; pass its real part as float (`np.real(X).astype(np.float32)`) if it holds counts."
        raise ValueError(msg)
    if dtype.kind not in "iuf":
        msg = (
            f"The matrix has dtype {dtype}; expected integer counts or floats. Convert it, e.g. "
            "`X.astype(np.float32)` (strings or objects must be parsed as numbers first)."
        )
        raise ValueError(msg)


_HOW_TO_PASS_COUNTS = (
    "pass the layer that holds raw counts, e.g. `layer='counts'` (keep one with "
    "`adata.layers['counts'] = adata.X.copy()` before normalising)"
)


MAX_COUNT = 2**53
"""Largest count accepted: float64 holds every integer up to it exactly."""


def _not_counts(data: np.ndarray) -> str | None:
    """Why finite values are not raw counts, or None when they are."""
    if data.size and data.min() < 0:
        return f"contains negative values ({int(np.count_nonzero(data < 0))} entries), so it is not raw counts"
    if data.dtype.kind == "f" and data.size and not np.array_equal(data, np.floor(data)):
        return "contains non-integer values, so it is not raw counts (log-normalised data?)"
    return None


def _too_large(data: np.ndarray) -> str | None:
    """Why counts cannot be split and computed with exactly, or None."""
    if not data.size:
        return None
    largest = data.max()
    if data.dtype == np.float32 and largest > 2**24:
        return (
            f"is float32 with counts up to {largest:.4g}, beyond 2**24, above which float32 cannot hold every "
            "count (nor the split halves) exactly; cast it to int32 or float64 first"
        )
    if largest > MAX_COUNT:
        return (
            f"holds counts up to {largest:.4g}, beyond 2**53, above which float64 (and the splits) cannot hold "
            "every count exactly; no sequencing count comes near it: check how the matrix was made"
        )
    return None


def check_count_values(
    X: sparse.csr_matrix, *, what: str = "the input", counts: bool = True, calibrating: bool = True
) -> bool:
    """Raise ``ValueError`` unless ``X`` is a non-empty finite numeric matrix.

    With ``counts=True`` it must also hold raw counts (non-negative integers); otherwise
    return whether it does. ``calibrating``: the message may point to the gene partition.
    """
    data = X.data
    check_dtype(data.dtype)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        msg = f"{what} contains {n_bad} NaN or infinite values; values must be finite."
        raise ValueError(msg)
    if X.shape[0] == 0 or X.shape[1] == 0:
        msg = f"{what} has shape {X.shape}; it needs at least one cell and one gene."
        raise ValueError(msg)
    problem = _not_counts(data)
    if counts and problem is None and (large := _too_large(data)):
        msg = f"{what} {large}."
        raise ValueError(msg)
    if counts and problem:
        other = "; or calibrate on these values with `calibration='genes', transform='none', target_sum=None`"
        msg = (
            f"{what} {problem}. Molecular cross-validation splits molecules and needs raw UMI counts: "
            f"{_HOW_TO_PASS_COUNTS}{other if calibrating else ''}."
        )
        raise ValueError(msg)
    return problem is None


def nonzero_counts(matrix: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Whether each cell has any count, and how many cells have a count of each gene.

    Explicitly stored zeros do not count.
    """
    nonzero = matrix.data != 0
    seen = np.concatenate([[0], np.cumsum(nonzero)])
    has_counts = seen[matrix.indptr[1:]] > seen[matrix.indptr[:-1]]
    return has_counts, np.bincount(matrix.indices[nonzero], minlength=matrix.shape[1])


def check_empty(
    keep_cells: np.ndarray, keep_genes: np.ndarray, *, what: str, empty: Literal["error", "drop"]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Raise for cells or genes without counts (``empty="error"``), or return the masks to keep (None: all)."""
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
        msg = (
            f"{what} has no counts at all (every value is 0): pass the layer that holds the raw counts, e.g. "
            "`layer='counts'`, or (with mask_var) select genes that have counts."
        )
        raise ValueError(msg)
    return (keep_cells if n_cells else None), (keep_genes if n_genes else None)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    example: str = "",
) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool or a string) within the bounds."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (low is None or (v > low if open_low else v >= low)) and (
            high is None or (v < high if open_high else v <= high)
        )
    if not ok:
        bounds = (
            f"{'(' if open_low else '['}{'-inf' if low is None else f'{low:g}'}, "
            f"{'inf' if high is None else f'{high:g}'}{')' if open_high else ']'}"
        )
        msg = f"{name} must be a finite number in {bounds}, got {value!r}{'; e.g. ' + example if example else ''}."
        raise ValueError(msg)
    return float(value)


def check_fraction(split_fraction: object) -> float:
    """Check that the training share of molecules lies strictly between 0 and 1."""
    return check_number(
        split_fraction, "split_fraction", low=0.0, high=1.0, open_low=True, open_high=True, example="0.9"
    )


MAX_DISPERSION = 1e3
"""Largest dispersion the negative-binomial split takes: the cost of its tables grows with it (seconds at 1,000)."""


def check_sampling(sampling: object, dispersion: object) -> tuple[str, float | None]:
    """Check the sampling model the split assumes and its dispersion (None: estimated from the data)."""
    if sampling not in ("poisson", "negative_binomial"):
        msg = (
            f"sampling must be 'poisson' (UMI counts: molecules sampled independently) or 'negative_binomial' "
            f"(read counts: each molecule amplified into several reads), got {sampling!r}."
        )
        raise ValueError(msg)
    if dispersion is None:
        return sampling, None
    if sampling != "negative_binomial":
        msg = (
            "dispersion is the variance-to-mean ratio of sampling='negative_binomial'; pass that too, or leave it None."
        )
        raise ValueError(msg)
    return sampling, check_number(dispersion, "dispersion", low=1.0, high=MAX_DISPERSION, example="2.5")


def check_depth(depth: object, *, calibration: str, loss: str) -> str | None:
    """Check the depth the MCV error is measured at against the calibration and loss it needs."""
    if depth is not None and (not isinstance(depth, str) or depth not in ("held_out", "output")):
        msg = f"depth must be 'held_out', 'output' or None (the output's where it applies), got {depth!r}."
        raise ValueError(msg)
    if depth == "output" and (calibration != "mcv" or loss != "mse"):
        msg = (
            "depth='output' carries the held-out half's values to the output's depth: it applies to "
            "calibration='mcv' with loss='mse'; pass depth=None (the default) or depth='held_out'."
        )
        raise ValueError(msg)
    return depth


MAX_TARGET_SUM = 1e12


def check_target_sum(target_sum: object) -> float | None:
    """None, or counts per cell to scale to: positive and at most :data:`MAX_TARGET_SUM` (float64 stays exact)."""
    if target_sum is None:
        return None
    return check_number(target_sum, "target_sum", low=0.0, high=MAX_TARGET_SUM, open_low=True, example="1e4 (scanpy)")


def check_magnitude(values: sparse.csr_matrix, *, what: str) -> None:
    """Refuse values so large that their sum of squares overflows float64 (the denoisers' products would)."""
    check_largest(float(np.abs(values.data).max()) if values.nnz else 0.0, values.nnz, what=what)


def check_largest(largest: float, nnz: int, *, what: str) -> None:
    """:func:`check_magnitude` from the largest absolute value and the number of stored values (blocks merged)."""
    limit = np.sqrt(np.finfo(np.float64).max / max(1, nnz))
    if largest > limit:
        msg = (
            f"{what} holds values up to {largest:.3g} after the transform; their squares overflow float64 in the "
            "denoiser's products. Scale the values down (or use a smaller target_sum)."
        )
        raise ValueError(msg)


def check_known_chunks(X: object, what: str) -> None:
    """Refuse a dask array whose chunk sizes are unknown (NaN), as after boolean indexing."""
    chunks = getattr(X, "chunks", None) if type(X).__module__.split(".")[0] == "dask" else None
    if chunks is not None and any(np.isnan(c) for axis in chunks for c in axis):
        msg = f"{what} is a dask array with unknown chunk sizes; call `X.compute_chunk_sizes()` first."
        raise ValueError(msg)


def check_seed(value: object, name: str = "random_state") -> object:
    """Return ``value`` if numpy can seed from it (None, an int >= 0, a Generator); raise otherwise."""
    if value is None or isinstance(value, np.random.Generator | np.random.BitGenerator | np.random.SeedSequence):
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        msg = f"{name} must be a non-negative int, a numpy Generator or None, got {value!r}."
        raise ValueError(msg)
    return value


def check_flag(value: object, name: str) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (numpy bools too); raise otherwise."""
    if not isinstance(value, bool | np.bool_):
        msg = f"{name} must be True or False, got {value!r}."
        raise ValueError(msg)
    return bool(value)


def _check_int(value: object, name: str, low: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        msg = f"{name} must be a {kind} integer, got {value!r}."
        raise ValueError(msg)
    return int(value)


def check_positive_int(value: object, name: str) -> int:
    """Check that ``value`` is a positive integer (``True``/``False`` are refused)."""
    return _check_int(value, name, 1, "positive")


def check_non_negative_int(value: object, name: str) -> int:
    """Check that ``value`` is an integer ≥ 0 (``True``/``False`` are refused)."""
    return _check_int(value, name, 0, "non-negative")


def check_int_grid(grid: ArrayLike, *, low: int, high: int, name: str) -> np.ndarray:
    """Return the sorted unique integers of a 1-D grid, each in ``low..high``.

    For a denoiser's ``check_grid``: anything else (not integers, empty, nested, out of range)
    raises a ``ValueError`` that names the grid ``name`` and the range the data allow.
    """
    if high < low:
        msg = f"This data is too small for any {name}: it needs at least {low} and allows at most {high}."
        raise ValueError(msg)
    msg = f"The grid of {name} must be a non-empty 1-D sequence of integers, got {grid!r}."
    try:
        values = np.asarray(grid)
    except ValueError:  # ragged nesting: numpy's own message would not say which grid
        raise ValueError(msg) from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(msg)
    if values.dtype.kind not in "iuf" or (
        values.dtype.kind == "f" and not (np.isfinite(values).all() and np.array_equal(values, np.round(values)))
    ):
        msg = f"The grid of {name} must hold integers, got {grid!r}."
        raise ValueError(msg)
    values = np.unique(np.clip(values, -(2**62), 2**62).astype(np.int64))
    if values[0] < low or values[-1] > high:
        msg = (
            f"{name} values must lie in {low}..{high} for this data, got {values[0]}..{values[-1]}; "
            "pass a smaller grid or use more cells or genes."
        )
        raise ValueError(msg)
    return values
