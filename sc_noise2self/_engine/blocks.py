"""One source of row blocks: counts in memory, in a dask array, or in a backed (on-disk) matrix.

Every pass of the engine maps a function over blocks of cells and merges the results. In memory
the counts are one block; a dask array (CSR or dense chunks along cells, as
``anndata.experimental.read_elem_lazy`` gives) is read chunk by chunk on dask's scheduler (local
threads, or the user's ``distributed.Client``); a backed matrix (``anndata.read_h5ad(path,
backed="r")``) is read block after block. Every random draw is keyed by (cell, gene) and every
sum over cells is made in a fixed order, so each path gives the in-memory result for the same
seed, whatever the chunking (up to float rounding in the Gram matrices merged across blocks).

:class:`Source` validates the input in one pass and reads it. A denoiser is fitted on
:class:`~sc_noise2self.denoisers.Data`: in memory one block
(:class:`~sc_noise2self.denoisers.ArrayData`), otherwise :class:`BlockData`, each block of counts
made into its values (a split's training part, or all counts) as it is read.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy import sparse

from .._numerics.checks import (
    as_canonical_csr,
    check_count_values,
    check_empty,
    check_known_chunks,
    nonzero_counts,
)
from ..denoisers._base import ArrayData, Block

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Literal

__all__ = [
    "CHUNK_ELEMENTS",
    "BlockData",
    "GeneSelection",
    "Source",
    "chunk_rows",
    "is_blockwise",
    "non_negative",
    "training_data",
]

CHUNK_ELEMENTS = 2**19
"""Cells per scoring block × genes: a block of predictions is 4 MiB of float64."""
_BACKED_BLOCK_ELEMENTS = 2**24  # cells per block of a backed matrix × genes
_FAN_IN = 2  # partial results merged at once in dask's reduction tree


def chunk_rows(n_cells: int, n_genes: int, chunk_size: int | None) -> list[slice]:
    """Blocks of cells so that a block × genes array stays small (``chunk_size`` cells when given)."""
    size = max(1, CHUNK_ELEMENTS // max(1, n_genes)) if chunk_size is None else chunk_size
    return [slice(i, min(i + size, n_cells)) for i in range(0, n_cells, size)]


def _is_dask(X: object) -> bool:
    return type(X).__module__.split(".")[0] == "dask"


def is_blockwise(X: object) -> bool:
    """Whether ``X`` is a dask array or a backed (on-disk) matrix, read block by block."""
    if _is_dask(X) or type(X).__module__.split(".")[0] == "h5py":
        return True
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(X, CSRDataset | CSCDataset)


def non_negative(X: sparse.csr_matrix) -> bool:
    """Whether a sparse matrix holds no negative value."""
    return not X.nnz or bool(X.data.min() >= 0)


class GeneSelection(NamedTuple):
    """With a gene mask (``mask_var``), what the engine needs of every gene besides the masked ones it fits on."""

    mask: np.ndarray
    """Boolean over all input genes: fitted on (True) or denoised through the fit (False)."""
    totals: np.ndarray
    """Each kept cell's total count over all genes (the depth normalisation divides by it)."""
    max_count: float
    """The largest count of any gene."""


class _Facts(NamedTuple):
    is_counts: bool
    non_negative: bool
    totals: np.ndarray
    has_counts: np.ndarray
    gene_nonzeros: np.ndarray
    max_count: float
    all_totals: np.ndarray
    all_max_count: float


def _facts(block: sparse.csr_matrix, columns: np.ndarray | None, *, what: str, counts: bool) -> _Facts:
    """Validate a block of counts (every gene) and count what the source keeps of it (the genes of ``columns``)."""
    is_counts = check_count_values(block, what=what, counts=counts)
    all_totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
    all_max_count = float(block.data.max()) if block.nnz else 0.0
    fitted = block if columns is None else as_canonical_csr(block[:, columns])
    has_counts, gene_nonzeros = nonzero_counts(fitted)
    return _Facts(
        is_counts,
        is_counts or non_negative(block),
        all_totals if columns is None else np.asarray(fitted.sum(axis=1), dtype=np.float64).ravel(),
        has_counts,
        gene_nonzeros,
        all_max_count if columns is None else (float(fitted.data.max()) if fitted.nnz else 0.0),
        all_totals,
        all_max_count,
    )


def _merged(parts: list[_Facts]) -> _Facts:
    """Return the facts of every block: per-cell arrays joined, per-gene counts added, flags and maxima combined."""
    return _Facts(
        is_counts=all(p.is_counts for p in parts),
        non_negative=all(p.non_negative for p in parts),
        totals=np.concatenate([p.totals for p in parts]),
        has_counts=np.concatenate([p.has_counts for p in parts]),
        gene_nonzeros=np.sum([p.gene_nonzeros for p in parts], axis=0),
        max_count=max(p.max_count for p in parts),
        all_totals=np.concatenate([p.all_totals for p in parts]),
        all_max_count=max(p.all_max_count for p in parts),
    )


class Source:
    """Validated counts, read in blocks of cells; cells and genes without counts left out.

    ``map``, ``reduce`` and ``load`` call ``fn(block, rows)`` with the block as canonical CSR
    (kept cells and genes only) and ``rows``, its cells' positions among the kept cells, so that
    per-cell arrays and the split's counter keys line up whatever the blocks. ``is_counts``:
    raw counts throughout; ``non_negative``: no negative value (the output is then projected
    onto values ≥ 0).

    ``columns`` (a boolean mask over genes, ``mask_var``): the source holds those genes only;
    every gene is still validated, :attr:`selection` keeps what the engine needs of all of them,
    and ``map``/``reduce`` with ``all_genes=True`` read the kept cells' every gene.
    """

    def __init__(
        self,
        X: Any,
        what: str,
        *,
        empty: Literal["error", "drop"],
        counts: bool,
        columns: np.ndarray | None = None,
    ) -> None:
        self.what = what
        self.columns = columns
        self.in_memory = not is_blockwise(X)
        if self.in_memory:
            self._prepare_in_memory(X, empty=empty, counts=counts)
        else:
            self._prepare_blocks(X, empty=empty, counts=counts)

    # -- the validation pass ---------------------------------------------------------------------
    def _prepare_in_memory(self, X: Any, *, empty: Literal["error", "drop"], counts: bool) -> None:
        every_gene = as_canonical_csr(X)
        facts = _facts(every_gene, self.columns, what=self.what, counts=counts)
        self.input_shape = (int(X.shape[0]), int(X.shape[1]))
        self._keep(facts, empty=empty)
        matrix = every_gene if self.columns is None else every_gene[:, self.columns]
        if self.cells is not None or self.genes is not None:
            matrix = matrix[facts.has_counts][:, facts.gene_nonzeros > 0]
        self._matrix = as_canonical_csr(matrix)
        self._every_gene = None if self.columns is None else every_gene  # read by all_genes passes only
        self._slices = [slice(0, self._matrix.shape[0])]  # one block of the kept cells
        self._kept_before = np.arange(self._matrix.shape[0] + 1)

    def _prepare_blocks(self, X: Any, *, empty: Literal["error", "drop"], counts: bool) -> None:
        from anndata.abc import CSCDataset

        if isinstance(X, CSCDataset):
            msg = (
                f"{self.what} is a backed CSC matrix, whose cells cannot be read in blocks; write it as CSR "
                "(e.g. `adata.X = adata.X.tocsr()` before `write_h5ad`) or load it with `adata.to_memory()`."
            )
            raise ValueError(msg)
        if len(X.shape) != 2:
            msg = f"Expected a 2-D cells × genes matrix, got an array of shape {X.shape}."
            raise ValueError(msg)
        check_known_chunks(X, self.what)
        self.input_shape = (int(X.shape[0]), int(X.shape[1]))
        if 0 in self.input_shape:
            msg = f"{self.what} has shape {self.input_shape}; it needs at least one cell and one gene."
            raise ValueError(msg)
        if _is_dask(X):
            if len(X.chunks[1]) > 1:  # whole genes per block: the split keys and statistics need full rows
                X = X.rechunk({1: -1})
            bounds = np.cumsum((0, *X.chunks[0]))
        else:
            step = max(1, _BACKED_BLOCK_ELEMENTS // max(1, self.input_shape[1]))
            bounds = np.r_[np.arange(0, self.input_shape[0], step), self.input_shape[0]]
        self._source = X
        self._slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
        self._delayed: list[Any] | None = None
        self.cells = self.genes = None
        self._kept_before = np.arange(self.input_shape[0] + 1)

        def inspect(block: sparse.csr_matrix, rows: slice) -> _Facts:
            return _facts(block, self.columns, what=f"{self.what} (cells {rows.start}..{rows.stop - 1})", counts=counts)

        self._keep(_merged(self.map(inspect, all_genes=True)), empty=empty)

    def _keep(self, facts: _Facts, *, empty: Literal["error", "drop"]) -> None:
        """Keep the cells and genes with counts (``facts`` of all cells), and what the engine needs of them."""
        what = self.what if self.columns is None else f"{self.what} (the genes of mask_var)"
        self.cells, self.genes = check_empty(facts.has_counts, facts.gene_nonzeros > 0, what=what, empty=empty)
        if self.cells is not None:
            self._kept_before = np.r_[0, np.cumsum(self.cells)]
        kept = slice(None) if self.cells is None else self.cells
        self.totals = facts.totals[kept]  # dropped genes hold no counts
        self.is_counts, self.non_negative, self.max_count = facts.is_counts, facts.non_negative, facts.max_count
        self.selection = (
            None if self.columns is None else GeneSelection(self.columns, facts.all_totals[kept], facts.all_max_count)
        )

    # -- reading ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Kept cells × kept genes."""
        n_cells = self.input_shape[0] if self.cells is None else int(self.cells.sum())
        return n_cells, self.gene_index().size

    def gene_index(self) -> np.ndarray:
        """Return the kept genes' positions among the input genes."""
        index = np.arange(self.input_shape[1]) if self.columns is None else np.flatnonzero(self.columns)
        return index if self.genes is None else index[self.genes]

    def matrix(self) -> sparse.csr_matrix:
        """All kept counts as canonical CSR (in memory only)."""
        return self._matrix

    def _apply(
        self, fn: Callable[[sparse.csr_matrix, slice], Any], block: Any, rows: slice, all_genes: bool = False
    ) -> Any:
        if self.in_memory:
            if not all_genes:
                return fn(self._matrix, rows)
            every_gene = self._every_gene
            return fn(every_gene if self.cells is None else as_canonical_csr(every_gene[self.cells]), rows)
        block = as_canonical_csr(block)
        if self.cells is not None:
            block = block[self.cells[rows]]
        if not all_genes and self.columns is not None:
            block = block[:, self.columns]
        if not all_genes and self.genes is not None:
            block = block[:, self.genes]
        start = int(self._kept_before[rows.start])
        return fn(as_canonical_csr(block), slice(start, start + block.shape[0]))

    def _blocks(self) -> list[Any]:
        """Return the dask array's blocks as delayed objects, made once."""
        if self._delayed is None:
            self._delayed = list(self._source.to_delayed().ravel())
        return self._delayed

    def __getstate__(self) -> dict[str, Any]:
        # tasks carry this object to dask's workers: the delayed blocks (the whole graph again) stay here
        return {**self.__dict__, "_delayed": None}

    def _shared(self, fn: Callable[..., Any]) -> Any:
        """Return the source and ``fn`` as one node of a dask graph, which the tasks of a pass take as input.

        Their per-cell arrays then travel to each worker once, and are held there once, rather
        than once with every task (a pass has a task per block: memory would grow with cells²).
        """
        import dask

        return dask.delayed(_Shared(self, fn), name=f"sc_noise2self-pass-{uuid.uuid4().hex}", traverse=False)

    def _tasks(
        self, fn: Callable[[sparse.csr_matrix, slice], Any], indices: Iterable[int], all_genes: bool
    ) -> list[Any]:
        import dask

        blocks, shared = self._blocks(), self._shared(fn)
        return [dask.delayed(_apply_shared)(shared, blocks[i], self._slices[i], all_genes) for i in indices]

    def map(self, fn: Callable[[sparse.csr_matrix, slice], Any], *, all_genes: bool = False) -> list[Any]:
        """``fn`` of every block, in block order (``all_genes``: the kept cells' every input gene)."""
        return self.load(range(len(self._slices)), fn, all_genes=all_genes)

    def load(
        self, indices: Iterable[int], fn: Callable[[sparse.csr_matrix, slice], Any], *, all_genes: bool = False
    ) -> list[Any]:
        """``fn`` of the blocks at ``indices``, in that order, computed together."""
        if self.in_memory:
            return [self._apply(fn, None, self._slices[0], all_genes) for _ in indices]
        if _is_dask(self._source):
            import dask

            return list(dask.compute(*self._tasks(fn, indices, all_genes)))
        return [self._apply(fn, self._source[self._slices[i]], self._slices[i], all_genes) for i in indices]

    def reduce(
        self,
        fn: Callable[[sparse.csr_matrix, slice], Any],
        merge: Callable[[Any, Any], Any],
        *,
        all_genes: bool = False,
    ) -> Any:
        """``fn`` of every block, merged pairwise (a tree of merges under dask, so partials are freed early)."""
        if not self.in_memory and _is_dask(self._source):
            import dask

            parts = self._tasks(fn, range(len(self._slices)), all_genes)
            while len(parts) > 1:
                parts = [dask.delayed(_merge_all)(merge, parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
            return dask.compute(parts[0])[0]
        total = None
        for rows in self._slices:
            part = self._apply(fn, None if self.in_memory else self._source[rows], rows, all_genes)
            total = part if total is None else merge(total, part)
        return total

    def kept_bounds(self) -> list[slice]:
        """Each block's cells among the kept cells (empty slices for blocks without kept cells)."""
        return [slice(int(self._kept_before[r.start]), int(self._kept_before[r.stop])) for r in self._slices]

    def gather(self, keep: np.ndarray) -> sparse.csr_matrix:
        """Return the kept cells ``keep`` marks (a boolean mask over them), in one pass, as one CSR matrix."""
        if self.in_memory:
            return self._matrix if keep.all() else self._matrix[keep]
        return sparse.vstack(self.map(lambda block, rows: block[keep[rows]]), format="csr")

    def lazy(self, fn: Callable[[sparse.csr_matrix, slice], np.ndarray], n_columns: int) -> Any:
        """Dask array of ``fn`` over every block (a float32 row per input cell, 0 for dropped cells), computed on use.

        ``fn(block, rows)`` gets the block's kept cells and genes as for :meth:`map`; backed
        input is read from its file when a block is computed.
        """
        import dask
        import dask.array as da

        if _is_dask(self._source):
            sources = self._blocks()
        else:
            sources = [dask.delayed(self._source.__getitem__)(rows) for rows in self._slices]
        shared = self._shared(fn)
        parts = [
            da.from_delayed(
                dask.delayed(_full_rows)(shared, b, rows, n_columns),
                shape=(rows.stop - rows.start, n_columns),
                dtype=np.float32,
            )
            for b, rows in zip(sources, self._slices, strict=True)
        ]
        return da.concatenate(parts, axis=0)

    def full_rows(self, fn: Callable[[sparse.csr_matrix, slice], np.ndarray], block: Any, rows: slice, n_columns: int):
        """``fn`` of a block placed among every input cell and gene (0 for those left out), float32."""
        out = np.zeros((rows.stop - rows.start, n_columns), dtype=np.float32)
        kept = np.ones(out.shape[0], dtype=bool) if self.cells is None else self.cells[rows]
        if kept.any():
            out[np.ix_(np.flatnonzero(kept), self.gene_index())] = self._apply(fn, block, rows)
        return out


@dataclass(frozen=True)
class _Shared:
    """A source and the function a pass maps over its blocks (one graph node; see :meth:`Source._shared`)."""

    source: Source
    fn: Callable[..., Any]


def _apply_shared(shared: _Shared, block: Any, rows: slice, all_genes: bool) -> Any:
    return shared.source._apply(shared.fn, block, rows, all_genes)


def _full_rows(shared: _Shared, block: Any, rows: slice, n_columns: int) -> np.ndarray:
    return shared.source.full_rows(shared.fn, block, rows, n_columns)


def _merge_all(merge: Callable[[Any, Any], Any], parts: list[Any]) -> Any:
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return total


class _Stream:
    """The blocks of data read block by block, for a loop that reads a few at a time (the autoencoder)."""

    def __init__(self, data: BlockData) -> None:
        kept = data.source.kept_bounds()
        self._data = data
        self._index = [i for i, rows in enumerate(kept) if rows.stop > rows.start]
        self.bounds = [kept[i] for i in self._index]

    def load(self, blocks: list[int]) -> list[Block]:
        """Return the :class:`~sc_noise2self.denoisers.Block` of each of ``blocks`` (indices into ``bounds``)."""
        return self._data.source.load([self._index[b] for b in blocks], self._data.make)


class BlockData:
    """Data read block by block (:class:`~sc_noise2self.denoisers.Data`): ``make(counts, rows)`` of each block.

    Each pass reads and makes every block again; in memory the engine uses
    :class:`~sc_noise2self.denoisers.ArrayData` instead.
    """

    in_memory = False

    def __init__(
        self,
        source: Source,
        make: Callable[[sparse.csr_matrix, slice], Block],
        *,
        scales: np.ndarray,
        transform: str,
        max_rate: float,
        scored: np.ndarray | None = None,
    ) -> None:
        self.source, self.make = source, make
        self.shape = source.shape
        self.scales, self.transform, self.max_rate = scales, transform, max_rate
        self.scored = scored

    def matrix(self) -> sparse.csr_matrix:
        """Refused: these data are not in memory."""
        msg = (
            "This method needs all the data in memory, and they are read block by block (a dask array or a "
            "backed AnnData); load them first (`adata = adata.to_memory()`, or `.compute()` the dask array)."
        )
        raise ValueError(msg)

    def counts(self) -> sparse.csr_matrix | None:
        """Refused: these data are not in memory."""
        return self.matrix()

    def block(self, rows: slice = slice(None)) -> Block:
        """Refused: these data are not in memory."""
        return self.matrix()

    def map(self, fn: Callable[[Block], Any]) -> list[Any]:
        """``fn`` of every block, in cell order."""
        return self.source.map(lambda counts, rows: fn(self.make(counts, rows)))

    def reduce(self, fn: Callable[[Block], Any], merge: Callable[[Any, Any], Any]) -> Any:
        """``fn`` of every block, merged pairwise."""
        return self.source.reduce(lambda counts, rows: fn(self.make(counts, rows)), merge)

    def stream(self) -> _Stream:
        """Return the input's blocks with kept cells, to read a few at a time."""
        return _Stream(self)


def training_data(
    source: Source,
    make: Callable[[sparse.csr_matrix, slice], Block],
    *,
    scales: np.ndarray,
    transform: str,
    max_rate: float,
    whole: Block | None = None,
    scored: np.ndarray | None = None,
) -> ArrayData | BlockData:
    """Return the data to fit on: ``make(counts, rows)`` of every block (in memory one block, or ``whole``).

    ``scored``: the cells a calibration will score (sorted positions; None: every cell), which a
    method that reads other cells' data may need to know when the data are read block by block.
    """
    if not source.in_memory:
        return BlockData(source, make, scales=scales, transform=transform, max_rate=max_rate, scored=scored)
    if whole is None:
        whole = make(source.matrix(), slice(0, source.shape[0]))
    return ArrayData(whole.values, whole.counts, scales=scales, transform=transform, max_rate=max_rate)
