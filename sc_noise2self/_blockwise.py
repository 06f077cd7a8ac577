"""Calibration and output for data that stay in dask or on disk, one block of cells at a time.

Dask arrays (CSR or dense chunks along cells, as ``anndata.experimental.read_elem_lazy``
gives) and backed AnnData (``anndata.read_h5ad(path, backed="r")``) are never loaded
whole. Each pass maps a function over blocks of cells and merges the results: with dask
the blocks run on dask's scheduler (local threads, or the user's ``distributed.Client``);
a backed matrix is read block after block. Every random draw is keyed by (cell, gene), so
the results equal the in-memory ones for the same seed whatever the chunking, up to float
rounding in the sums.

The passes of MCV-calibrated PCA (covariance route): *inspect* (checks, per-cell totals);
per split, *fit* (Gram statistics of the training part; the split is redrawn block by
block, never stored) and *score* (each block predicted from its own training rows and
scored against its held-out part); then *refit* (Gram statistics of all counts) and
*project* (each cell's scores). No cells × genes array is ever formed; memory is one
block plus genes × genes. Diffusion (a :class:`~sc_noise2self.denoisers.CellGraph`) adds
an *embed* pass after each fit: every block's scores on the fitted components, from
which the kNN graph and the diffused scores are computed in memory (cells × components).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy import sparse

from ._calibrate import _checked_grid, add_steps, check_finite_output, chunk_rows, mcv_result, mcv_setup
from ._loss import score_block
from ._rows import CellSum, PartialSum, partial_sum
from ._split import Stream, split_seed
from ._transform import cell_scales, transform_counts, transformed
from ._validate import (
    as_canonical_csr,
    check_count_values,
    check_empty,
    check_known_chunks,
    check_positive_int,
    nonzero_counts,
)
from .denoisers import Blockwise, CellGraph, RowProjection, Streaming

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Literal

    from tqdm import tqdm

    from ._calibrate import CalibrationResult, McvSetup
    from ._types import ArrayLike, LossName, RandomState, TransformName
    from .denoisers import Denoiser
    from .denoisers._base import GridValue

__all__ = [
    "BlockCounts",
    "RowBlocks",
    "StreamSource",
    "check_streaming",
    "is_blockwise",
    "prepare_blocks",
    "refit_blockwise",
    "refit_streaming",
    "run_mcv_blockwise",
]

_BACKED_BLOCK_ELEMENTS = 2**24  # cells per block of a backed matrix × genes
_FAN_IN = 8  # partial results merged at once in dask's reduction tree


def _is_dask(X: object) -> bool:
    return type(X).__module__.split(".")[0] == "dask"


def is_blockwise(X: object) -> bool:
    """Whether ``X`` is a dask array or a backed (on-disk) matrix, calibrated block by block."""
    if _is_dask(X) or type(X).__module__.split(".")[0] == "h5py":
        return True
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(X, CSRDataset | CSCDataset)


class RowBlocks:
    """A cells × genes matrix read in blocks of cells: dask chunks, or slices of a backed matrix.

    ``map`` and ``reduce`` call ``fn(block, rows)`` with the block as canonical CSR
    (without dropped cells and genes) and ``rows``, its cells' positions among the kept
    cells, so that per-cell arrays and the split's counter keys line up with the
    in-memory computation.
    """

    def __init__(self, X: Any, what: str) -> None:
        from anndata.abc import CSCDataset

        if isinstance(X, CSCDataset):
            msg = (
                f"{what} is a backed CSC matrix, whose cells cannot be read in blocks; write it as CSR "
                "(e.g. `adata.X = adata.X.tocsr()` before `write_h5ad`) or load it with `adata.to_memory()`."
            )
            raise ValueError(msg)
        if len(X.shape) != 2:
            msg = f"Expected a 2-D cells × genes matrix, got an array of shape {X.shape}."
            raise ValueError(msg)
        check_known_chunks(X, what)
        self.shape = (int(X.shape[0]), int(X.shape[1]))
        if _is_dask(X):
            if len(X.chunks[1]) > 1:  # whole genes per block: the split keys and statistics need full rows
                X = X.rechunk({1: -1})
            bounds = np.cumsum((0, *X.chunks[0]))
        else:
            step = max(1, _BACKED_BLOCK_ELEMENTS // max(1, self.shape[1]))
            bounds = np.r_[np.arange(0, self.shape[0], step), self.shape[0]]
        self._source = X
        self._slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
        self._delayed: list[Any] | None = None
        self.cells: np.ndarray | None = None
        self.genes: np.ndarray | None = None
        self._kept_before = np.arange(self.shape[0] + 1)

    def drop(self, cells: np.ndarray | None, genes: np.ndarray | None) -> None:
        """Leave out cells and genes (boolean masks of those kept; None keeps all)."""
        self.cells, self.genes = cells, genes
        if cells is not None:
            self._kept_before = np.r_[0, np.cumsum(cells)]

    def _apply(self, fn: Callable[[sparse.csr_matrix, slice], Any], block: Any, rows: slice) -> Any:
        block = as_canonical_csr(block)
        if self.cells is not None:
            block = block[self.cells[rows]]
        if self.genes is not None:
            block = block[:, self.genes]
        start = int(self._kept_before[rows.start])
        return fn(as_canonical_csr(block), slice(start, start + block.shape[0]))

    def _blocks(self) -> list[Any]:
        """Return the dask array's blocks as delayed objects, made once (streamed training asks per block)."""
        if self._delayed is None:
            self._delayed = list(self._source.to_delayed().ravel())
        return self._delayed

    def __getstate__(self) -> dict[str, Any]:
        # tasks carry this object to dask's workers: the delayed blocks (the whole graph again) stay here
        return {**self.__dict__, "_delayed": None}

    def _tasks(self, fn: Callable[[sparse.csr_matrix, slice], Any], indices: Iterable[int]) -> list[Any]:
        """One dask task per block at ``indices`` (dask input)."""
        import dask

        blocks = self._blocks()
        return [dask.delayed(self._apply)(fn, blocks[i], self._slices[i]) for i in indices]

    def map(self, fn: Callable[[sparse.csr_matrix, slice], Any]) -> list[Any]:
        """``fn`` of every block, in block order."""
        return self.load(range(len(self._slices)), fn)

    def load(self, indices: Iterable[int], fn: Callable[[sparse.csr_matrix, slice], Any]) -> list[Any]:
        """``fn`` of the blocks at ``indices`` (into :meth:`kept_bounds`), in that order, computed together."""
        if _is_dask(self._source):
            import dask

            return list(dask.compute(*self._tasks(fn, indices)))
        return [self._apply(fn, self._source[self._slices[i]], self._slices[i]) for i in indices]

    def kept_bounds(self) -> list[slice]:
        """Each block's cells among the kept cells (empty slices for blocks without kept cells)."""
        return [slice(int(self._kept_before[r.start]), int(self._kept_before[r.stop])) for r in self._slices]

    def lazy(self, fn: Callable[[sparse.csr_matrix, slice], np.ndarray], n_columns: int) -> Any:
        """Dask array of ``fn`` over every block (a float32 row per kept cell, 0 for dropped cells), computed on use.

        ``fn(block, rows)`` gets the block's kept cells and genes as for :meth:`map`; backed
        input is read from its file when a block is computed.
        """
        import dask
        import dask.array as da

        def full(block: Any, rows: slice) -> np.ndarray:
            out = np.zeros((rows.stop - rows.start, n_columns), dtype=np.float32)
            kept = np.ones(out.shape[0], dtype=bool) if self.cells is None else self.cells[rows]
            if kept.any():
                values = self._apply(fn, block, rows)
                columns = slice(None) if self.genes is None else np.flatnonzero(self.genes)
                out[np.ix_(np.flatnonzero(kept), np.arange(n_columns)[columns])] = values
            return out

        if _is_dask(self._source):
            sources = self._blocks()
        else:
            sources = [dask.delayed(self._source.__getitem__)(rows) for rows in self._slices]
        parts = [
            da.from_delayed(dask.delayed(full)(b, rows), shape=(rows.stop - rows.start, n_columns), dtype=np.float32)
            for b, rows in zip(sources, self._slices, strict=True)
        ]
        return da.concatenate(parts, axis=0)

    def gather(self, keep: np.ndarray) -> sparse.csr_matrix:
        """Return the cells ``keep`` marks (a boolean mask over the kept cells), in one pass, as one CSR matrix."""
        return sparse.vstack(self.map(lambda block, rows: block[keep[rows]]), format="csr")

    def reduce(self, fn: Callable[[sparse.csr_matrix, slice], Any], merge: Callable[[Any, Any], Any]) -> Any:
        """``fn`` of every block, merged pairwise (a tree of merges under dask, so partials are freed early)."""
        if _is_dask(self._source):
            import dask

            parts = self._tasks(fn, range(len(self._slices)))
            while len(parts) > 1:
                parts = [dask.delayed(_merge_all)(merge, parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
            return dask.compute(parts[0])[0]
        total = None
        for rows in self._slices:
            part = self._apply(fn, self._source[rows], rows)
            total = part if total is None else merge(total, part)
        return total


def _merge_all(merge: Callable[[Any, Any], Any], parts: list[Any]) -> Any:
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return total


class BlockCounts(NamedTuple):
    """Validated blockwise data: the blocks, kept cells and genes, and what the checks found."""

    blocks: RowBlocks
    cells: np.ndarray | None
    genes: np.ndarray | None
    is_counts: bool
    totals: np.ndarray
    """Counts per kept cell."""
    max_count: float

    @property
    def shape(self) -> tuple[int, int]:
        """Kept cells × kept genes."""
        n_cells = self.blocks.shape[0] if self.cells is None else int(self.cells.sum())
        n_genes = self.blocks.shape[1] if self.genes is None else int(self.genes.sum())
        return n_cells, n_genes


class _Facts(NamedTuple):
    is_counts: bool
    totals: np.ndarray
    has_counts: np.ndarray
    gene_nonzeros: np.ndarray
    max_count: float


def prepare_blocks(X: Any, *, what: str, empty: Literal["error", "drop"] = "error", counts: bool = True) -> BlockCounts:
    """Check a dask or backed matrix in one pass, as :func:`~sc_noise2self._validate.prepare_counts` does."""
    if empty not in ("error", "drop"):
        msg = f"empty must be 'error' or 'drop', got {empty!r}."
        raise ValueError(msg)
    blocks = RowBlocks(X, what)
    if 0 in blocks.shape:
        msg = f"{what} has shape {blocks.shape}; it needs at least one cell and one gene."
        raise ValueError(msg)

    def inspect(block: sparse.csr_matrix, rows: slice) -> _Facts:
        is_counts = check_count_values(block, what=f"{what} (cells {rows.start}..{rows.stop - 1})", counts=counts)
        has_counts, gene_nonzeros = nonzero_counts(block)
        return _Facts(
            is_counts,
            np.asarray(block.sum(axis=1), dtype=np.float64).ravel(),
            has_counts,
            gene_nonzeros,
            float(block.data.max()) if block.nnz else 0.0,
        )

    facts = blocks.map(inspect)
    keep_cells = np.concatenate([f.has_counts for f in facts])
    keep_genes = np.sum([f.gene_nonzeros for f in facts], axis=0) > 0
    cells, genes = check_empty(keep_cells, keep_genes, what=what, empty=empty)
    totals = np.concatenate([f.totals for f in facts])  # dropped genes hold no counts
    blocks.drop(cells, genes)
    return BlockCounts(
        blocks,
        cells,
        genes,
        all(f.is_counts for f in facts),
        totals if cells is None else totals[cells],
        max(f.max_count for f in facts),
    )


def check_blockwise_request(denoiser: Denoiser, method: str, calibration: str) -> None:
    """Refuse what cannot run block by block before any pass over the data."""
    if calibration != "mcv":
        msg = (
            "calibration='genes' needs the data in memory; dask or backed input is calibrated with "
            "calibration='mcv'. Load the data first (`adata = adata.to_memory()`, or `.compute()` the dask array)."
        )
        raise ValueError(msg)
    if not (
        check_streaming(denoiser)
        or (isinstance(denoiser, Blockwise) and isinstance(denoiser, CellGraph | RowProjection))
    ):
        msg = (
            f"method {method!r} needs the data in memory; dask or backed input is calibrated block by block with "
            "method='pca', 'diffusion' or 'autoencoder'. Load the data first (`adata = adata.to_memory()`, or "
            "`.compute()` the dask array)."
        )
        raise ValueError(msg)


def _blockwise_denoiser(denoiser: Denoiser, n_genes: int, method: str) -> Blockwise:
    """Return the denoiser if it can be fitted block by block on this data; raise a clear error otherwise."""
    check_blockwise_request(denoiser, method, "mcv")
    uses_covariance = getattr(denoiser, "uses_covariance", None)
    if uses_covariance is None or uses_covariance(n_genes):
        return denoiser
    advice = (
        "Pass `method=sc_noise2self.denoisers.PCA(solver='covariance')` (it holds a genes × genes float64 matrix), "
        "or select genes first (e.g. `sc.pp.highly_variable_genes`)."
        if isinstance(denoiser, RowProjection)
        else "Select genes first (e.g. `sc.pp.highly_variable_genes`)."
    )
    msg = (
        f"Dask or backed input is calibrated block by block through the genes × genes covariance, which is "
        f"used up to 4,096 genes; this data has {n_genes}. {advice}"
    )
    raise ValueError(msg)


def _fit_blockwise(model: Blockwise, blocks: RowBlocks, values: Callable[..., Any], grid: np.ndarray) -> None:
    """Fit from merged block statistics and, for a :class:`CellGraph`, from every cell's embedding."""
    model.fit_stats(blocks.reduce(lambda b, r: model.block_stats(values(b, r)), model.merge_stats), grid)
    if isinstance(model, CellGraph):
        model.fit_embedding(np.concatenate(blocks.map(lambda b, r: model.block_embedding(values(b, r)))))


def run_mcv_blockwise(
    data: BlockCounts,
    denoiser: Denoiser,
    *,
    method: str,
    grid: ArrayLike | None,
    split_fraction: float,
    n_splits: int,
    transform: TransformName,
    target_sum: float | None,
    loss: LossName,
    random_state: RandomState,
    chunk_size: int | None,
    bar: tqdm,
    sampling: str = "poisson",
    dispersion: float | None = None,
    depth: str | None = None,
) -> CalibrationResult:
    """Molecular cross-validation on blockwise data; equals :func:`~sc_noise2self._calibrate.run_mcv`.

    Each split is redrawn block by block whenever a block is read (keyed by cell and gene,
    so always the same). A :class:`~sc_noise2self.denoisers.Blockwise` denoiser is fitted
    from merged block statistics and scored in one more pass (two passes per split on the
    bar); a streaming one (the autoencoder, ``fit_stream``) trains from buffers of blocks,
    one pass per epoch, and each grid value is scored in one pass (a step per value).
    """
    shape = data.shape
    streaming = check_streaming(denoiser)
    model = denoiser if streaming else _blockwise_denoiser(denoiser, shape[1], method)
    setup = mcv_setup(
        data.totals,
        data.max_count,
        data.blocks.gather,  # the cells of the sampling-dispersion check, by position
        split_fraction=split_fraction,
        transform=transform,
        target_sum=target_sum,
        loss=loss,
        sampling=sampling,
        dispersion=dispersion,
        depth=depth,
        random_state=random_state,
    )
    n_splits = check_positive_int(n_splits, "n_splits")
    grid = _checked_grid(model, grid, shape)
    split = _streamed_split if streaming else _statistics_split

    losses, baseline = np.zeros((n_splits, len(grid))), np.zeros(n_splits)
    add_steps(bar, n_splits * (len(grid) + 1 if streaming else 2))
    for i in range(n_splits):
        seed = split_seed(random_state, Stream.MCV, i)

        def halves(block: sparse.csr_matrix, rows: slice, seed: int = seed) -> tuple[Any, Any, Any]:
            """Return the block's training values, training counts and held-out counts."""
            train, test = setup.plan.halves(block, data.totals[rows], setup.fraction, seed, row_offset=rows.start)
            return transform_counts(train, transform, setup.train_scales[rows]), train, test

        sums = split(model, data, halves, grid, setup, chunk_size=chunk_size, transform=transform, loss=loss, bar=bar)
        losses[i], baseline[i] = sums[:-1], sums[-1]
    return mcv_result(
        losses,
        model,
        grid,
        shape,
        setup,
        method=method,
        transform=transform,
        target_sum=target_sum,
        loss=loss,
        sampling=sampling,
        random_state=random_state,
        baseline=baseline,
    )


def _statistics_split(
    model: Blockwise,
    data: BlockCounts,
    halves: Callable[[sparse.csr_matrix, slice], tuple[Any, Any, Any]],
    grid: np.ndarray,
    setup: McvSetup,
    *,
    chunk_size: int | None,
    transform: TransformName,
    loss: LossName,
    bar: tqdm,
) -> np.ndarray:
    """One split: fit from merged block statistics, then score each block from its own rows.

    Returns the summed loss per grid value, and last that of no denoising.
    """
    _fit_blockwise(model, data.blocks, lambda b, r: halves(b, r)[0], grid)
    bar.update(1)

    def score(block: sparse.csr_matrix, rows: slice) -> list[PartialSum]:
        values, _, test = halves(block, rows)
        parts = []
        for part in chunk_rows(block.shape[0], block.shape[1], chunk_size):
            cells = slice(rows.start + part.start, rows.start + part.stop)
            target = setup.target(
                test[part], block[part], data.totals[cells], cells, transform=transform, loss=loss, reused=True
            )

            def scored(pred: np.ndarray, cells: slice = cells, target: Any = target) -> np.ndarray:
                return score_block(
                    pred, target, conversion=setup.conversion, train_scales=setup.train_scales[cells], loss=loss
                )

            per_cell = [scored(pred) for _, pred in model.sweep_rows(values[part], cells)]
            per_cell.append(scored(values[part].toarray()))  # no denoising: the training part itself
            parts.append(partial_sum(cells.start, np.stack(per_cell, axis=1)))
        return parts

    total = CellSum(len(grid) + 1)
    for part in itertools.chain.from_iterable(data.blocks.map(score)):
        total.add_partial(part)
    bar.update(1)
    return total.total()


def refit_blockwise(
    data: BlockCounts, denoiser: Denoiser, value: GridValue, *, transform: TransformName, target_sum: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit on all counts at ``value``; return the factors ``(offset, scores, loadings)`` of the output."""
    model = _blockwise_denoiser(denoiser, data.shape[1], type(denoiser).__name__.lower())

    def values(block: sparse.csr_matrix, _: slice | None = None) -> sparse.csr_matrix:
        return transformed(block, transform, target_sum)

    _fit_blockwise(model, data.blocks, values, np.array([value]))
    if isinstance(model, CellGraph):
        offset, scores, loadings = model.factors(value)
        return offset, scores.astype(np.float32), loadings
    scores = data.blocks.map(lambda b, _: model.row_scores(values(b), value).astype(np.float32))
    offset, loadings = model.loadings(value)
    return offset, np.concatenate(scores), loadings


# -- Denoisers trained by streaming minibatches (the autoencoder) -----------------------------------


class StreamSource:
    """Training data read block by block: :meth:`load` returns a buffer of blocks for the training loop.

    ``fn(block, rows)`` returns a block's ``(values, counts)``: the network's input and the
    counts behind it. Blocks without kept cells are left out.
    """

    def __init__(self, blocks: RowBlocks, fn: Callable[[sparse.csr_matrix, slice], tuple[Any, Any]]) -> None:
        self.blocks, self.fn = blocks, fn
        kept = blocks.kept_bounds()
        self.index = [i for i, rows in enumerate(kept) if rows.stop > rows.start]
        self.bounds = [kept[i] for i in self.index]

    def load(self, blocks: list[int]) -> Any:
        """Return the cells of ``blocks`` (indices into ``bounds``) as one buffer, in that order."""
        from .denoisers._ae_train import Buffer

        parts = self.blocks.load([self.index[b] for b in blocks], self.fn)
        rows = np.concatenate([np.arange(self.bounds[b].start, self.bounds[b].stop) for b in blocks])
        return Buffer(
            sparse.vstack([p[0] for p in parts], format="csr"), sparse.vstack([p[1] for p in parts], format="csr"), rows
        )


def check_streaming(denoiser: Denoiser) -> bool:
    """Whether ``denoiser`` trains from streamed blocks (:class:`~sc_noise2self.denoisers.Streaming`)."""
    return isinstance(denoiser, Streaming)


def _streamed_split(
    model: Denoiser,
    data: BlockCounts,
    halves: Callable[[sparse.csr_matrix, slice], tuple[Any, Any, Any]],
    grid: np.ndarray,
    setup: McvSetup,
    *,
    chunk_size: int | None,
    transform: TransformName,
    loss: LossName,
    bar: tqdm,
) -> np.ndarray:
    """One split of a streaming denoiser: train from buffers of blocks, score every grid value in one pass.

    The network lives in this process; dask only reads and splits blocks. Equals the
    in-memory calibration for the same seed when the in-memory denoiser trains from the
    same blocks (``block_cells``). Returns the summed loss per grid value, and last that of
    no denoising (scored in the first value's pass).
    """
    source = StreamSource(data.blocks, lambda b, r: halves(b, r)[:2])
    sweep = model.fit_stream(
        source,
        grid,
        shape=data.shape,
        scales=setup.train_scales,
        transform=transform,
        max_rate=float(data.totals.max()) + 1.0,
    )
    bar.update(1)

    def scored(block: sparse.csr_matrix, rows: slice) -> tuple[Any, ...]:
        return (*halves(block, rows), block)

    sums = np.zeros(len(grid) + 1)
    for j, (_, predict) in enumerate(sweep.sweep_values()):
        part = _stream_scores(data, source, scored, predict, setup, chunk_size, transform, loss, first=j == 0)
        sums[j] = part[0]
        if j == 0:
            sums[-1] = part[1]
        bar.update(1)
    return sums


def _stream_scores(
    data: BlockCounts,
    source: StreamSource,
    scored: Callable[[sparse.csr_matrix, slice], tuple[Any, ...]],
    predict: Any,
    setup: McvSetup,
    chunk_size: int | None,
    transform: TransformName,
    loss: LossName,
    *,
    first: bool,
) -> np.ndarray:
    """Return the summed held-out loss of ``predict`` (and, when ``first``, of no denoising) over every block.

    Targets are sparse, scored once each, as the in-memory engine scores a sweep in value order.
    """
    total = CellSum(1 + first)
    for b, rows in enumerate(source.bounds):
        (parts,) = data.blocks.load([source.index[b]], scored)
        values, train, test, block = parts
        pred = predict.block(values, train, rows)
        for part in chunk_rows(block.shape[0], block.shape[1], chunk_size):
            cells = slice(rows.start + part.start, rows.start + part.stop)
            target = setup.target(
                test[part], block[part], data.totals[cells], cells, transform=transform, loss=loss, reused=False
            )
            columns = [pred[part]] + ([values[part].toarray()] if first else [])
            per_cell = [
                score_block(p, target, conversion=setup.conversion, train_scales=setup.train_scales[cells], loss=loss)
                for p in columns
            ]
            total.add(cells.start, np.stack(per_cell, axis=1))
    return total.total()


def refit_streaming(
    data: BlockCounts,
    denoiser: Denoiser,
    value: GridValue,
    *,
    transform: TransformName,
    target_sum: float | None,
    counts: Any = None,
) -> Any:
    """Train on all counts at ``value``, block by block; return the output as a lazy dask layer (cells × genes).

    Each block of the layer is computed when it is used, from its counts and the trained
    networks (kept in this process); ``counts`` (a :class:`~sc_noise2self._transform.ToCounts`)
    maps it to expected counts.
    """

    def values(block: sparse.csr_matrix, rows: slice) -> tuple[Any, Any]:
        return transformed(block, transform, target_sum), block

    source = StreamSource(data.blocks, values)
    grid = np.array([value])
    denoiser.fit_stream(
        source,
        denoiser.check_grid(grid if grid.ndim == 1 else grid.reshape(1, -1), data.shape),
        shape=data.shape,
        scales=cell_scales(data.totals, target_sum),
        transform=transform,
        max_rate=float(data.totals.max()) + 1.0,
    )

    def output(block: sparse.csr_matrix, rows: slice) -> np.ndarray:
        out = denoiser.predict_block(*values(block, rows), rows, value)
        return out if counts is None else counts(out, rows)

    # train now, and check every block's output once: computing the lazy layer only runs the networks
    for index in source.index:
        (block,) = data.blocks.load([index], lambda b, r: (b, r))
        check_finite_output((output(*block),), value, denoiser)
    return data.blocks.lazy(output, data.blocks.shape[1])
