"""Per-cell depth normalisation, variance-stabilising transforms, and the exact depth conversion.

A denoiser fitted on the training half predicts ``E[T(s' x')]`` with ``x' ~ Poisson(p λ)``.
The held-out half has rate ``(1 - p) λ``; for a non-linear ``T`` a plain rescaling of the
prediction is biased (Jensen). The exact conversion tabulates ``F_s(μ) = E[T(s X)]`` for
``X ~ Poisson(μ)``, inverts it at the training depth to get the rate ``μ'``, and evaluates
``F`` at the held-out rate ``r μ'`` with ``r = (1 - p) / p``.

With ``target_sum``, cells are scaled by ``s = target_sum / (fraction · N_c)`` where ``N_c``
is the cell's total count in the full data, so both halves (and the full data, fraction 1)
share the same expected normalised value ``target_sum · λ / N_c`` while each keeps its own,
known Poisson depth.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import numba
import numpy as np
from scipy import sparse
from scipy.special import gammaln, xlogy

from .checks import check_target_sum
from .machine import blas_threads

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._types import LossName, TransformName

__all__ = [
    "TRANSFORMS",
    "DepthConversion",
    "ExpectedValues",
    "OutputDepth",
    "ToCounts",
    "build_conversion",
    "cell_scales",
    "expected_transform",
    "expected_values",
    "output_depth",
    "to_counts",
    "transform_counts",
    "transformed",
]

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sqrt": np.sqrt,
    "log1p": np.log1p,
    "none": np.asarray,
}


_N_RATE_GRID = 2048  # rate grid, evenly spaced in log1p(μ)
_N_VALUE_GRID = 8192  # prediction grid of the conversion table, evenly spaced
_N_SCALE_ROWS = 129  # per-cell scale rows when cells are depth-normalised


def check_transform(transform: str) -> str:
    if transform not in TRANSFORMS:
        msg = f"transform must be one of {sorted(TRANSFORMS)}, got {transform!r}."
        raise ValueError(msg)
    return transform


def cell_scales(totals: np.ndarray, target_sum: float | None, fraction: float = 1.0) -> np.ndarray:
    """Multiplier per cell applied to counts before the transform.

    ``None`` means no depth normalisation (all ones). Otherwise each cell is scaled to
    ``target_sum`` expected counts at the given sampling ``fraction`` of its molecules.
    """
    totals = np.asarray(totals, dtype=np.float64)
    target_sum = check_target_sum(target_sum)
    if target_sum is None:
        return np.ones_like(totals)
    return target_sum / (fraction * totals)


def transform_counts(X: sparse.csr_matrix, transform: TransformName, scales: np.ndarray) -> sparse.csr_matrix:
    """``T(s_c · x)`` for CSR counts, as float64 CSR with the same sparsity (T(0) = 0)."""
    data = X.data.astype(np.float64) * np.repeat(scales, np.diff(X.indptr))
    return sparse.csr_matrix((TRANSFORMS[transform](data), X.indices, X.indptr), shape=X.shape)


def transformed(
    X: sparse.csr_matrix,
    transform: TransformName,
    target_sum: float | None,
    fraction: float = 1.0,
    totals: np.ndarray | None = None,
) -> sparse.csr_matrix:
    """``T(s · x)`` of counts (or values) with the per-cell scale for ``target_sum`` at ``fraction``.

    ``totals`` are the cells' total counts the scale divides by: by default those of ``X``,
    or, when ``X`` holds some of the genes, those over all genes (as scanpy normalises).
    """
    totals = np.asarray(X.sum(axis=1) if totals is None else totals, dtype=np.float64).ravel()
    return transform_counts(X, transform, cell_scales(totals, target_sum, fraction))


_EXACT_MAX_RATE = 400.0  # rates up to here are summed over every count; above, over a window of nodes
_WINDOW_SD = 12.0  # the window of a large rate: μ ± 12 sd
_N_NODES = 97  # nodes across it, a quarter of an sd apart


def _log_poisson_large(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``x log μ - μ - lgamma(x + 1)`` for ``x, μ > 100`` without the cancellation of its large terms.

    Written as ``-μ ((1 + d) log1p(d) - d) - log(2π x) / 2 - stirlerr(x)`` with
    ``d = x / μ - 1`` and Stirling's series for ``stirlerr``, accurate to float64 rounding.
    """
    d = (x - mu) / mu
    stirlerr = 1 / (12 * x) - 1 / (360 * x**3) + 1 / (1260 * x**5)
    return -mu * ((1 + d) * np.log1p(d) - d) - 0.5 * np.log(2 * np.pi * x) - stirlerr


_NB_BLOCK_ELEMENTS = 2**21  # rates × counts of one block of the negative-binomial sums


def _expected_negative_binomial(
    mu: np.ndarray, scales: np.ndarray, func: Callable[[np.ndarray], np.ndarray], dispersion: float
) -> np.ndarray:
    """``E[T(s X)]`` for ``X ~ NB`` with mean ``μ`` and variance ``φ μ``: size ``μ / (φ - 1)``, ``π = 1 / φ``.

    Summed over every count from ``μ - 12 sd`` to ``μ + 12 sd + 50 φ`` (``sd = √(φ μ)``; the
    tail falls as ``(1 - 1/φ)^x``, so the rest is below 1e-20), in blocks of rates.
    """
    out = np.zeros((scales.size, mu.size))  # T(0) = 0 for μ = 0
    order = np.argsort(mu)
    order = order[mu[order] > 0]
    log_keep, log_leave = -np.log(dispersion), np.log1p(-1.0 / dispersion)
    start = 0
    while start < order.size:
        lo = max(0, int(np.floor(mu[order[start]] - 12 * np.sqrt(dispersion * mu[order[start]]))))
        stop = start + 1
        while stop < order.size:  # grow the block while its counts × rates stay small
            m = mu[order[stop]]
            hi = int(np.ceil(m + 12 * np.sqrt(dispersion * m) + 50 * dispersion))
            if (stop + 1 - start) * (hi - lo + 1) > _NB_BLOCK_ELEMENTS:
                break
            stop += 1
        block = order[start:stop]
        m = mu[block][:, None]
        hi = int(np.ceil(m.max() + 12 * np.sqrt(dispersion * m.max()) + 50 * dispersion))
        k = np.arange(lo, hi + 1, dtype=np.float64)
        size = m / (dispersion - 1.0)
        pmf = np.exp(gammaln(k + size) - gammaln(size) - gammaln(k + 1) + size * log_keep + k * log_leave)
        out[:, block] = (pmf @ func(np.outer(k, scales))).T
        start = stop
    return out


def expected_transform(
    mu: np.ndarray, scales: np.ndarray, transform: TransformName, dispersion: float = 1.0
) -> np.ndarray:
    """``E[T(s X)]`` for ``X ~ Poisson(μ)``, one row per scale ``s``, one column per rate ``μ``.

    With ``dispersion`` ``φ > 1``, ``X`` is negative binomial with variance ``φ μ`` instead
    (:func:`_expected_negative_binomial`).

    Rates up to 400 sum the Poisson mass over every count within ``μ ± 10 sd`` (the rest
    is below 1e-20), in blocks of rates. Larger rates (sd ≥ 20) integrate the same sum's
    smooth continuation, ``exp(x log μ - μ - lgamma(x + 1)) T(s x)``, by the trapezoid rule
    on 97 nodes over ``μ ± 12 sd``: by Poisson summation the sum over integers and the
    integral differ by ``O(exp(-2π² μ))``, and the trapezoid rule's error is
    ``O(exp(-2π² (sd / step)²))``, both far below float64 rounding. So time and memory
    do not grow with the largest count (``tests/test_transform.py`` checks the two forms agree).
    """
    mu = np.asarray(mu, dtype=np.float64)
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    # One BLAS thread: a threaded product sums in an order that depends on the thread count,
    # and these tables decide the calibration's losses to the last bit.
    with blas_threads(1):
        if dispersion > 1.0:
            return _expected_negative_binomial(mu, scales, TRANSFORMS[transform], dispersion)
        return _expected_poisson(mu, scales, TRANSFORMS[transform])


def _expected_poisson(mu: np.ndarray, scales: np.ndarray, func: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    out = np.empty((scales.size, mu.size))
    order = np.argsort(mu)
    small = order[mu[order] <= _EXACT_MAX_RATE]
    for block in np.array_split(small, max(1, small.size // 128)) if small.size else []:
        m = mu[block]
        lo = max(0, int(np.floor(m.min() - 10 * np.sqrt(m.min()) - 10)))
        hi = int(np.ceil(m.max() + 10 * np.sqrt(m.max()) + 30))
        k = np.arange(lo, hi + 1, dtype=np.float64)
        pmf = np.exp(xlogy(k, m[:, None]) - m[:, None] - gammaln(k + 1))
        out[:, block] = (pmf @ func(np.outer(k, scales))).T
    large = order[mu[order] > _EXACT_MAX_RATE]
    offsets = np.linspace(-_WINDOW_SD, _WINDOW_SD, _N_NODES)
    weights = np.full(_N_NODES, offsets[1] - offsets[0])
    weights[[0, -1]] /= 2
    for block in np.array_split(large, max(1, large.size // 128)) if large.size else []:
        m = mu[block][:, None]
        x = m + np.sqrt(m) * offsets  # rates × nodes, all above μ - 12 sd > 0
        density = np.exp(_log_poisson_large(x, m)) * (np.sqrt(m) * weights)
        out[:, block] = np.einsum("rn,rns->sr", density, func(x[:, :, None] * scales))
    return out


def _rows_for(row_scales: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower row index and interpolation weight in ``log s`` for each cell, rows evenly spaced in ``log s``."""
    scales = np.asarray(scales, dtype=np.float64)
    if row_scales.size == 1:
        return np.zeros(scales.size, dtype=np.int64), np.zeros(scales.size)
    log_rows = np.log(row_scales)
    pos = (np.log(scales) - log_rows[0]) / (log_rows[1] - log_rows[0])
    pos = np.clip(pos, 0, row_scales.size - 1)
    idx = np.minimum(pos.astype(np.int64), row_scales.size - 2)
    return idx, pos - idx


def _scale_rows(scales: np.ndarray) -> np.ndarray:
    """Scale rows of a table: one, or :data:`_N_SCALE_ROWS` evenly spaced in ``log s`` over the cells' range."""
    s_lo, s_hi = float(np.min(scales)), float(np.max(scales))
    return np.array([s_lo]) if s_hi <= s_lo * (1 + 1e-12) else np.geomspace(s_lo, s_hi, _N_SCALE_ROWS)


_REBUILDABLE: dict[str, tuple[Callable[..., Any], str]] = {}
"""Builders whose tables carry a recipe (:func:`_rebuildable`), by name: the builder and its scales argument."""


def _rebuildable(scales: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give every table the decorated builder returns its ``recipe``: the call that built it.

    The cells' ``scales`` argument enters the recipe as its range, all that a table's scale
    rows depend on (:func:`_scale_rows`). A table pickles as its recipe (bytes, not its
    megabytes) and is rebuilt once per process by :func:`_build_once`, to the same bytes:
    dask sends the tables to every worker with the scoring tasks.
    """

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(builder)
        def build(transform: TransformName, **kwargs: Any) -> Any:
            values = np.asarray(kwargs[scales], dtype=np.float64)
            span = (float(values.min()), float(values.max()))
            recipe = (builder.__name__, transform, tuple(sorted({**kwargs, scales: span}.items())))
            return builder(transform, **kwargs)._replace(recipe=recipe)

        _REBUILDABLE[builder.__name__] = (build, scales)
        return build

    return decorate


@functools.lru_cache(maxsize=8)
def _build_once(recipe: tuple[Any, ...]) -> Any:
    """Return the table a recipe describes, built once per process (how a table unpickles)."""
    name, transform, arguments = recipe
    build, scales = _REBUILDABLE[name]
    kwargs = dict(arguments)
    kwargs[scales] = np.array(kwargs[scales])
    return build(transform, **kwargs)


def _reduce_table(table: Any) -> tuple[Any, ...]:
    """``__reduce__`` of a table: its recipe when it has one, else its fields."""
    if table.recipe is None:
        return type(table), tuple(table)
    return _build_once, (table.recipe,)


class DepthConversion(NamedTuple):
    """Lookup table from a training-depth prediction to the held-out scale, per cell scale.

    ``table[i, j]`` is the converted value of prediction ``j / inv_step`` for a cell whose
    training scale is ``row_scales[i]``: the expected transformed held-out value (MSE) or
    the held-out Poisson rate (Poisson loss). Cells between two rows are interpolated in
    ``log s``.

    It pickles as its ``recipe`` (bytes, not the table's megabytes) and is rebuilt once per
    process, to the same bytes: dask sends it to every worker with the scoring tasks.
    """

    table: np.ndarray
    inv_step: float
    row_scales: np.ndarray
    recipe: tuple[Any, ...] | None = None
    """The call that built it (:func:`_rebuildable`)."""

    __reduce__ = _reduce_table

    def rows_for(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower row index and interpolation weight in ``log s`` for each cell."""
        return _rows_for(self.row_scales, scales)

    def __call__(self, pred: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Convert predictions (cells × genes) for cells with training ``scales`` (NumPy path)."""
        pred = np.asarray(pred, dtype=np.float64)
        idx, weight = self.rows_for(scales)
        n = self.table.shape[1]
        pos = np.maximum(pred * self.inv_step, 0.0)
        j = np.minimum(pos.astype(np.int64), n - 2)
        frac = pos - j

        def row_value(r: np.ndarray) -> np.ndarray:
            lo = self.table[r[:, None], j]
            return lo + frac * (self.table[r[:, None], j + 1] - lo)

        out = row_value(idx)
        if self.row_scales.size > 1:
            out += weight[:, None] * (row_value(idx + 1) - out)
        return out


@_rebuildable("train_scales")
def build_conversion(
    transform: TransformName,
    *,
    fraction: float,
    train_scales: np.ndarray,
    normalized: bool,
    max_rate: float,
    loss: LossName,
    test_fraction: float | None = None,
    dispersion: float = 1.0,
) -> DepthConversion:
    """Tabulate the exact train→test conversion for one split.

    Parameters
    ----------
    transform
        Transform applied to scaled counts.
    fraction
        Expected share of molecules in the training half, ``p``.
    train_scales
        Per-cell multipliers of the training half.
    normalized
        Whether cells are depth-normalised (then the held-out scale is ``s' p / (1 - p)``,
        otherwise both halves use the raw counts).
    max_rate
        Largest training-half rate the table must cover; predictions beyond it are
        extrapolated linearly.
    loss
        ``"mse"``: table of expected transformed held-out values. ``"poisson"``: table of
        held-out Poisson rates on the count scale.
    test_fraction
        Expected share of molecules in the held-out half, ``1 - p`` unless given.
    dispersion
        ``φ``: both halves are negative binomial with variance ``φ`` times their mean (the
        halves of :func:`~sc_noise2self._split.beta_binomial_split`); 1 is Poisson.
    """
    q = 1.0 - fraction if test_fraction is None else test_fraction
    ratio = q / fraction
    row_scales = _scale_rows(train_scales)

    u = np.linspace(0.0, np.log1p(max_rate * max(1.0, ratio)), _N_RATE_GRID)
    mu = np.expm1(u)
    f_train = expected_transform(mu, row_scales, transform, dispersion)
    y = np.linspace(0.0, f_train[:, -1].max(), _N_VALUE_GRID)
    # Rate of the training half for each prediction, per row (F is increasing in μ).
    train_rate = np.expm1(np.stack([np.interp(y, f_row, u) for f_row in f_train]))
    test_rate = ratio * train_rate
    if loss == "poisson":
        table = test_rate
    else:
        test_scales = row_scales / ratio if normalized else row_scales
        f_test = expected_transform(mu, test_scales, transform, dispersion)
        table = np.stack([np.interp(np.log1p(r), u, f_row) for r, f_row in zip(test_rate, f_test, strict=True)])
    inv_step = (_N_VALUE_GRID - 1) / y[-1]
    if not (np.isfinite(table).all() and np.isfinite(inv_step) and inv_step > 0):
        msg = (
            f"The depth conversion for transform={transform!r} overflows at these counts and scales; "
            "use a smaller target_sum (e.g. 1e4)."
        )
        raise ValueError(msg)
    return DepthConversion(table=table, inv_step=inv_step, row_scales=row_scales)


class OutputDepth(NamedTuple):
    """Held-out values carried to the output's depth: ``t̃ = A(m) + R(m) · t''`` per entry.

    A denoiser's output estimates ``G(λ) = E[T(s X)]``, ``X`` at the data's full depth; the
    held-out value ``t'' = T(s'' x'')`` estimates ``H(λ) = E[T(s'' X'')]`` at the held-out
    part's. No unbiased map from ``t''`` to ``G(λ)`` exists with useful variance, so it is
    expanded to first order around ``m``, the entry's expected count from a smooth fit
    that leaves the entry out: ``t̃ = G(m) + R(m) (t'' - H(m))`` with ``R = G' / H'``. Then
    ``E[t̃] = G(λ) + O((λ - m)²)``, and ``t̃`` is linear in ``t''`` with coefficients that do
    not depend on the setting, so its noise adds the same constant to every setting's loss.
    ``offset`` is ``A = G - R H`` and ``slope`` is ``R``, tabulated on an even grid in
    ``log1p(m)`` for rows of the output's scale ``s`` (interpolated in ``log s``).
    """

    offset: np.ndarray
    slope: np.ndarray
    inv_step: float
    row_scales: np.ndarray
    recipe: tuple[Any, ...] | None = None
    """The call that built it (:func:`_rebuildable`); it pickles as this."""

    __reduce__ = _reduce_table

    def __call__(self, target: np.ndarray, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Map dense held-out values (cells × genes) with expected counts ``means``; cells at output ``scales``."""
        target = np.ascontiguousarray(target, dtype=np.float64)
        if target.shape != np.shape(means) or target.shape[0] != np.size(scales):  # the kernel does not check bounds
            msg = (
                f"held-out values {target.shape}, expected counts {np.shape(means)} and {np.size(scales)} "
                "scales disagree."
            )
            raise ValueError(msg)
        return _table_at_rates(
            self.offset, means, scales, self.inv_step, self.row_scales, slope=self.slope, target=target
        )


class ExpectedValues(NamedTuple):
    """Rates → ``E[T(s X)]``, ``X ~ Poisson(μ)``: the transformed value of a predicted rate ``μ``.

    What a denoiser that predicts rates (the autoencoder with a count likelihood) outputs, so
    that its output reads like every other method's and the depth conversion inverts it back
    to ``μ``. Tabulated on an even grid in ``log1p(μ)`` for rows of the cells' scales
    (interpolated in ``log s``); the identity transform is computed exactly (``s μ``).
    """

    transform: str
    table: np.ndarray
    inv_step: float
    row_scales: np.ndarray

    def __call__(self, rates: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Return ``E[T(s X)]`` for ``rates`` (cells × genes) of cells with ``scales``."""
        rates = np.asarray(rates, dtype=np.float64)
        if self.transform == "none":
            return rates * np.asarray(scales, dtype=np.float64)[:, None]
        return _table_at_rates(self.table, rates, scales, self.inv_step, self.row_scales)

    def from_logits(self, logits: np.ndarray, library: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Return ``E[T(s X)]`` (float32) at the rates ``library · softmax(logits)`` of each cell (row).

        What a count decoder outputs: the softmax (in float64, after subtracting the row's
        largest logit), the rates and their lookup in one compiled parallel pass over the cells.
        """
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        library = np.asarray(library, dtype=np.float64)
        scales = np.asarray(scales, dtype=np.float64)
        if logits.ndim != 2 or library.shape != (logits.shape[0],) or scales.shape != library.shape:
            msg = f"logits {logits.shape}, {library.size} library sizes and {scales.size} scales disagree."
            raise ValueError(msg)
        out = np.empty(logits.shape, dtype=np.float32)
        if out.size == 0:  # the kernel reads each row's first logit
            return out
        idx, weight = self.cell_rows(scales)
        table = _NO_SLOPE if self.transform == "none" else self.table  # empty: the identity
        _softmax_lookup(logits, library, idx, weight, table, self.inv_step, out)
        return out

    def cell_rows(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's lower table row and weight between rows; for the identity, row 0 and the scale itself.

        The identity's value is ``s μ``, so its "weight" is the cell's scale ``s``.
        """
        scales = np.asarray(scales, dtype=np.float64)
        if self.transform == "none":
            return np.zeros(scales.size, dtype=np.int64), scales
        return _rows_for(self.row_scales, scales)


def _table_at_rates(
    table: np.ndarray,
    rates: np.ndarray,
    scales: np.ndarray,
    inv_step: float,
    row_scales: np.ndarray,
    *,
    slope: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> np.ndarray:
    """Interpolate ``table`` (scale rows × an even ``log1p(μ)`` grid) at ``rates`` (cells × genes).

    Each cell's row is placed by its scale (linear in ``log s``), each rate in the row
    linearly in ``log1p(μ)``; rates past the grid take its last entry. With ``slope`` (a
    table on the same grid) and ``target`` (float64, the shape of ``rates``), returns
    ``table(rate) + slope(rate) * target`` instead. One compiled parallel pass over the cells.
    """
    idx, weight = _rows_for(row_scales, scales)
    out = np.empty(np.shape(rates))
    _rate_lookup(
        np.ascontiguousarray(rates, dtype=np.float64),
        idx,
        weight,
        np.ascontiguousarray(table),
        inv_step,
        out,
        _NO_SLOPE if slope is None else np.ascontiguousarray(slope),
        _NO_SLOPE if target is None else target,
    )
    return out


_NO_SLOPE = np.zeros((0, 0))


@numba.njit(cache=True, inline="always")
def _grid_position(rate, inv_step, n):
    # Index and fraction of ``log1p(rate)`` on a table row's even grid (clamped to the row).
    pos = min(np.log1p(max(rate, 0.0)) * inv_step, n - 1.0)
    j = min(int(pos), n - 2)
    return j, pos - j


@numba.njit(cache=True, inline="always")
def _table_value(table, r, w, several, j, frac):
    # Linear in the grid, then linear between scale rows ``r`` and ``r + 1`` with weight ``w``.
    value = table[r, j] + frac * (table[r, j + 1] - table[r, j])
    if several:
        upper = table[r + 1, j] + frac * (table[r + 1, j + 1] - table[r + 1, j])
        value += w * (upper - value)
    return value


@numba.njit(cache=True, parallel=True)
def _rate_lookup(rates, idx, weight, table, inv_step, out, slope, target):  # pragma: no cover - compiled
    # ``table(rate)``, or with a non-empty ``slope``, ``table(rate) + slope(rate) * target``:
    # one grid position per entry for both tables.
    n = table.shape[1]
    several = table.shape[0] > 1
    linear = slope.size > 0
    for i in numba.prange(rates.shape[0]):
        r, w = idx[i], weight[i]
        for g in range(rates.shape[1]):
            j, frac = _grid_position(rates[i, g], inv_step, n)
            value = _table_value(table, r, w, several, j, frac)
            if linear:
                value = value + _table_value(slope, r, w, several, j, frac) * target[i, g]
            out[i, g] = value


@numba.njit(cache=True, parallel=True)
def _softmax_lookup(logits, library, idx, weight, table, inv_step, out):  # pragma: no cover - compiled
    # Per cell: shares exp(l - max l) in float64, rates library · share / sum, then the table at
    # each rate; an empty table is the identity transform, whose value is the scale (``weight``)
    # times the rate.
    n = table.shape[1]
    several = table.shape[0] > 1
    identity = table.size == 0
    for i in numba.prange(logits.shape[0]):
        row = logits[i]
        top = row[0]
        for g in range(1, row.size):
            top = max(top, row[g])
        shares = np.empty(row.size)
        total = 0.0
        for g in range(row.size):
            shares[g] = np.exp(np.float64(row[g] - top))
            total += shares[g]
        factor = library[i] / total
        r, w = idx[i], weight[i]
        for g in range(row.size):
            rate = shares[g] * factor
            if identity:
                out[i, g] = rate * w
            else:
                j, frac = _grid_position(rate, inv_step, n)
                out[i, g] = _table_value(table, r, w, several, j, frac)


def expected_values(transform: TransformName, *, scales: np.ndarray, max_rate: float) -> ExpectedValues:
    """Tabulate :class:`ExpectedValues` for cells with these ``scales`` and rates up to ``max_rate``."""
    row_scales = _scale_rows(scales)
    if transform == "none":
        return ExpectedValues(transform, np.zeros((1, 2)), 1.0, row_scales)
    u = np.linspace(0.0, np.log1p(max_rate), _N_RATE_GRID)
    table = expected_transform(np.expm1(u), row_scales, transform)
    return ExpectedValues(transform, table, (_N_RATE_GRID - 1) / u[-1], row_scales)


@_rebuildable("scales")
def output_depth(
    transform: TransformName,
    *,
    fraction: float,
    scales: np.ndarray,
    normalized: bool,
    max_rate: float,
    dispersion: float = 1.0,
) -> OutputDepth:
    """Tabulate :class:`OutputDepth` for one split's held-out part (share ``1 - fraction``).

    ``scales``: each cell's scale at full depth (the output's); the held-out part's is
    ``s / (1 - p)`` when cells are depth-normalised, ``s`` otherwise. Rates up to ``max_rate``
    (full depth); beyond, the last entry. ``dispersion``: the counts' variance over their
    mean, as in :func:`build_conversion`.
    """
    q = 1.0 - fraction
    row_scales = _scale_rows(scales)
    u = np.linspace(0.0, np.log1p(max_rate), _N_RATE_GRID)
    mu = np.expm1(u)
    full = expected_transform(mu, row_scales, transform, dispersion)
    held_out = expected_transform(q * mu, row_scales / q if normalized else row_scales, transform, dispersion)
    slope = np.gradient(full, u, axis=1) / np.gradient(held_out, u, axis=1)  # G' / H', both in u
    offset = full - slope * held_out
    if not (np.isfinite(slope).all() and np.isfinite(offset).all()):
        msg = (
            f"The output-depth map for transform={transform!r} overflows at these counts and scales; "
            "use a smaller target_sum (e.g. 1e4), or depth='held_out'."
        )
        raise ValueError(msg)
    return OutputDepth(offset, slope, (_N_RATE_GRID - 1) / u[-1], row_scales)


class ToCounts(NamedTuple):
    """Denoised values on the transformed scale → the expected count of each gene at each cell's depth.

    A prediction ``ŷ ≈ E[T(s X)]``, ``X ~ Poisson(μ)``, is mapped to ``μ`` by inverting the
    tabulated ``F_s(μ) = E[T(s X)]`` for the cell's own scale ``s`` (exact, unlike ``expm1``
    or squaring, which are biased by Jensen's inequality); predictions below ``F_s(0) = 0``
    give 0, or with a ``floor`` the share ``floor`` of the entry's null rate, its cell's
    depth times its gene's share of all counts.
    """

    inversion: DepthConversion
    scales: np.ndarray
    """Per-cell scale of the full data (1 for cells left out; their output is 0)."""
    floor: float = 0.0
    depths: np.ndarray | None = None
    """Per-cell depth (0 for cells left out), for the floor."""
    shares: np.ndarray | None = None
    """Per-gene share of all counts (of the columns the map is applied to), for the floor."""

    def __call__(self, values: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
        """Return the expected counts (float32) for ``values`` of the cells ``rows``."""
        rates = np.maximum(self.inversion(values, self.scales[rows]), 0.0)
        if self.floor > 0:
            rates = np.maximum(rates, self.floor * np.outer(self.depths[rows], self.shares))
        return rates.astype(np.float32)

    def with_floor(self, floor: float, shares: np.ndarray) -> ToCounts:
        """Return this map with expected counts floored at ``floor`` times the null rates (``shares`` per column)."""
        return self._replace(floor=float(floor), shares=np.asarray(shares, dtype=np.float64))


def to_counts(
    transform: TransformName, totals: np.ndarray, target_sum: float | None, max_count: float, cells: np.ndarray | None
) -> ToCounts:
    """Return the map to expected counts for cells with these totals (kept cells; ``cells`` places them)."""
    scales = cell_scales(totals, target_sum)
    inversion = build_conversion(
        transform,
        fraction=1.0,
        test_fraction=1.0,
        train_scales=scales,
        normalized=False,
        max_rate=1.5 * float(max_count) + 20.0,
        loss="poisson",  # the table of rates, here at the data's own depth
    )
    full = np.ones(cells.size) if cells is not None else scales
    depths = np.asarray(totals, dtype=np.float64) if cells is None else np.zeros(cells.size)
    if cells is not None:
        full[cells], depths[cells] = scales, totals
    return ToCounts(inversion, full, depths=depths)
