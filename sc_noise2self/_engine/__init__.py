"""The calibration engine: validate, calibrate (MCV or the gene partition), refit at the choice.

Knows no concrete method (only the contract of :mod:`sc_noise2self.denoisers` and its registry)
and no AnnData: the public functions hand it a matrix and one :class:`Settings`.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from sklearn.base import clone

from .. import _logging as logg
from .._numerics.split import Stream, seed_sequence
from ..denoisers._base import Denoiser
from ..denoisers._registry import registered
from .blocks import Source, chunk_rows, is_blockwise
from .floor import count_floor
from .genes import run_genes
from .mcv import run_mcv
from .progress import add_steps, bar_label, progress_bar
from .refit import Output, finish, fit_at, output
from .result import (
    CalibrationResult,
    calibration_record,
    check_finite_loss,
    log_choice,
    package_version,
    seed_record,
    warn_about_choice,
)
from .settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tqdm import tqdm

    from .._types import ArrayLike, RandomState

__all__ = [
    "SWEEPS_ON",
    "Calibrated",
    "CalibrationResult",
    "Output",
    "Settings",
    "add_steps",
    "bar_label",
    "calibrate",
    "calibration_record",
    "chunk_rows",
    "count_floor",
    "finish",
    "fit_at",
    "grid_product",
    "is_blockwise",
    "log_choice",
    "method_name",
    "method_seed",
    "output",
    "package_version",
    "progress_bar",
    "resolve_method",
    "seed_record",
    "warn_about_choice",
]


def method_seed(random_state: RandomState) -> int | None:
    """Return the seed a method made from its name gets, drawn from ``random_state``'s own stream."""
    if random_state is None:
        return None
    return int(seed_sequence(random_state, Stream.METHOD).generate_state(1)[0])


def method_name(denoiser: object) -> str:
    """Return the name a method is registered under (for an unregistered class, its name in lowercase)."""
    for name, cls in registered().items():
        if type(denoiser) is cls:
            return name
    return type(denoiser).__name__.lower()


def resolve_method(method: str | Denoiser, random_state: RandomState, **params: Any) -> tuple[str, Denoiser]:
    """Return a fresh estimator: a registered name made with a seed from ``random_state`` (and ``params``), or a clone.

    The user's instance is never fitted: the engine fits its clone (same parameters, no state).
    """
    methods = registered()
    if isinstance(method, type):  # a class passes the protocol's check: its methods are there, unbound
        msg = f"method must be a Denoiser instance, got the class {method.__name__}; pass {method.__name__}() instead."
        raise ValueError(msg)
    if isinstance(method, str) and method in methods:
        name, denoiser = method, methods[method](random_state=method_seed(random_state), **params)
    elif not isinstance(method, str) and isinstance(method, Denoiser):
        name, denoiser = method_name(method), clone(method, safe=False)
    else:
        msg = f"method must be one of {sorted(methods)} or a Denoiser instance, got {method!r}."
        raise ValueError(msg)
    denoiser.check_params()  # settings out of range (or a missing dependency) are refused before any work
    return name, denoiser


class Calibrated(NamedTuple):
    """A calibration's data, the method it calibrated and its result, for the refit."""

    source: Source
    denoiser: Denoiser
    result: CalibrationResult
    totals: np.ndarray
    """Each kept cell's total count the depth normalisation divides by."""


def calibrate(
    X: ArrayLike,
    name: str,
    denoiser: Denoiser,
    settings: Settings,
    *,
    what: str,
    bar: tqdm,
    mask: np.ndarray | None = None,
) -> Calibrated:
    """Validate ``X`` (one pass), then calibrate ``denoiser`` over its grid.

    ``what`` names the matrix in messages. ``mask`` (``mask_var``, boolean over genes):
    calibrate on its genes only, each cell's depth normalised by its total over all genes; the
    output is projected onto ≥ 0 (and scored so) only if every gene is non-negative.
    """
    if is_blockwise(X):
        _check_blockwise(denoiser, name, settings.calibration)
    source = Source(X, what, empty=settings.empty, counts=settings.calibration == "mcv", columns=mask)
    _log_dropped(source.cells, source.genes)
    denoiser.check_data(source.shape, in_memory=source.in_memory)
    totals = source.totals if source.selection is None else source.selection.totals
    run = run_mcv if settings.calibration == "mcv" else run_genes
    result = run(source, denoiser, settings, method=name, totals=totals, bar=bar)
    for _ in range(SWEEPS_ON if settings.grid is None else 0):  # the default grid: on where the method says
        more = denoiser.grid_beyond(result.grid, result.best, source.shape)
        if more is None:
            break
        logg.info(f"    the choice {result.best} lies on the edge of the grid swept so far: sweeping on")
        extra = run(source, denoiser, replace(settings, grid=more), method=name, totals=totals, bar=bar)
        merged = np.concatenate([result.grid, extra.grid])
        result = result.merged(extra, denoiser.check_grid(merged, source.shape))
    check_finite_loss(result, denoiser)
    return Calibrated(source, denoiser, result, totals)


SWEEPS_ON = 2
"""How many times a calibration over a default grid may sweep on past it (``grid_beyond``; ``pp.pca``'s too)."""


def _check_blockwise(denoiser: Denoiser, name: str, calibration: str) -> None:
    """Refuse what cannot run block by block, before any pass over the data."""
    if calibration == "genes" and denoiser.tags.gene_partition == "masked":
        msg = (
            f"calibration='genes' trains method {name!r} by masking gene groups, which needs the data in memory; "
            "dask or backed input is calibrated with calibration='mcv'. Load the data first "
            "(`adata = adata.to_memory()`, or `.compute()` the dask array)."
        )
        raise ValueError(msg)
    if not denoiser.tags.blockwise:
        able = ", ".join(repr(n) for n, cls in registered().items() if cls.tags.blockwise)
        msg = (
            f"method {name!r} needs the data in memory; dask or backed input is calibrated block by block with "
            f"method={able}. Load the data first (`adata = adata.to_memory()`, or `.compute()` the dask array)."
        )
        raise ValueError(msg)


def _log_dropped(cells: np.ndarray | None, genes: np.ndarray | None) -> None:
    """One info line on the cells and genes left out for having no counts."""
    parts = [
        f"{int((~mask).sum())} {noun}{'' if int((~mask).sum()) == 1 else 's'}"
        for mask, noun in ((cells, "cell"), (genes, "gene"))
        if mask is not None
    ]
    if parts:
        logg.info(f"    left out {' and '.join(parts)} without any counts (their output is 0)")


def grid_product(**axes: Iterable[int]) -> np.ndarray:
    """All combinations of several settings: one row per combination, one column per setting, in order."""
    return np.array(list(itertools.product(*(list(v) for v in axes.values()))), dtype=np.int64)
