"""The refit at the chosen value on all counts, and its output: dense, factored (low rank) or lazy.

A dense float32 layer of 1M cells × 20k genes is 80 GB. A low-rank output (PCA, diffusion in
principal components) is ``offset + scores @ loadings``, so it can be kept as factors with a dask
layer that computes blocks of cells on demand (also when written to h5ad/zarr); an output that is
not low rank, fitted on data read block by block (the autoencoder), is a dask layer that runs the
fitted method block by block. Every array is checked finite before it is handed back.

Where the input holds no negative value, the truth on the transformed scale is ≥ 0 too, and the
written layer is the output's projection ``max(ŷ, 0)``: entry by entry it is never further from
a non-negative truth than ``ŷ`` (``|max(ŷ, 0) - t| ≤ |ŷ - t|`` for ``t ≥ 0``), and it keeps
negative values out of tools downstream that take logarithms. Factors stay those of ``ŷ``; the
calibration scores the same projection (:mod:`sc_noise2self._numerics.loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from scipy import linalg, sparse

from .._numerics.rows import low_rank_rows
from .._numerics.transform import cell_scales, to_counts, transform_counts, transformed
from ..denoisers._base import Block, LowRank, Partition
from .blocks import chunk_rows, training_data
from .result import check_finite_output

if TYPE_CHECKING:
    from .._numerics.transform import ToCounts
    from ..denoisers._base import Data, Denoiser, GridValue, Predicted
    from .blocks import Source
    from .result import CalibrationResult
    from .settings import Settings

__all__ = ["Output", "fit_at", "lazy_low_rank", "output"]

_BLOCK_BYTES = 64 * 2**20


class Output(NamedTuple):
    """What the refit writes: the layer over every input cell and gene, and its factors when stored factored."""

    kind: Literal["dense", "factored", "lazy"]
    layer: Any
    """cells × genes float32: an array, or a dask array computed block by block."""
    factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    """``(offset (genes,), scores (cells × k), loadings (genes × k))``, float32: offset + scores @ loadings.T."""
    kept: np.ndarray | None
    """Which input cells the calibration kept (for factored or lazy output when some were left out)."""
    non_negative: bool
    """Whether the layer is projected onto values ≥ 0 (``max(offset + scores @ loadings.T, 0)`` when factored)."""


def embed(values: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | None = None) -> np.ndarray:
    """Place 2-D values computed for kept rows/columns (boolean masks; None: all) into zeros of full size."""
    if rows is None and columns is None:
        return values
    row_index = np.arange(values.shape[0]) if rows is None else np.flatnonzero(rows)
    column_index = np.arange(values.shape[1]) if columns is None else np.flatnonzero(columns)
    shape = (values.shape[0] if rows is None else rows.size, values.shape[1] if columns is None else columns.size)
    out = np.zeros(shape, dtype=values.dtype)
    out[np.ix_(row_index, column_index)] = values
    return out


def lazy_low_rank(
    offset: np.ndarray,
    scores: np.ndarray,
    loadings: np.ndarray,
    cells: np.ndarray,
    counts: ToCounts | None = None,
    *,
    non_negative: bool = False,
) -> Any:
    """Dask array ``cells * (offset + scores @ loadings)``, float32, in blocks of cells.

    ``cells`` is 1 for kept cells and 0 for dropped ones (their output is 0, as in the dense
    layer). With ``counts``, each block is mapped to expected counts; with ``non_negative``,
    projected onto values ≥ 0.
    """
    import dask.array as da

    n_cells, n_genes = scores.shape[0], loadings.shape[1]
    rows = max(1, min(n_cells, _BLOCK_BYTES // (4 * n_genes)))
    block_scores = da.from_array(scores, chunks=(rows, scores.shape[1]))
    block_cells = da.from_array(cells[:, None].astype(np.float32), chunks=(rows, 1))
    block_rows = da.arange(n_cells, chunks=rows)[:, None]

    def block(s: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
        values = finish(low_rank_rows(offset, s, loadings), r[:, 0], counts, non_negative=non_negative)
        return np.where(c > 0, values, np.float32(0))

    return da.map_blocks(
        block, block_scores, block_cells, block_rows, chunks=(block_scores.chunks[0], (n_genes,)), dtype=np.float32
    )


def gene_sums(counts: sparse.csr_matrix) -> np.ndarray:
    """Each gene's total count, added in float64 (scipy adds float32 counts in float32)."""
    counts = sparse.csr_matrix(counts)
    return np.bincount(counts.indices, weights=counts.data, minlength=counts.shape[1])


class CountFloor(NamedTuple):
    """The floor of a count output: a share of each entry's null rate (see :mod:`~sc_noise2self._engine.floor`)."""

    share: float
    """The share of the null rate chosen."""
    shares: np.ndarray
    """Each kept gene's share of all counts (:func:`null_shares`)."""
    record: dict[str, Any]
    """What ``uns`` keeps of the choice."""


def null_shares(source: Source, totals: np.ndarray, *, all_genes: bool = False) -> np.ndarray:
    """Each kept gene's share of all counts: ``totals[c] · share[g]`` is an entry's null rate (its expected count).

    ``all_genes``: of every input gene (with a gene mask), over the kept cells.
    """
    sums = source.reduce(lambda counts, rows: gene_sums(counts), np.add, all_genes=all_genes)
    return sums / max(float(totals.sum()), 1.0)


def finish(values: np.ndarray, rows: Any, counts: ToCounts | None, *, non_negative: bool) -> np.ndarray:
    """Return a block of output as written: expected counts with ``counts``, else ≥ 0 if ``non_negative``."""
    if counts is not None:
        return counts(values, rows)
    return np.maximum(values, 0, out=values) if non_negative else values


def fit_at(
    source: Source, denoiser: Denoiser, value: GridValue, settings: Settings, *, totals: np.ndarray, partition: Any
) -> tuple[LowRank | Predicted, Data]:
    """Fit ``denoiser`` on all the data at one grid value; return its output and the data it was fitted on.

    ``partition``: the gene partition of ``calibration="genes"``, for a method trained by masking
    (refitted so, its output is the J-invariant function that was calibrated).
    """
    scales = cell_scales(totals, settings.target_sum)

    def make(counts: sparse.csr_matrix, rows: slice) -> Block:
        values = transform_counts(counts, settings.transform, scales[rows])
        return Block(rows, values, counts if source.is_counts else None)

    data = training_data(source, make, scales=scales, transform=settings.transform, max_rate=float(totals.max()) + 1.0)
    grid = np.array([value])
    grid = denoiser.check_grid(grid if grid.ndim == 1 else grid.reshape(1, -1), source.shape)
    masked = partition is not None and denoiser.tags.gene_partition == "masked"
    sweep = denoiser.fit(data, grid, partition=partition if masked else None)
    return sweep.output(value), data


def output(
    source: Source,
    denoiser: Denoiser,
    result: CalibrationResult,
    settings: Settings,
    *,
    factored: bool,
    scale: str,
    totals: np.ndarray,
    count_floor: CountFloor | None = None,
) -> Output:
    """Refit at the chosen value and return the output over every input cell and gene, checked finite.

    ``factored``: store a low-rank output as factors with a lazy layer (data read block by block
    always are). ``scale="counts"``: the expected count of each entry instead of the transformed
    value, at least ``count_floor``'s share of its null rate (:func:`null_shares`). With a gene
    mask (``source.selection``) the method was fitted on some genes; every other gene is denoised
    through its low-rank output.
    """
    value = result.best
    partition = None if result.gene_groups is None else Partition(result.gene_groups, None, np.zeros(0, int))
    fitted, data = fit_at(source, denoiser, value, settings, totals=totals, partition=partition)
    counts = None
    if scale == "counts":
        if not source.is_counts:
            msg = (
                "scale='counts' maps the output back to counts, which needs raw counts as input; use "
                "scale='transformed'."
            )
            raise ValueError(msg)
        selection = source.selection
        max_count = source.max_count if selection is None else selection.max_count
        counts = to_counts(settings.transform, totals, settings.target_sum, max_count, source.cells)
        if count_floor is not None and count_floor.share > 0:  # the shares of the columns written
            if selection is not None:  # every gene
                columns = null_shares(source, selection.totals, all_genes=True)
            else:  # the kept genes, placed
                columns = embed(count_floor.shares[None], None, source.genes)[0]
            counts = counts.with_floor(count_floor.share, columns)
    positive = source.non_negative  # of every gene
    n_cells = source.input_shape[0]
    if not isinstance(fitted, LowRank):
        if not source.in_memory:
            if counts is not None and counts.floor > 0:  # the blocks hold the kept genes only
                counts = counts.with_floor(counts.floor, count_floor.shares)
            return _lazy(source, data, fitted, value, denoiser, totals, counts, positive)
        layer = _dense(fitted, data, settings.chunk_size)
        check_finite_output((layer,), value, denoiser)
        return _dense_output(embed(layer, source.cells, source.genes), counts, value, denoiser, settings, positive)
    scores = np.concatenate(data.map(fitted.scores))
    factors, columns = (fitted.offset, scores, fitted.loadings), source.genes
    if source.selection is not None:  # fitted on the masked genes: every other gene through the low-rank output
        factors = extend_factors(factors, source, totals, settings)
        columns = None
    if factored or not source.in_memory:
        factors = (factors[0], factors[1].astype(np.float32), factors[2])
        check_finite_output(factors, value, denoiser)
        return _factored(factors, source.cells, columns, n_cells, counts, positive)
    layer = _low_rank_dense(factors, settings.chunk_size)
    check_finite_output((layer,), value, denoiser)
    return _dense_output(embed(layer, source.cells, columns), counts, value, denoiser, settings, positive)


def _dense(fitted: LowRank | Predicted, data: Data, chunk_size: int | None) -> np.ndarray:
    """Return the output of the fitted cells as a dense float32 matrix, block by block."""
    out = np.empty(data.shape, dtype=np.float32)
    for rows in chunk_rows(*data.shape, chunk_size):
        out[rows] = fitted.block(data.block(rows))
    return out


def _low_rank_dense(factors: tuple[np.ndarray, np.ndarray, np.ndarray], chunk_size: int | None) -> np.ndarray:
    """``offset + scores @ loadings`` as a dense float32 array, block by block."""
    offset, scores, loadings = factors
    out = np.empty((scores.shape[0], offset.size), dtype=np.float32)
    for rows in chunk_rows(*out.shape, chunk_size):
        out[rows] = low_rank_rows(offset, scores[rows], loadings)
    return out


def _dense_output(
    layer: np.ndarray,
    counts: ToCounts | None,
    value: GridValue,
    denoiser: Denoiser,
    settings: Settings,
    non_negative: bool,
) -> Output:
    if counts is not None or non_negative:
        for rows in chunk_rows(*layer.shape, settings.chunk_size):
            layer[rows] = finish(layer[rows], rows, counts, non_negative=non_negative)
    if counts is not None:
        check_finite_output((layer,), value, denoiser)
    return Output("dense", layer, None, None, non_negative)


def _factored(
    factors: tuple[np.ndarray, np.ndarray, np.ndarray],
    cells: np.ndarray | None,
    genes: np.ndarray | None,
    n_cells: int,
    counts: ToCounts | None,
    non_negative: bool,
) -> Output:
    """Low-rank output as factors and a lazy layer, kept cells and genes placed (expected counts with ``counts``)."""
    offset, scores, loadings = factors
    full_offset = embed(offset.astype(np.float32)[:, None], genes)[:, 0]
    full_loadings = embed(np.ascontiguousarray(loadings.T, dtype=np.float32), genes)
    full_scores = embed(scores.astype(np.float32), cells)
    kept = np.ones(n_cells, dtype=bool) if cells is None else cells
    layer = lazy_low_rank(full_offset, full_scores, full_loadings.T, kept, counts, non_negative=non_negative)
    return Output("factored", layer, (full_offset, full_scores, full_loadings), cells, non_negative)


def _lazy(
    source: Source,
    data: Data,
    fitted: Predicted,
    value: GridValue,
    denoiser: Denoiser,
    totals: np.ndarray,
    counts: ToCounts | None,
    non_negative: bool,
) -> Output:
    """Return a dask layer that computes the fitted method's output block by block (for data read in blocks)."""
    if counts is not None:  # by kept cell and gene, as the blocks come
        scales = counts.scales if source.cells is None else counts.scales[source.cells]
        counts = counts._replace(scales=scales, depths=totals)

    def block_output(block: sparse.csr_matrix, rows: slice) -> np.ndarray:
        return finish(fitted.block(data.make(block, rows)), rows, counts, non_negative=non_negative)

    # fitted now; each block's output is checked once, here, where the fitted method lives (dask only reads)
    for index, rows in enumerate(source.kept_bounds()):
        if rows.stop > rows.start:
            (read,) = source.load([index], lambda block, rows: (block, rows))
            check_finite_output((block_output(*read),), value, denoiser)
    return Output("lazy", source.lazy(block_output, source.input_shape[1]), None, source.cells, non_negative)


def extend_factors(
    factors: tuple[np.ndarray, np.ndarray, np.ndarray], source: Source, totals: np.ndarray, settings: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors over every gene from the factors of the masked genes (``source.selection``).

    ``factors`` = ``(offset, scores, loadings)`` of the source's kept genes and cells; ``totals``:
    each kept cell's total over all genes. Each other gene's offset and loadings are its
    least-squares fit on the scores with an intercept, from sums over blocks of cells (one pass);
    masked genes left out (no counts) get zeros.
    """
    offset, scores, loadings = factors
    mask = source.selection.mask
    full_offset, full_loadings = np.zeros(mask.size), np.zeros((scores.shape[1], mask.size))
    fitted = source.gene_index()
    full_offset[fitted], full_loadings[:, fitted] = offset, loadings
    others = np.flatnonzero(~mask)
    z_mean = scores.mean(axis=0)
    centred = scores - z_mean

    def sums(counts: sparse.csr_matrix, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        values = transformed(counts[:, others], settings.transform, settings.target_sum, totals=totals[rows])
        return np.asarray(values.sum(axis=0)).ravel(), np.asarray(values.T @ centred[rows]).T

    y_sum, cross = source.reduce(sums, lambda a, b: (a[0] + b[0], a[1] + b[1]), all_genes=True)
    y_mean = y_sum / scores.shape[0]
    cross -= np.outer(centred.sum(axis=0), y_mean)
    gram = centred.T @ centred
    coefs = linalg.lstsq(gram, cross, cond=1e-10, lapack_driver="gelsy")[0]  # k × other genes; rank-safe
    full_loadings[:, others] = coefs
    full_offset[others] = y_mean - z_mean @ coefs
    return full_offset, scores, full_loadings
