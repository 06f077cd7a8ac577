"""Scoring a sweep over blocks of cells, in whichever loop order it offers: one loop for every calibration.

:func:`sweep_losses` sums a loss per grid value (and, for MCV, of no denoising) over the cells
scored (every cell, or the groups of a :class:`~sc_noise2self._numerics.rows.ScoredCells` sample).
A sweep in block order is scored one block at a time — on dask's workers for blockwise input,
as a task per block — with every grid value of a block predicted and scored in one parallel
region when the sweep fuses the two (:meth:`~sc_noise2self.denoisers.Sweep.losses`), which on a
busy machine waits for descheduled threads once per block instead of once per block and value.
A sweep in value order predicts every block at one value, then the next (in this process).

Per-cell losses are summed in a fixed order whatever the blocks (:class:`~sc_noise2self._numerics.rows.CellSum`),
so the sums are the same bytes for any chunking and thread count. BLAS runs on one thread here:
its products alternate with the compiled kernels' threads, and multi-threaded BLAS left spinning
between calls made both several times slower.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .._numerics.machine import blas_threads
from .._numerics.rows import CellSum, ScoredCells, partial_sum, sum_rows
from ..denoisers._base import Block
from .blocks import chunk_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from scipy import sparse
    from tqdm import tqdm

    from .._numerics.loss import RowScorer
    from ..denoisers._base import ScoreKind, Step, Sweep

__all__ = ["Scoring", "sweep_losses", "total"]


class Scoring:
    """What a calibration scores a block's predictions against, and how.

    Subclasses give :meth:`target` (from the block and its ``extra``: the held-out part and
    counts for MCV), :meth:`score` (per-cell losses of a prediction), :meth:`scorer` (what a
    fused sweep is handed; None where the loss cannot be fused), and optionally
    :meth:`unchanged` (the prediction of no denoising, scored as one more value).
    """

    kind: ScoreKind
    baseline = False
    costly_targets = False
    """Whether targets cost more than scoring them (then kept across grid values in value order)."""

    def target(self, part: Block, extra: Any) -> Any:
        raise NotImplementedError

    def score(self, part: Block, target: Any, pred: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scorer(self, part: Block, target: Any) -> RowScorer | np.ndarray | None:
        return None

    def unchanged(self, part: Block) -> np.ndarray:
        return part.values.toarray()


class Passes:
    """The blocks of one scoring: each the training :class:`Block` and its ``extra``.

    In memory, one whole block (block order) or every ``chunk_size`` cells (value order); from
    dask or disk, the input's blocks, each made by ``make(counts, rows)`` as it is read. Only
    the cells of ``scored`` are scored (default all); blocks without any are not made.
    """

    def __init__(
        self,
        data: Any,
        make: Callable[[sparse.csr_matrix, slice], tuple[Block, Any]],
        whole_extra: Any,
        slice_extra: Callable[[Any, slice], Any],
        scored: ScoredCells | None = None,
    ) -> None:
        self.data, self.make, self.whole_extra, self.slice_extra = data, make, whole_extra, slice_extra
        self.scored = ScoredCells(data.shape[0]) if scored is None else scored

    def map(self, fn: Callable[[Block, Any], Any]) -> list[Any]:
        if self.data.in_memory:
            return [fn(self.data.block(slice(0, self.data.shape[0])), self.whole_extra)]
        runs = self.scored.runs
        return self.data.source.map(lambda counts, rows: fn(*self.make(counts, rows)) if runs(rows) else [])

    def blocks(self, chunk_size: int | None) -> Iterator[tuple[Block, Any]]:
        if self.data.in_memory:
            for rows in chunk_rows(*self.data.shape, chunk_size):
                if self.scored.runs(rows):
                    yield self.data.block(rows), self.slice_extra(self.whole_extra, rows)
            return
        for index, rows in enumerate(self.data.source.kept_bounds()):
            if self.scored.runs(rows):
                yield from self.data.source.load([index], self.make)

    def parts(self, block: Block, extra: Any, chunk_size: int | None) -> Iterator[tuple[slice, Block, Any]]:
        """Yield the block's scored cells in parts of at most ``chunk_size``: (rows within the block, part, extra)."""
        first, n_cells = block.rows.start, block.rows.stop - block.rows.start
        for run in self.scored.runs(block.rows):
            for piece in chunk_rows(run.stop - run.start, block.values.shape[1], chunk_size):
                local = slice(run.start - first + piece.start, run.start - first + piece.stop)
                if (local.start, local.stop) == (0, n_cells):  # the block is one part: no copy of it
                    yield local, block, extra
                    continue
                counts = None if block.counts is None else block.counts[local]
                rows = slice(first + local.start, first + local.stop)
                yield local, Block(rows, block.values[local], counts), self.slice_extra(extra, local)


class _TargetCache:
    """Targets by block, kept up to 256 MiB when they cost more than their scoring (value order)."""

    BUDGET = 2**28

    def __init__(self, make: Callable[[Block, Any], Any], *, keep: bool) -> None:
        self.make, self.keep, self.kept, self.size = make, keep, {}, 0

    def __call__(self, part: Block, extra: Any) -> Any:
        key = (part.rows.start, part.rows.stop)
        if key in self.kept:
            return self.kept[key]
        target = self.make(part, extra)
        if self.keep and self.size + getattr(target, "nbytes", self.BUDGET) <= self.BUDGET:
            self.kept[key] = target
            self.size += target.nbytes
        return target


def sweep_steps(sweep: Sweep, passes: Passes, n_values: int, chunk_size: int | None) -> int:
    """Progress steps of scoring one sweep: a block of cells (block order, in memory), a pass, or a grid value."""
    if sweep.order == "values":
        return n_values
    if not passes.data.in_memory:
        return 1
    n_genes = passes.data.shape[1]
    runs = passes.scored.runs(slice(0, passes.data.shape[0]))
    return sum(len(chunk_rows(run.stop - run.start, n_genes, chunk_size)) for run in runs)


class _Sum(NamedTuple):
    """One sweep's scoring: its blocks, what they are scored against, and where progress is shown."""

    sweep: Sweep
    passes: Passes
    scoring: Scoring
    n_values: int
    bar: tqdm
    n_entries: int
    chunk_size: int | None

    def blocks(self) -> np.ndarray:
        """Block order: each block scored at every grid value, where it is read (a dask task for dask input)."""
        sweep, scoring = self.sweep, self.scoring
        fused = sweep.fuses(scoring.kind)
        progress = self.bar.update if self.passes.data.in_memory else None  # a dask task never sees the bar

        def block_sums(block: Block, extra: Any) -> list[Any]:
            sums = []
            for _, part, part_extra in self.passes.parts(block, extra, self.chunk_size):
                target = scoring.target(part, part_extra)
                scorer = scoring.scorer(part, target) if fused else None
                if scorer is not None:
                    per_cell = sweep.losses(part, scorer)
                else:
                    per_cell = np.stack([scoring.score(part, target, p) for _, p in sweep.predictions(part)], axis=1)
                if scoring.baseline:
                    per_cell = np.column_stack([per_cell, scoring.score(part, target, scoring.unchanged(part))])
                sums.append(partial_sum(part.rows.start, per_cell))
                if progress is not None:
                    progress(1)
            return sums

        total = CellSum(self.n_values + scoring.baseline, self.passes.scored)
        for part in itertools.chain.from_iterable(self.passes.map(block_sums)):
            total.add_partial(part)
        if progress is None:
            self.bar.update(1)
        return total.group_sums()

    def values(self) -> np.ndarray:
        """Value order: every block predicted at one grid value, then at the next (in this process)."""
        scoring = self.scoring
        groups = []
        targets = _TargetCache(scoring.target, keep=scoring.costly_targets)
        baseline = CellSum(1, self.passes.scored)
        for j, step in enumerate(self.sweep.values()):
            total = CellSum(1, self.passes.scored)
            for block, extra in self.passes.blocks(self.chunk_size):
                pred = step.predict(block)
                for local, part, part_extra in self.passes.parts(block, extra, self.chunk_size):
                    target = targets(part, part_extra)
                    total.add(part.rows.start, scoring.score(part, target, pred[local]))
                    if j == 0 and scoring.baseline:
                        baseline.add(part.rows.start, scoring.score(part, target, scoring.unchanged(part)))
            groups.append(total.group_sums())
            show_step(self.bar, step, sum_rows(groups[-1])[0] / self.n_entries)
        if scoring.baseline:
            groups.append(baseline.group_sums())
        return np.hstack(groups)


def sweep_losses(
    sweep: Sweep,
    passes: Passes,
    scoring: Scoring,
    n_values: int,
    *,
    bar: tqdm,
    n_entries: int,
    chunk_size: int | None,
) -> np.ndarray:
    """Sum the loss per grid value (and last, with ``scoring.baseline``, that of no denoising).

    Returned per fixed group of cells (:meth:`~sc_noise2self._numerics.rows.CellSum.group_sums`:
    groups × values), so that the spread across cells gives a standard error; :func:`total`
    adds the groups up.
    """
    scored = _Sum(sweep, passes, scoring, n_values, bar, n_entries, chunk_size)
    with blas_threads(1):
        return scored.blocks() if sweep.order == "blocks" else scored.values()


def total(group_sums: np.ndarray) -> np.ndarray:
    """Sum of :func:`sweep_losses`' group sums over the cells scored, in their fixed order."""
    return sum_rows(group_sums)


def show_step(bar: tqdm, step: Step, loss: float) -> None:
    """Advance the bar past one grid value, showing its loss per entry and the training loss if any."""
    train = "" if step.train_loss is None else f", train {step.train_loss:.5g}"
    bar.set_postfix_str(f"{step.value}: loss {loss:.5g}{train}", refresh=False)
    bar.update(1)
