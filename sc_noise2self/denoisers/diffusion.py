"""Diffusion on a cell-cell kNN graph (MAGIC-like), calibrated over the diffusion time ``t``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numba
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee

from .._numerics import device as on_device
from .._numerics.checks import check_int_grid, check_number, check_positive_int
from .._numerics.machine import default_max_dense_bytes
from .._numerics.rows import low_rank_rows, low_rank_sweep_losses
from ._base import BaseDenoiser, LowRank, Step, Sweep, Tags
from ._registry import register
from ._search import EXACT_MAX_CELLS, NeighborSearch, knn_graph
from .pca import PCA, _cross_fitted_prediction, as_data, held_out_values

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .._numerics.loss import RowScorer
    from .._types import ArrayLike
    from ._base import Block, Data, Partition, ScoreKind

__all__ = ["Diffusion", "transition_matrix"]

Kernel = Literal["knn", "adaptive"]
_MAX_T = 1000


def transition_matrix(
    distances: np.ndarray, indices: np.ndarray, *, kernel: Kernel = "knn", decay: float = 40.0
) -> sparse.csr_matrix:
    """Row-stochastic, sparse transition matrix of a lazy random walk on a kNN graph.

    ``"knn"`` weighs every neighbour 1; ``"adaptive"`` uses MAGIC's alpha-decaying kernel
    ``exp(-(d / σ_i) ** decay)`` with ``σ_i`` the distance to cell ``i``'s farthest listed
    neighbour. The affinities are symmetrised (average of both directions), every cell
    keeps itself with weight 1 (a lazy walk), and rows are normalised to sum to 1.
    """
    n, k = indices.shape
    if kernel == "knn":
        weights = np.ones(n * k)
    elif kernel == "adaptive":
        sigma = np.maximum(distances[:, -1:], np.finfo(float).tiny)
        weights = np.exp(-((distances / sigma) ** decay)).ravel()
    else:
        msg = f"kernel must be 'knn' or 'adaptive', got {kernel!r}."
        raise ValueError(msg)
    affinity = sparse.csr_matrix((weights, (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n))
    affinity = (affinity + affinity.T) * 0.5 + sparse.identity(n, format="csr")
    return sparse.csr_matrix(sparse.diags(1.0 / np.asarray(affinity.sum(axis=1)).ravel()) @ affinity)


def _avoiding_scales(P: sparse.csr_matrix, cell_groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per cell and cell group ``c``: 1 / (the cell's transition weight to cells outside ``c``), 0 where it has none."""
    outside = np.zeros((P.shape[0], n_groups))
    rows = np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))
    for c in range(n_groups):
        keep = cell_groups[P.indices] != c
        outside[:, c] = np.bincount(rows[keep], weights=P.data[keep], minlength=P.shape[0])
    return np.where(outside > 0, 1.0 / np.where(outside > 0, outside, 1.0), 0.0)


@numba.njit(cache=True, fastmath={"contract"})
def _axpy(acc, weight, source):  # pragma: no cover - compiled
    # Not inlined: on its own, the loop is vectorised (fused multiply-adds, the same in every row).
    for j in range(acc.size):
        acc[j] += weight * source[j]


@numba.njit(parallel=True, cache=True)
def _avoiding_step(indptr, indices, weights, cell_groups, scales, states, out, own_only):  # pragma: no cover
    # states[q, c]: cell q's state on the walk that never enters cell group c (states[q, 0]
    # for every walk when states has one column: the first step). A step of that walk reads
    # only cells outside c, so a cell of group c never reads its own values. Each row sums
    # its stored entries in index order, whatever the values or the threads. ``own_only``
    # (the last step): each cell's state on its own group's walk only, all that is read after.
    shared = states.shape[1] == 1
    for r in numba.prange(indptr.size - 1):
        acc = out[r]
        mine = cell_groups[r]
        acc[:] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            q = indices[p]
            weight = weights[p]
            source = states[q]
            own = cell_groups[q]
            for c in range(acc.shape[0]):
                if c != own and (c == mine or not own_only):
                    _axpy(acc[c], weight, source[0 if shared else c])
        for c in range(acc.shape[0]):
            scale = np.float32(scales[r, c])
            for j in range(acc.shape[1]):
                acc[c, j] *= scale


@numba.njit(parallel=True, cache=True)
def _own_walks(states, cell_groups, cells, out):  # pragma: no cover - compiled
    # Row r of the states is cell cells[r]; its prediction is its state on its own group's walk.
    for r in numba.prange(states.shape[0]):
        row = out[cells[r]]
        source = states[r, cell_groups[r]]
        for j in range(row.size):
            row[j] = source[j]


class _HeldOutWalks(Sweep):
    """The gene partition's sweep of :meth:`Diffusion.held_out_genes`, in value order."""

    order = "values"

    def __init__(self, grid: np.ndarray, steps: Callable[[], Iterator[Step]]) -> None:
        self.grid_, self._steps = grid, steps

    def values(self) -> Iterator[Step]:
        return self._steps()


@register("diffusion")
class Diffusion(BaseDenoiser):
    """Denoise by diffusing each cell's expression over a kNN graph of cells for ``t`` steps.

    The graph is built on the first ``n_pcs`` principal components of the (transformed)
    data, computed as :class:`~sc_noise2self.denoisers.PCA` does (exact up to 4,096
    genes, randomised above, block by block either way); the data are diffused as their
    first ``n_comps`` principal components and mapped back to genes block by block, so
    memory stays ``O(nnz + n_cells · n_comps)``
    and no cells × cells matrix is ever dense. ``t = 0`` is the rank-``n_comps`` PCA
    reconstruction; each step multiplies by the transition matrix once more, so a sweep
    over ``t = 0..T`` costs one graph and ``T`` sparse products.

    The grid is over ``t`` (1-D), or over pairs ``(t, n_neighbors)`` (2-D, see
    :func:`sc_noise2self.tl.grid`): one neighbour search at the largest ``n_neighbors``
    serves every smaller one.

    Parameters
    ----------
    n_neighbors
        Neighbours per cell when the grid is over ``t`` only.
    n_pcs
        Principal components of the embedding the neighbours are found in.
    n_comps
        Principal components the data are diffused in.
    kernel
        ``"knn"`` (plain neighbour average) or ``"adaptive"`` (MAGIC's alpha-decay kernel).
    decay
        Exponent of the adaptive kernel.
    neighbor_search
        ``"exact"`` (compiled brute force), ``"approximate"`` (pynndescent, seeded) or
        ``"auto"``: exact up to 100,000 cells, approximate above.
    device
        Where the embedding (Gram matrices, eigenproblem), an exact neighbour search's
        screening, the diffusion steps of the sweep and its scoring run: ``"auto"`` (a CUDA
        device when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, as for
        :class:`~sc_noise2self.denoisers.PCA`. The approximate search (above 100,000 cells by
        default) and the graph's kernel stay on the CPU.
    random_state
        Seed of the randomised PCA (used above 4,096 genes; below, the PCA is exact, see
        :class:`~sc_noise2self.denoisers.PCA`) and of the approximate neighbour search.
    """

    tags = Tags(low_rank=True, gene_partition="held_out", blockwise=True, n_cell_groups=3)
    """Three cell groups for the gene partition (:meth:`held_out_genes`): each diffusion step moves
    one walk per group, and each walk loses a group's share of every neighbourhood, which the
    graph makes up by listing ``groups / (groups - 1)`` times the neighbours. Three groups move
    two walks through each neighbour instead of four (with five) over 1.5× instead of 1.25×
    the edges: 40 % less work per step, and chose as five groups did on every simulator tried."""
    axis_labels: ClassVar[dict[str, str]] = {
        "t": "diffusion time t",
        "n_neighbors": "number of neighbours (the cell included)",
    }

    def __init__(
        self,
        *,
        n_neighbors: int = 15,
        n_pcs: int = 30,
        n_comps: int = 100,
        kernel: Kernel = "knn",
        decay: float = 40.0,
        neighbor_search: NeighborSearch = "auto",
        device: str = "auto",
        random_state: object = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.n_pcs = n_pcs
        self.n_comps = n_comps
        self.kernel = kernel
        self.decay = decay
        self.neighbor_search = neighbor_search
        self.device = device
        self.random_state = random_state

    def __getstate__(self) -> dict:
        """Pickle without the last neighbour search's indices (kept only to seed the next gene group's)."""
        return {key: value for key, value in self.__dict__.items() if key != "_last_neighbours"}

    # -- grid ---------------------------------------------------------------------------
    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("t",) if np.ndim(grid) == 1 else ("t", "n_neighbors")

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Diffusion times 0..20."""
        return np.arange(21)

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range (called before any work)."""
        super().check_params()
        check_positive_int(self.n_neighbors, "n_neighbors")
        check_positive_int(self.n_pcs, "n_pcs")
        check_positive_int(self.n_comps, "n_comps")
        if self.kernel not in ("knn", "adaptive"):
            msg = f"kernel must be 'knn' or 'adaptive', got {self.kernel!r}."
            raise ValueError(msg)
        check_number(self.decay, "decay", low=0.0, open_low=True, example="40")
        if self.neighbor_search not in ("auto", "exact", "approximate"):
            msg = f"neighbor_search must be 'auto', 'exact' or 'approximate', got {self.neighbor_search!r}."
            raise ValueError(msg)
        on_device.check_device(self.device)

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """``t`` values (1-D) or ``(t, n_neighbors)`` pairs (2-D), sorted by ``n_neighbors`` then ``t``."""
        self.check_params()
        if min(shape) < 2:
            msg = f"Diffusion needs at least 2 cells and 2 genes (it diffuses principal components), got {shape}."
            raise ValueError(msg)
        values = np.asarray(grid)
        max_k = shape[0] - 1
        if values.ndim == 1:
            if self.n_neighbors > max_k:
                msg = f"n_neighbors={self.n_neighbors} needs more than {shape[0]} cells; lower n_neighbors."
                raise ValueError(msg)
            return check_int_grid(values, low=0, high=_MAX_T, name="t")
        if values.ndim != 2 or values.shape[1] != 2 or values.shape[0] == 0:
            msg = f"A 2-D diffusion grid holds (t, n_neighbors) pairs, got shape {values.shape}."
            raise ValueError(msg)
        t = check_int_grid(values[:, 0], low=0, high=_MAX_T, name="t")
        k = check_int_grid(values[:, 1], low=1, high=max_k, name="n_neighbors")
        del t, k  # range checks only; keep every pair, once
        values = np.unique(values.astype(np.int64), axis=0)
        return values[np.lexsort((values[:, 0], values[:, 1]))]

    def _neighbour_counts(self, grid: np.ndarray) -> np.ndarray:
        return np.array([self.n_neighbors]) if grid.ndim == 1 else np.unique(grid[:, 1])

    def _times(self, grid: np.ndarray, k: int) -> np.ndarray:
        return grid if grid.ndim == 1 else grid[grid[:, 1] == k, 0]

    def _value(self, grid: np.ndarray, t: int, k: int) -> int | tuple[int, int]:
        return int(t) if grid.ndim == 1 else (int(t), int(k))

    def _operators(
        self,
        embedding: np.ndarray,
        grid: np.ndarray,
        cell_groups: int = 1,
        seeds: np.ndarray | None = None,
        device: Any = None,
    ) -> dict[int, sparse.csr_matrix]:
        """Return the walk of every ``n_neighbors`` of the grid, from one neighbour search.

        With ``cell_groups`` > 1 (the gene partition, whose walks never enter one of that
        many groups of cells), each graph lists ``ceil(k · groups / (groups - 1))``
        neighbours, so that a cell keeps about ``k`` of them outside any one group — as many
        as the output's graph averages over. ``seeds`` speed up an exact search (its answer
        does not depend on them); the neighbours found are kept in ``_last_neighbours``.
        ``device``: a torch device for an exact search's screening.
        """
        ks = self._neighbour_counts(grid)
        self.check_params()
        method = self.neighbor_search
        if method == "auto":
            method = "exact" if len(embedding) <= EXACT_MAX_CELLS else "approximate"
        seed = int(np.random.default_rng(self.random_state).integers(2**31 - 1))
        listed = {int(k): int(k) if cell_groups < 2 else -(-int(k) * cell_groups // (cell_groups - 1)) for k in ks}
        listed = {k: min(n, len(embedding) - 1) for k, n in listed.items()}
        distances, indices = knn_graph(
            embedding, max(listed.values()), method=method, seed=seed, seeds=seeds, device=device
        )
        self._last_neighbours = indices
        return {
            k: transition_matrix(distances[:, :n], indices[:, :n], kernel=self.kernel, decay=self.decay)
            for k, n in listed.items()
        }

    # -- MCV ------------------------------------------------------------------------------
    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> Diffusion | _HeldOutWalks:
        """Build the graph(s) on the top ``n_pcs`` components of the data and keep its top ``n_comps``.

        The components come from the Gram statistics merged over blocks of cells (up to 4,096
        genes; above, a randomised subspace iteration, one pass over the blocks per iteration)
        and each block's scores from its own rows, so data read block by block give the
        in-memory result. With a ``partition``, the sweep of :meth:`held_out_genes` for its
        held-out group.
        """
        if partition is not None:
            return self.held_out_genes(data, partition.genes, partition.cell_groups, grid)
        self.grid_ = np.asarray(grid)
        self._held_out_pca = None
        n_comps = min(self.n_comps, min(data.shape) - 1)
        pca = PCA(device=self.device, random_state=self.random_state)  # its route for this many genes
        pca.fit(data, np.array([n_comps]))
        self.mean_, self.components_, self.device_ = pca.mean_, pca.components_, pca.device_
        scores = np.concatenate(data.map(pca.output(n_comps).scores))
        self.scores_ = scores
        self.operators_ = self._operators(
            scores[:, : min(self.n_pcs, scores.shape[1])], self.grid_, device=self.device_
        )
        self._stacked: tuple[list[object], np.ndarray] | None = None
        return self

    def _diffused_scores(self) -> Iterator[tuple[object, np.ndarray]]:
        """For each ``n_neighbors``, the scores diffused one step at a time through the ``t`` grid."""
        for k, P in self.operators_.items():
            times = self._times(self.grid_, k)
            if self.device_ is not None:
                for t, z in zip(times, on_device.diffuse(P, self.scores_, list(times), self.device_), strict=True):
                    yield self._value(self.grid_, t, k), z
                continue
            z, done = self.scores_, 0
            for t in times:
                for _ in range(int(t) - done):
                    z = P @ z
                done = int(t)
                yield self._value(self.grid_, t, k), z

    def _block_mapper(self) -> Callable[[np.ndarray], np.ndarray]:
        """Map scores of a block of cells to its genes, each row on its own (``_numerics.rows.low_rank_rows``).

        That product dominates the sweep; it runs in float32 (rounding ~1e-7 relative, far
        below the loss differences between settings), every row alone, so the prediction
        does not depend on the blocking or the threads.
        """
        mean, components = self.mean_.astype(np.float32), self.components_.astype(np.float32)
        return lambda z: low_rank_rows(mean, z, components, accumulate=np.float32)

    @property
    def order(self) -> Literal["blocks", "values"]:
        """Block order when the diffused scores of every grid value fit in a sixteenth of memory, else value order."""
        needed = len(self.grid_) * self.scores_.shape[0] * self.scores_.shape[1] * 4
        return "blocks" if needed <= default_max_dense_bytes() // 4 else "values"

    def _stack(self) -> tuple[list[object], np.ndarray]:
        """Return the grid values and the diffused scores of each, made once (float32, values × cells × ``n_comps``)."""
        if self._stacked is None:
            values, stacked = [], []
            for value, z in self._diffused_scores():
                values.append(value)
                stacked.append(z.astype(np.float32))
            self._stacked = (values, np.stack(stacked))
        return self._stacked

    def predictions(self, block: Block) -> Iterator[tuple[object, np.ndarray]]:
        """Predictions for the block at every grid value, from the diffused scores of every value."""
        mapper = self._block_mapper()
        values, stacked = self._stack()
        for value, z in zip(values, stacked, strict=True):
            yield value, mapper(z[block.rows])

    def values(self) -> Iterator[Step]:
        """For each grid value in order, a predictor of blocks of cells (see :meth:`_block_mapper`)."""
        mapper = self._block_mapper()
        for value, z in self._diffused_scores():
            yield Step(value, lambda block, z=z: mapper(z[block.rows]))

    def fuses(self, kind: ScoreKind) -> bool:
        return kind == "held_out" and self.order == "blocks"

    def losses(self, block: Block, scorer: RowScorer) -> np.ndarray:
        """Per-cell MSE of the block at every grid value, predicted and scored in one parallel region.

        Each block is mapped to genes and scored at every value in a row, as :meth:`predictions`
        would, to the same bytes.
        """
        stacked = self._stack()[1][:, block.rows]
        if self.device_ is not None:
            return on_device.stacked_losses(self.mean_, stacked, self.components_, scorer, self.device_)
        return low_rank_sweep_losses(self.mean_, stacked, self.components_, scorer)

    def output(self, value: int | tuple[int, int]) -> LowRank:
        """Return the output after ``t`` steps, factored: mean + diffused scores @ components."""
        t, k = (value, self.n_neighbors) if np.ndim(value) == 0 else tuple(value)
        z = self.scores_
        for _ in range(int(t)):
            z = self.operators_[int(k)] @ z
        return LowRank(self.mean_, lambda block: z[block.rows], self.components_)

    # -- Noise2Self -----------------------------------------------------------------------
    def held_out_genes(
        self, data: Data | ArrayLike, genes: np.ndarray, cell_groups: np.ndarray, grid: np.ndarray
    ) -> _HeldOutWalks:
        """Smooth genes ``genes`` over a graph built from the other genes, never reading a cell's own values.

        The graph comes from the other genes only. A cell group's prediction diffuses the
        held-out genes over the walk that never enters the group (its columns removed,
        rows renormalised), so it reads only other groups' held-out values. That walk
        loses the neighbours in the cell's own group (a third, with :attr:`n_cell_groups`
        groups): the graph lists proportionally more (:meth:`_operators`), so each step
        averages over about as many cells as the output's walk does, and the calibrated
        ``(t, n_neighbors)`` means what it means for the output. ``t = 0``, like the
        output's, is the rank-``n_comps`` PCA reconstruction, here J-invariant: the held-out
        genes regressed on the other genes' components, learnt from the other cell groups
        (as :meth:`PCA.held_out_genes <sc_noise2self.denoisers.PCA.held_out_genes>` does). The walks
        of every cell group take each step together, in float32, in one pass over the graph
        (:func:`_avoiding_step`), with cells in an order that keeps neighbours close in
        memory. Memory: two float32 arrays of cells × cell groups × held-out genes. ``data``:
        :class:`~sc_noise2self.denoisers.Data` (read block by block) or a matrix.
        """
        data = as_data(data)
        grid = np.asarray(grid)
        n_other = data.shape[1] - int(np.count_nonzero(genes))
        n_pcs = min(self.n_pcs, min(data.shape[0], n_other) - 1)
        pca = getattr(self, "_held_out_pca", None)
        if pca is None or pca.random_state != self.random_state:  # one PCA: its Gram matrix serves every group
            self._held_out_pca = PCA(random_state=self.random_state)
        n_groups = int(cell_groups.max()) + 1
        n_comps = min(self.n_comps, n_other - 1, data.shape[0] - int(np.bincount(cell_groups).max()) - 1)
        scores = self._held_out_pca.other_genes_scores(data, genes, max(n_pcs, n_comps))
        embedding = scores[:, :n_pcs]
        # The previous gene group's neighbours seed this group's search: near cells first, the
        # same answer (a function of this embedding alone, so J-invariance holds), less time.
        seeds = getattr(self, "_last_neighbours", None)
        seeds = seeds if seeds is not None and len(seeds) == len(embedding) else None
        operators = self._operators(embedding, grid, cell_groups=n_groups, seeds=seeds)
        target = held_out_values(data, genes)
        # t = 0 (and a cell whose every neighbour is in its own group): the rank-n_comps PCA
        # reconstruction the output starts from, in its J-invariant form — the held-out genes
        # regressed on the other genes' components, learnt from the other cell groups.
        if n_comps > 0:
            reconstruction = _cross_fitted_prediction(scores[:, :n_comps], target, cell_groups)
        else:  # no component to regress on: the other groups' mean
            reconstruction = np.empty(target.shape)
            for c in range(n_groups):
                reconstruction[cell_groups == c] = target[cell_groups != c].mean(axis=0)
        reconstruction.flags.writeable = False  # every t = 0 of the grid reads this one array
        held_out, n_cells = target.astype(np.float32), target.shape[0]  # the walks' start; target is not kept

        def steps() -> Iterator[Step]:
            for k, P in operators.items():
                # Cells in reverse Cuthill-McKee order: neighbours' states lie close in memory.
                cells = reverse_cuthill_mckee(P, symmetric_mode=False)
                walk = P[cells][:, cells].tocsr()
                walk.sort_indices()
                groups = np.ascontiguousarray(cell_groups[cells], dtype=np.int32)
                scales = _avoiding_scales(walk, groups, n_groups)
                stranded = np.zeros(len(cells), dtype=bool)
                stranded[cells] = scales[np.arange(len(cells)), groups] == 0
                weights = walk.data.astype(np.float32)
                states = np.ascontiguousarray(held_out[cells, None, :])
                buffers = [np.empty((n_cells, n_groups, held_out.shape[1]), np.float32) for _ in range(2)]
                order = cells.astype(np.int64)
                times, done = self._times(grid, k), 0
                for t in times:
                    for step in range(done, int(t)):
                        out = buffers[0] if states is not buffers[0] else buffers[1]
                        last = step == int(times[-1]) - 1
                        _avoiding_step(walk.indptr, walk.indices, weights, groups, scales, states, out, last)
                        states = out
                    done = int(t)
                    if t == 0:
                        pred = reconstruction
                    else:
                        pred = np.empty(held_out.shape)
                        _own_walks(states, groups, order, pred)
                        pred[stranded] = reconstruction[stranded]
                    yield Step(self._value(grid, t, k), lambda block, pred=pred: pred[block.rows])

        return _HeldOutWalks(grid, steps)
