"""Is the exact depth conversion bound by its table reads? Today's scoring loop against a vectorised one.

Run: ``.venv/bin/python benchmarks/lookup_kernel.py`` (not CI). The MCV sweep scores every
entry at every grid value through the conversion table (``_numerics.loss._squares``: a gather
and a linear interpolation per entry). Today's loop checks each prediction for non-finite values with
a branch, which keeps LLVM from vectorising it. Here the same lookup is written branch-free (a
non-finite prediction still gives NaN, through ``value - value``) so that it vectorises with
gather instructions, and both are timed side by side on the same block (2,000 cells × 2,000
genes of float32 predictions, 20 passes, 8,192-entry table), with the table in float64 (as in
the package) and in float32. Prints ns per entry, the ratio, whether the new loop's assembly
holds gathers, and the largest relative difference of the losses.

Then one read per entry instead of two: the value and its slope packed as a complex64 pair,
and (not exact, a bound) the nearest entry without interpolation. Then: could a polynomial
held in registers replace the table? Chebyshev fits of real
conversion tables' rows (``build_conversion`` as an MCV split builds them), in ``y`` mapped to
``y / (y + a)``, with and without the row's linear asymptote removed; printed per scale and
degree, the best (over those variants) of the worst row's largest error relative to the row's
range.
"""

from __future__ import annotations

import re
import time

import numba
import numpy as np
from numpy.polynomial import chebyshev

from sc_noise2self._numerics.loss import _FAST, _squares
from sc_noise2self._numerics.transform import build_conversion


@numba.njit(inline="always", fastmath=_FAST)
def _lookup_branch_free(table, base, last, value, inv_step):
    pos = value * inv_step
    pos = pos if pos > 0.0 else 0.0  # NaN and values below 0 → 0
    top = last - 1.0
    j = int(pos if pos < top else top)  # +inf → the last interval
    lo = table[base + j]
    return lo + (pos - j) * (table[base + j + 1] - lo) + (value - value)  # NaN for a non-finite value


@numba.njit(parallel=True, fastmath=_FAST)
def _today(pred, target, flat, n, inv_step, passes, out):
    for c in numba.prange(pred.shape[0]):
        for _ in range(passes):
            out[c] += _squares(flat, n, 0, 0.0, pred[c], target[c], inv_step, True)


@numba.njit(parallel=True, fastmath=_FAST)
def _branch_free(pred, target, flat, n, inv_step, passes, out):
    for c in numba.prange(pred.shape[0]):
        for _ in range(passes):
            acc = 0.0
            for g in range(pred.shape[1]):
                d = _lookup_branch_free(flat, 0, n - 1, pred[c, g], inv_step) - target[c, g]
                acc += d * d
            out[c] += acc


@numba.njit(parallel=True, fastmath=_FAST)
def _paired(pred, target, pairs, n, inv_step, passes, out):
    # One read per entry: the row's value and its slope to the next entry packed as a
    # complex64 pair (real, imaginary), instead of two reads of neighbouring values.
    top = n - 2.0
    for c in numba.prange(pred.shape[0]):
        for _ in range(passes):
            acc = 0.0
            for g in range(pred.shape[1]):
                value = pred[c, g]
                pos = value * inv_step
                pos = pos if pos > 0.0 else 0.0
                j = int(pos if pos < top else top)
                pair = pairs[j]
                d = pair.real + (pos - j) * pair.imag + (value - value) - target[c, g]
                acc += d * d
            out[c] += acc


@numba.njit(parallel=True, fastmath=_FAST)
def _nearest(pred, target, flat, n, inv_step, passes, out):
    # One read, no interpolation (not exact: a bound on what any single read costs).
    last = n - 1.0
    for c in numba.prange(pred.shape[0]):
        for _ in range(passes):
            acc = 0.0
            for g in range(pred.shape[1]):
                value = pred[c, g]
                pos = value * inv_step
                pos = pos if pos > 0.0 else 0.0
                d = flat[int(pos if pos < last else last)] + (value - value) - target[c, g]
                acc += d * d
            out[c] += acc


def one_read(pred: np.ndarray, target: np.ndarray, n: int, inv_step: float, passes: int) -> None:
    """Today's loop against one read per entry: a packed (value, slope) pair, and the nearest entry."""
    flat = np.sqrt(np.linspace(0.0, 100.0, n))
    pairs = np.empty(n, np.complex64)
    pairs.real, pairs.imag = flat, np.r_[np.diff(flat), 0.0]
    entries = pred.size * passes
    times = {}
    for name, kernel, table in (("today", _today, flat), ("paired", _paired, pairs), ("nearest", _nearest, flat)):
        out = np.zeros(pred.shape[0])
        kernel(pred[:2], target[:2], table, n, inv_step, 1, out[:2])  # compile
        best = np.inf
        for _ in range(3):
            out[:] = 0.0
            start = time.perf_counter()
            kernel(pred, target, table, n, inv_step, passes, out)
            best = min(best, time.perf_counter() - start)
        times[name] = best / entries * 1e9
    print(
        f"one read per entry: today {times['today']:.3f} ns/entry, packed pair {times['paired']:.3f}, "
        f"nearest entry (not exact) {times['nearest']:.3f}"
    )


def main() -> None:
    rng = np.random.default_rng(0)
    n, cells, genes, passes = 8192, 2000, 2000, 20
    pred = (rng.random((cells, genes)) * 8).astype(np.float32)
    target = rng.random((cells, genes))
    inv_step = (n - 1) / 10.0
    entries = cells * genes * passes
    for dtype in (np.float64, np.float32):
        flat = np.sqrt(np.linspace(0.0, 100.0, n)).astype(dtype)
        seconds = {}
        losses = {}
        for kernel in (_today, _branch_free):
            out = np.zeros(cells)
            kernel(pred[:2], target[:2], flat, n, inv_step, 1, out[:2])  # compile
            out[:] = 0.0
            start = time.perf_counter()
            kernel(pred, target, flat, n, inv_step, passes, out)
            seconds[kernel.__name__] = time.perf_counter() - start
            losses[kernel.__name__] = out
        asm = "\n".join(_branch_free.inspect_asm().values())
        today, new = seconds["_today"], seconds["_branch_free"]
        diff = np.max(np.abs(losses["_today"] - losses["_branch_free"]) / losses["_today"])
        print(
            f"table {np.dtype(dtype).name}: today {today / entries * 1e9:.3f} ns/entry, branch-free "
            f"{new / entries * 1e9:.3f} ns/entry, ratio {today / new:.2f}; gathers in its assembly: "
            f"{len(re.findall(r'vgather', asm))}; largest relative loss difference {diff:.1e}"
        )
    one_read(pred, target, n, inv_step, passes)


def _worst_fit(table: np.ndarray, inv_step: float, degree: int, a: float, asymptote: bool) -> float:
    y = np.arange(table.shape[1]) / inv_step
    x = 2.0 * (y / (y + a)) / (y[-1] / (y[-1] + a)) - 1.0
    quarter = table.shape[1] // 4
    worst = 0.0
    for row in table[:: max(1, table.shape[0] // 8)]:
        slope = (row[-1] - row[-quarter]) / (y[-1] - y[-quarter]) if asymptote else 0.0
        g = row - slope * y
        fit = chebyshev.chebval(x, chebyshev.chebfit(x, g, degree))
        worst = max(worst, float(np.max(np.abs(fit - g)) / np.ptp(row)))
    return worst


def polynomial_fits() -> None:
    cases = {
        "sqrt, raw counts": ("sqrt", np.ones(10), False),
        "sqrt per 10,000": ("sqrt", np.geomspace(0.5, 40.0, 300), True),
        "log1p per 10,000": ("log1p", np.geomspace(0.5, 40.0, 300), True),
    }
    degrees = (8, 16, 24)
    print(f"\nChebyshev fits of conversion rows, worst relative error at degree {degrees}:")
    for name, (transform, scales, normalized) in cases.items():
        for depth, test_fraction in (("held-out depth", None), ("output depth", 1.0)):
            conversion = build_conversion(
                transform,
                fraction=0.9,
                train_scales=scales,
                normalized=normalized,
                max_rate=1.5 * 0.9 * 3000 + 20.0,
                loss="mse",
                test_fraction=test_fraction,
            )
            errors = [
                min(
                    _worst_fit(conversion.table, conversion.inv_step, degree, a, asymptote)
                    for a in (0.5, 2.0, 8.0)
                    for asymptote in (False, True)
                )
                for degree in degrees
            ]
            print(f"  {name}, {depth}: " + ", ".join(f"{e:.1e}" for e in errors))


if __name__ == "__main__":
    main()
    polynomial_fits()
