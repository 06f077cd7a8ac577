"""The kNN average: each cell's expression replaced by the mean over its ``n_neighbors`` nearest cells.

It is the smoothing a neighbour graph stands for (scanpy's ``n_neighbors`` counts the
cell itself), so calibrating it answers "how many neighbours?" from the data: with
molecular cross-validation the graph and the average come from the training molecules and
are scored on the held-out ones; with the gene partition (Noise2Self) the graph comes from
the other genes and a cell's own held-out values are never read.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, ClassVar

import numba
import numpy as np
from scipy import sparse

from .._numerics.checks import check_int_grid, check_positive_int
from .._numerics.linalg import as_float
from .._numerics.loss import squared_error_row
from .._numerics.machine import default_max_dense_bytes
from ._base import BaseDenoiser, Predicted, Sweep, Tags
from ._registry import register
from ._search import EXACT_MAX_CELLS, NeighborSearch, knn_graph
from .pca import PCA, as_data

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._numerics.loss import RowScorer
    from .._types import ArrayLike
    from ._base import Block, Data, Partition, ScoreKind

__all__ = ["KNNAverage"]

_DEFAULT_GRID = np.array([2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 50, 70, 100])


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _neighbour_sweep(
    indptr, indices, data, n_genes, first, others, sizes, means, target, flat, n, rows, weights, inv_step, losses
):  # pragma: no cover - compiled
    # Row r of the block: the running sum of ``first[r]`` (when >= 0) and then of its
    # neighbours in order, divided by the number of rows summed at each size in ``sizes``:
    # stored in ``means`` (sizes × block × genes), or, when ``means`` is empty, scored at
    # once against the cell's held-out row into ``losses`` (block × sizes). Every row is
    # computed alone, in a fixed order: independent of the block.
    score = means.shape[0] == 0
    for r in numba.prange(others.shape[0]):
        acc = np.zeros(n_genes)
        pred = np.empty(n_genes, dtype=np.float32)
        used = 0
        if first[r] >= 0:
            for p in range(indptr[first[r]], indptr[first[r] + 1]):
                acc[indices[p]] += data[p]
            used = 1
        j = 0
        for v in range(sizes.size):
            while used < sizes[v]:
                cell = others[r, j]
                for p in range(indptr[cell], indptr[cell + 1]):
                    acc[indices[p]] += data[p]
                j += 1
                used += 1
            scale = 1.0 / sizes[v]
            for g in range(n_genes):
                pred[g] = acc[g] * scale
            if score:
                losses[r, v] = squared_error_row(pred, target[r], flat, n, rows[r], weights[r], inv_step)
            else:
                means[v, r] = pred


_NO_SCORER = (np.zeros((0, 0)), np.zeros(1), 1, np.zeros(0, dtype=np.int64), np.zeros(0), 1.0)


def _sweep_kernel(
    X: sparse.csr_matrix, first: np.ndarray, others: np.ndarray, sizes: np.ndarray, scorer: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`_neighbour_sweep`: the means (no scorer) or the per-cell losses (a ``RowScorer``)."""
    score = scorer is not _NO_SCORER
    means = np.empty((0 if score else sizes.size, others.shape[0], X.shape[1]), dtype=np.float32)
    losses = np.empty((others.shape[0], sizes.size if score else 0))
    _neighbour_sweep(
        X.indptr,
        X.indices,
        X.data.astype(np.float64, copy=False),
        X.shape[1],
        np.ascontiguousarray(first, dtype=np.int64),
        np.ascontiguousarray(others, dtype=np.int64),
        np.ascontiguousarray(sizes, dtype=np.int64),
        means,
        *scorer,  # target, table, row length, rows, weights, inverse step
        losses,
    )
    return means, losses


def neighbour_means(X: sparse.csr_matrix, first: np.ndarray, others: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Means of ``X``'s rows over growing neighbourhoods, for a block of cells.

    ``first``: a row index per cell of the block (its own row), or -1 to leave it out;
    ``others``: its neighbours, nearest first; ``sizes``: increasing numbers of rows to
    average (``first`` included when given). Returns float32, sizes × block × genes.
    """
    return _sweep_kernel(X, first, others, sizes, _NO_SCORER)[0]


class _Sweep(Sweep):
    """Averages of blocks of cells over growing neighbourhoods, for every ``(n_neighbors, n_pcs)`` of a grid.

    ``neighbours`` maps ``n_pcs`` to each cell's nearest other cells in that many
    components; ``own`` says whether a cell's own row is part of its average (MCV) or not
    (Noise2Self, where it is the held-out value).
    """

    def __init__(self, data: sparse.csr_matrix, neighbours: dict[int, np.ndarray], grid: np.ndarray, *, own: bool):
        self.data, self.neighbours, self.grid, self.own = data, neighbours, grid, own
        self.grid_ = grid

    def _passes(self, rows: slice) -> Iterator[tuple[int, np.ndarray, tuple]]:
        """Per ``n_pcs``: its ``n_neighbors`` values and the kernel's row arguments for cells ``rows``."""
        cells = np.arange(self.data.shape[0])[rows]
        first = cells if self.own else np.full(cells.size, -1)
        for n_pcs, others in self.neighbours.items():
            ks = self.grid if self.grid.ndim == 1 else self.grid[self.grid[:, 1] == n_pcs, 0]
            yield n_pcs, ks, (self.data, first, others[rows], ks if self.own else ks - 1)

    def predictions(self, block: Block) -> Iterator[tuple[int | tuple[int, int], np.ndarray]]:
        for n_pcs, ks, args in self._passes(block.rows):
            for k, pred in zip(ks, neighbour_means(*args), strict=True):
                yield (int(k) if self.grid.ndim == 1 else (int(k), n_pcs)), pred

    def fuses(self, kind: ScoreKind) -> bool:
        return kind == "held_out"

    def losses(self, block: Block, scorer: RowScorer) -> np.ndarray:
        """Per-cell MSE of the block at every grid value (cells × values), one parallel region per ``n_pcs``."""
        passes = self._passes(block.rows)
        return np.concatenate([_sweep_kernel(*args, tuple(scorer))[1] for _, _, args in passes], axis=1)


class _Gathered(Sweep):
    """kNN averages of the scored cells of data read block by block, whose neighbours lie in any block.

    Per ``n_pcs``, one pass over the blocks: each block adds its cells' values to the sums of the
    scored cells they are neighbours of (a cell's own values to its own), in bands of neighbour
    ranks between consecutive ``n_neighbors``; the bands' running sums divided by
    ``n_neighbors`` are the averages, held as float32 (scored cells × genes per grid value).
    Predictions exist for the scored cells (``data.scored``) only.
    """

    def __init__(self, data: Data, neighbours: dict[int, np.ndarray], grid: np.ndarray) -> None:
        self.grid_ = grid
        self.scored = np.arange(data.shape[0]) if data.scored is None else np.asarray(data.scored)
        self.means: list[np.ndarray] = []  # per grid value, in grid order
        for n_pcs, others in neighbours.items():
            ks = grid if grid.ndim == 1 else grid[grid[:, 1] == n_pcs, 0]
            bands = _bands(self.scored, others[self.scored], ks, data.shape[0])

            def band_sums(block: Block, bands: sparse.csc_matrix = bands) -> sparse.csr_matrix:
                return sparse.csr_matrix(bands[:, block.rows] @ block.values)

            sums = data.reduce(band_sums, operator.add).toarray().reshape(len(ks), self.scored.size, -1)
            np.cumsum(sums, axis=0, out=sums)  # in place: the bands' running sums
            self.means.extend((sums[v] * (1.0 / k)).astype(np.float32) for v, k in enumerate(ks))

    def predictions(self, block: Block) -> Iterator[tuple[int | tuple[int, int], np.ndarray]]:
        at = int(np.searchsorted(self.scored, block.rows.start))
        cells = slice(at, at + block.rows.stop - block.rows.start)
        if not np.array_equal(self.scored[cells], np.arange(block.rows.start, block.rows.stop)):
            msg = "The kNN average of data read block by block predicts only the cells the calibration scores."
            raise ValueError(msg)
        for value, means in zip(self.grid_, self.means, strict=True):
            yield (int(value) if self.grid_.ndim == 1 else (int(value[0]), int(value[1]))), means[cells]


def _bands(scored: np.ndarray, others: np.ndarray, ks: np.ndarray, n_cells: int) -> sparse.csc_matrix:
    """Which cells each scored cell's average adds, by band: (bands · scored cells) × cells, ones.

    Row ``b · len(scored) + r`` marks scored cell ``r``'s neighbours of ranks ``ks[b - 1]`` to
    ``ks[b] - 1`` (``others`` nearest first; the cell itself, rank 1, in band 0).
    """
    n = scored.size
    rows, columns, done = [np.arange(n)], [scored], 1
    for b, k in enumerate(ks):
        ranks = np.arange(done - 1, k - 1)
        rows.append(np.repeat(b * n + np.arange(n), ranks.size))
        columns.append(others[:, ranks].ravel())
        done = int(k)
    rows, columns = np.concatenate(rows), np.concatenate(columns)
    return sparse.csc_matrix((np.ones(rows.size), (rows, columns)), shape=(len(ks) * n, n_cells))


@register("knn")
class KNNAverage(BaseDenoiser):
    """Denoise each cell by the mean over its ``n_neighbors`` nearest cells, itself included.

    The neighbours are found in the first ``n_pcs`` principal components of the
    (transformed) data, computed as :class:`~sc_noise2self.denoisers.PCA` does, and the
    average is over all genes, not over a low-rank reconstruction: it is the smoothing of
    a uniform-weight kNN graph, the quantity scanpy's ``n_neighbors`` sets. How well it
    predicts held-out data measures the graph: neighbours of another kind of cell, or too
    few neighbours, both cost.

    The grid is over ``n_neighbors`` (the cell included, as in ``sc.pp.neighbors``), or
    over pairs ``(n_neighbors, n_pcs)`` (2-D, see :func:`sc_noise2self.tl.grid`). One
    principal component analysis at the largest ``n_pcs`` and one neighbour search per
    ``n_pcs`` at its largest ``n_neighbors`` serve the whole grid, and a block of cells is
    averaged at every ``n_neighbors`` in one pass.

    Parameters
    ----------
    n_pcs
        Principal components of the embedding the neighbours are found in, when the grid
        is over ``n_neighbors`` only.
    neighbor_search
        ``"exact"`` (compiled brute force), ``"approximate"`` (pynndescent, seeded) or
        ``"auto"``: exact up to 100,000 cells, approximate above.
    random_state
        Seed of the randomised SVD (above 4,096 genes) and of the approximate search.
    """

    tags = Tags(gene_partition="held_out", blockwise=True, in_memory_output=True)
    axis_labels: ClassVar[dict[str, str]] = {
        "n_neighbors": "number of neighbours (the cell included)",
        "n_pcs": "number of principal components",
    }

    def __init__(self, *, n_pcs: int = 50, neighbor_search: NeighborSearch = "auto", random_state: object = 0) -> None:
        self.n_pcs = n_pcs
        self.neighbor_search = neighbor_search
        self.random_state = random_state

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("n_neighbors",) if np.ndim(grid) == 1 else ("n_neighbors", "n_pcs")

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """2..5, then steps to 100 neighbours, capped by the number of cells."""
        return _DEFAULT_GRID[_DEFAULT_GRID <= shape[0]]

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range (called before any work)."""
        super().check_params()
        check_positive_int(self.n_pcs, "n_pcs")
        if self.neighbor_search not in ("auto", "exact", "approximate"):
            msg = f"neighbor_search must be 'auto', 'exact' or 'approximate', got {self.neighbor_search!r}."
            raise ValueError(msg)

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """``n_neighbors`` (2 to the number of cells, the cell itself counting) or ``(n_neighbors, n_pcs)`` pairs.

        Pairs come back sorted by ``n_pcs``, then ``n_neighbors``; ``n_pcs`` lies in
        1..``min(n_cells, n_genes) - 1``.
        """
        self.check_params()
        if min(shape) < 2:
            msg = f"The kNN average needs at least 2 cells and 2 genes, got {shape}."
            raise ValueError(msg)
        values = np.asarray(grid)
        if values.ndim == 1:
            return check_int_grid(values, low=2, high=shape[0], name="n_neighbors")
        if values.ndim != 2 or values.shape[1] != 2 or values.shape[0] == 0:
            msg = f"A 2-D kNN grid holds (n_neighbors, n_pcs) pairs, got shape {values.shape}."
            raise ValueError(msg)
        check_int_grid(values[:, 0], low=2, high=shape[0], name="n_neighbors")
        check_int_grid(values[:, 1], low=1, high=min(shape) - 1, name="n_pcs")
        values = np.unique(values.astype(np.int64), axis=0)
        return values[np.lexsort((values[:, 0], values[:, 1]))]

    def _pcs_and_sizes(self, grid: np.ndarray) -> dict[int, int]:
        """Each ``n_pcs`` of the grid and the most neighbours it is asked for (the cell included)."""
        if grid.ndim == 1:
            return {int(self.n_pcs): int(grid.max())}
        return {int(p): int(grid[grid[:, 1] == p, 0].max()) for p in np.unique(grid[:, 1])}

    def _embedding(self, data: Data, n_comps: int) -> np.ndarray:
        """Return every cell's scores on the top ``n_comps`` components, as PCA computes them (block by block)."""
        n_comps = min(n_comps, min(data.shape) - 1)
        pca = PCA(random_state=self.random_state)
        pca.fit(data, np.array([n_comps]))
        return np.concatenate(data.map(pca.output(n_comps).scores))

    def _neighbours(self, embedding: np.ndarray, sizes: dict[int, int]) -> dict[int, np.ndarray]:
        """Return, per ``n_pcs``, each cell's ``size - 1`` nearest other cells in the top components."""
        self.check_params()
        method = self.neighbor_search
        if method == "auto":
            method = "exact" if embedding.shape[0] <= EXACT_MAX_CELLS else "approximate"
        seed = int(np.random.default_rng(self.random_state).integers(2**31 - 1))
        neighbours, seeds = {}, None
        for n_pcs in sorted(sizes):  # each search seeded by the one in fewer components (faster, same result)
            found = knn_graph(embedding[:, :n_pcs], sizes[n_pcs] - 1, method=method, seed=seed, seeds=seeds)[1]
            neighbours[n_pcs], seeds = found.astype(np.int32), found
        return neighbours

    # -- MCV ------------------------------------------------------------------------------
    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> KNNAverage | _Sweep:
        """Find every cell's nearest other cells in the embedding of the data, for every ``n_pcs`` of the grid.

        Data read block by block give the averages of the cells the calibration scores
        (``data.scored``), gathered in one pass over the blocks per ``n_pcs``. With a
        ``partition``, the sweep of :meth:`held_out_genes` for its held-out group.
        """
        if partition is not None:
            return self.held_out_genes(data, partition.genes, partition.cell_groups, grid)
        self.grid_ = np.asarray(grid, dtype=np.int64)
        sizes = self._pcs_and_sizes(self.grid_)
        if not data.in_memory:
            _check_gathered_size(data, self.grid_, sizes)
        neighbours = self._neighbours(self._embedding(data, max(sizes)), sizes)
        if not data.in_memory:
            return _Gathered(data, neighbours, self.grid_)
        self.data_ = sparse.csr_matrix(as_float(data.matrix()))
        self.neighbors_ = neighbours
        return self

    def _sweep(self) -> _Sweep:
        return _Sweep(self.data_, self.neighbors_, self.grid_, own=True)

    def predictions(self, block: Block) -> Iterator[tuple[int | tuple[int, int], np.ndarray]]:
        """Yield the averages of the block's cells at every grid value, one pass per ``n_pcs``."""
        return self._sweep().predictions(block)

    def fuses(self, kind: ScoreKind) -> bool:
        return kind == "held_out"

    def losses(self, block: Block, scorer: RowScorer) -> np.ndarray:
        """Per-cell MSE of the block at every grid value, averaged and scored in one pass per ``n_pcs``."""
        return self._sweep().losses(block, scorer)

    def output(self, value: int | tuple[int, int]) -> Predicted:
        """Return the average over the ``n_neighbors`` nearest cells (the cell included)."""
        k, n_pcs = (value, int(self.n_pcs)) if np.ndim(value) == 0 else (int(value[0]), int(value[1]))

        def predict(block: Block) -> np.ndarray:
            cells = np.arange(self.data_.shape[0])[block.rows]
            return neighbour_means(self.data_, cells, self.neighbors_[n_pcs][block.rows], np.array([k]))[0]

        return Predicted(predict)

    # -- Noise2Self -----------------------------------------------------------------------
    def held_out_genes(
        self, data: Data | ArrayLike, genes: np.ndarray, cell_groups: np.ndarray, grid: np.ndarray
    ) -> _Sweep:
        """Average genes ``genes`` over the ``n_neighbors - 1`` nearest other cells, found from the other genes.

        A cell's prediction reads only other cells' held-out values (so ``cell_groups``
        is not needed) and the graph never sees the held-out genes: the prediction is
        J-invariant. The neighbourhood has the size of scanpy's graph with that
        ``n_neighbors``, the cell itself being the one member that cannot be used. ``data``:
        :class:`~sc_noise2self.denoisers.Data` (read block by block; the held-out genes of every
        cell are gathered, sparse) or a matrix.
        """
        data = as_data(data)
        grid = np.asarray(grid, dtype=np.int64)
        sizes = self._pcs_and_sizes(grid)
        n_comps = min(max(sizes), min(data.shape[0], data.shape[1] - int(np.count_nonzero(genes))) - 1)
        embedding = PCA(random_state=self.random_state).other_genes_scores(data, genes, n_comps)
        held_out = sparse.vstack(data.map(lambda block: sparse.csr_matrix(as_float(block.values))[:, genes]))
        return _Sweep(sparse.csr_matrix(held_out), self._neighbours(embedding, sizes), grid, own=False)


def _check_gathered_size(data: Data, grid: np.ndarray, sizes: dict[int, int]) -> None:
    """Refuse, before any pass, averages of the scored cells too large for memory (data read block by block)."""
    n_scored = data.shape[0] if data.scored is None else len(data.scored)
    most_bands = max(int((grid if grid.ndim == 1 else grid[grid[:, 1] == p]).shape[0]) for p in sizes)
    size = n_scored * data.shape[1] * (4 * len(grid) + 8 * most_bands)  # the averages, one n_pcs' sums
    budget = min(default_max_dense_bytes(), _GATHERED_BYTES)
    if size > budget:
        msg = (
            f"The kNN average of data read block by block holds its averages for the {n_scored:,} cells scored "
            f"({len(grid)} settings × {data.shape[1]:,} genes: {size / 2**30:.1f} GiB, above {budget / 2**30:.1f} "
            "GiB): pass a lower max_scored_cells or a shorter grid, select genes first, or load the counts."
        )
        raise ValueError(msg)


_GATHERED_BYTES = 2**33
"""Most memory the averages of the scored cells may take (data read block by block)."""
