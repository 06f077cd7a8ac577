"""Molecular cross-validation: split each cell's molecules, fit on one part, score the other at the output's depth.

One loop for every input kind: each split is drawn block by block as the blocks are read (keyed by
cell and gene, so always the same draws), the denoiser is fitted on the training part
(:class:`~sc_noise2self.denoisers.Data`), and its sweep is scored against the
held-out part after the exact depth conversion (:mod:`sc_noise2self._engine.scoring`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import _logging as logg
from .._numerics.checks import check_fraction
from .._numerics.dispersion import plan_split, sample_cells
from .._numerics.loss import held_out_target, row_scorer, score_block
from .._numerics.rows import GROUP, ScoredCells
from .._numerics.split import Stream, seed_sequence, split_seed
from .._numerics.transform import build_conversion, cell_scales, output_depth, transform_counts
from ..denoisers._base import Block
from .blocks import training_data
from .progress import add_steps
from .result import CalibrationResult, resolve_n_splits
from .scoring import Passes, Scoring, sweep_losses, sweep_steps, total

if TYPE_CHECKING:
    from collections.abc import Callable

    from scipy import sparse
    from tqdm import tqdm

    from .._numerics.dispersion import SplitPlan
    from .._numerics.loss import RowScorer
    from .._numerics.transform import DepthConversion, OutputDepth
    from ..denoisers._base import Denoiser
    from .blocks import Source
    from .settings import Settings

__all__ = ["McvSetup", "mcv_setup", "run_mcv", "scored_cells"]


class McvSetup(NamedTuple):
    """What every split of one MCV calibration shares: per-cell scales and the depth conversion."""

    fraction: float
    train_scales: np.ndarray
    test_scales: np.ndarray
    conversion: DepthConversion
    """Training-depth predictions to the held-out part's depth, or to the output's (``depth="output"``)."""
    plan: SplitPlan
    output: OutputDepth | None
    """``depth="output"``: the map of held-out values to the output's depth."""
    output_scales: np.ndarray
    """Each cell's scale at full depth."""

    def target(
        self, test: sparse.csr_matrix, counts: sparse.csr_matrix, totals: np.ndarray, rows: slice, settings: Settings
    ) -> np.ndarray | sparse.csr_matrix:
        """Return the held-out target of the cells ``rows`` (``test``: their held-out part, ``counts``: all of it).

        Dense for the MSE (each block is scored at every grid value), the counts for the Poisson loss.
        """
        held_out = held_out_target(
            test, self.test_scales[rows], transform=settings.transform, loss=settings.loss, reused=True
        )
        if self.output is None:
            return held_out
        return self.output(held_out, self.plan.fit.dense_means(counts, totals), self.output_scales[rows])


def mcv_setup(
    totals: np.ndarray,
    max_count: float,
    sample: Callable[[np.ndarray], sparse.csr_matrix],
    settings: Settings,
) -> McvSetup:
    """Check the MCV settings against per-cell totals, plan the split and tabulate the exact depth conversion.

    ``sample(keep)`` returns the counts of the cells of the dispersion check (a boolean mask).
    """
    p = check_fraction(settings.split_fraction)
    median = float(np.median(totals))
    for part, share, advice in (("held-out", 1.0 - p, "Lower"), ("training", p, "Raise")):
        if share * median < 1.0:
            msg = (
                f"Too few molecules for a split: cells have a median of {median:g} counts, so the {part} part "
                f"(split_fraction={p}) would hold {share * median:.2g} per cell. {advice} split_fraction, or keep "
                "deeper cells (e.g. `sc.pp.filter_cells(adata, min_counts=...)`)."
            )
            raise ValueError(msg)
    keep = sample_cells(totals.size, settings.random_state)
    plan = plan_split(settings.sampling, settings.dispersion, sample(keep), totals[keep], settings.random_state)
    depth = settings.depth
    if depth is None:  # the output's depth wherever it is defined
        depth = "output" if settings.loss == "mse" and plan.fit is not None else "held_out"
    if depth == "output" and plan.fit is None:
        msg = (
            "depth='output' centres its expansion on each entry's expected count from a smooth fit, and these "
            "data are too small for it; use depth='held_out'."
        )
        raise ValueError(msg)
    target_sum, transform = settings.target_sum, settings.transform
    train_scales, output_scales = cell_scales(totals, target_sum, p), cell_scales(totals, target_sum)
    conversion = build_conversion(
        transform,
        fraction=p,
        train_scales=train_scales,
        normalized=target_sum is not None,
        max_rate=1.5 * p * float(max_count) + 20.0,  # covers every plausible training rate
        loss=settings.loss,
        test_fraction=1.0 if depth == "output" else None,
        dispersion=plan.split_dispersion,
    )
    output = None
    if depth == "output":
        output = output_depth(
            transform,
            fraction=p,
            scales=output_scales,
            normalized=target_sum is not None,
            max_rate=1.5 * float(max_count) + 20.0,
            dispersion=plan.split_dispersion,
        )
    return McvSetup(p, train_scales, cell_scales(totals, target_sum, 1.0 - p), conversion, plan, output, output_scales)


class _HeldOut(Scoring):
    """MCV's scoring: a block's prediction against its held-out part, after the depth conversion."""

    kind = "held_out"
    baseline = True  # the training part itself, scored the same way

    def __init__(self, setup: McvSetup, totals: np.ndarray, settings: Settings) -> None:
        self.setup, self.totals, self.settings = setup, totals, settings
        self.costly_targets = setup.output is not None  # the output-depth map costs more than scoring

    def target(self, part: Block, extra: Any) -> np.ndarray | sparse.csr_matrix:
        test, counts = extra
        return self.setup.target(test, counts, self.totals[part.rows], part.rows, self.settings)

    def score(self, part: Block, target: Any, pred: np.ndarray) -> np.ndarray:
        scales = self.setup.train_scales[part.rows]
        return score_block(pred, target, conversion=self.setup.conversion, train_scales=scales, loss=self.settings.loss)

    def scorer(self, part: Block, target: Any) -> RowScorer | None:
        if self.settings.loss != "mse":  # the Poisson loss is scored value by value
            return None
        return row_scorer(target, conversion=self.setup.conversion, train_scales=self.setup.train_scales[part.rows])


def scored_cells(n_cells: int, max_cells: int | None, random_state: object) -> ScoredCells:
    """Every cell, or for more than ``max_cells`` a seeded sample of whole groups of neighbouring cells.

    ``max_cells // GROUP`` of the fixed groups of :data:`~sc_noise2self._numerics.rows.GROUP`
    cells (at least one), drawn by position only: the same cells for any chunking or input kind.
    """
    n_groups = -(-n_cells // GROUP)
    take = 0 if max_cells is None else max(1, max_cells // GROUP)
    if max_cells is None or n_cells <= max_cells or take >= n_groups:
        return ScoredCells(n_cells)
    rng = np.random.default_rng(seed_sequence(random_state, Stream.SCORED, 0))
    return ScoredCells(n_cells, np.sort(rng.choice(n_groups, size=take, replace=False)))


def run_mcv(
    source: Source, denoiser: Denoiser, settings: Settings, *, method: str, totals: np.ndarray, bar: tqdm
) -> CalibrationResult:
    """Molecular cross-validation of ``denoiser`` over its grid on validated counts.

    ``totals``: each kept cell's total count that the depth normalisation divides by (all
    genes', when ``source`` holds only some of them).
    """
    setup = mcv_setup(totals, source.max_count, source.gather, settings)
    n_splits = resolve_n_splits(
        settings.n_splits,
        select=settings.select,
        median_count=float(np.median(source.totals)),
        split_fraction=settings.split_fraction,
    )
    shape = source.shape
    grid = denoiser.check_grid(denoiser.default_grid(shape) if settings.grid is None else settings.grid, shape)
    scoring = _HeldOut(setup, totals, settings)
    most = settings.max_scored_cells
    scored = scored_cells(shape[0], None if most is None else max(1, most // n_splits), settings.random_state)
    if scored.n_scored < shape[0]:
        logg.info(f"    scoring {scored.n_scored:,} of {shape[0]:,} cells (a seeded sample; max_scored_cells)")
    max_rate, n_entries = float(totals.max()) + 1.0, scored.n_scored * shape[1]

    losses, baseline, reports, cell_groups = np.zeros((n_splits, len(grid))), np.zeros(n_splits), [], []
    add_steps(bar, n_splits)  # the fits; the scoring steps once the sweep's loop order is known
    for i in range(n_splits):
        seed = split_seed(settings.random_state, Stream.MCV, i)

        def halves(counts: sparse.csr_matrix, rows: slice, seed: int = seed) -> tuple[Block, Any]:
            """Return the block's training values and counts, and (held-out part, all counts) to score against."""
            train, test = setup.plan.halves(counts, totals[rows], setup.fraction, seed, row_offset=rows.start)
            values = transform_counts(train, settings.transform, setup.train_scales[rows])
            return Block(rows, values, train), (test, counts)

        whole, whole_extra = halves(source.matrix(), slice(0, shape[0])) if source.in_memory else (None, None)
        data = training_data(
            source,
            lambda counts, rows, halves=halves: halves(counts, rows)[0],
            scales=setup.train_scales,
            transform=settings.transform,
            max_rate=max_rate,
            whole=whole,
            scored=scored.positions(),
        )
        sweep = denoiser.fit(data, grid)
        reports.append(sweep.report())
        passes = Passes(data, halves, whole_extra, lambda extra, rows: (extra[0][rows], extra[1][rows]), scored)
        if i == 0:
            add_steps(bar, n_splits * sweep_steps(sweep, passes, len(grid), settings.chunk_size))
        bar.update(1)
        group_sums = sweep_losses(
            sweep, passes, scoring, len(grid), bar=bar, n_entries=n_entries, chunk_size=settings.chunk_size
        )
        sums = total(group_sums)
        losses[i], baseline[i] = sums[:-1], sums[-1]
        cell_groups.append(group_sums[:, :-1] / n_entries)
    return CalibrationResult(
        method=method,
        calibration="mcv",
        grid_names=denoiser.grid_names(grid),
        grid=grid,
        loss=losses / n_entries,
        params=settings.params(
            n_splits=n_splits, depth="held_out" if setup.output is None else "output", scored_cells=scored.n_scored
        ),
        baseline=baseline / n_entries,
        select=settings.select,
        dispersion=setup.plan.dispersion,
        split_dispersion=setup.plan.split_dispersion,
        reports=reports,
        cell_group_loss=np.stack(cell_groups),
        n_cells=scored.n_scored,
    )
