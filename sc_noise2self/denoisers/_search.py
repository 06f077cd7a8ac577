"""Exact nearest-neighbour search in a low-dimensional embedding (PCA scores).

Each cell's ``n_neighbors`` nearest *other* cells by Euclidean distance, as scikit-learn's
``NearestNeighbors(n_neighbors).fit(X).kneighbors()`` gives them, in one compiled parallel
pass over tiles of cells:

1. candidates: a tile's squared distances to every cell up to a per-query constant,
   ``|x_j|²/2 - q·x_j``, from one single-threaded float32 BLAS product per tile (the
   embedding centred first, which leaves distances alone and keeps float32 accurate), and
   the ``n_neighbors + MARGIN`` smallest kept in a max-heap by a threshold scan — a
   vectorised count against the current worst candidate, and a heap update only where
   it is beaten;
2. exact order: the candidates' squared distances recomputed in float64 from the
   coordinates (a fixed sum per pair) and sorted, ties by cell index; the first
   ``n_neighbors`` are returned.

The float32 stage only has to keep every true neighbour among the ``MARGIN`` extra
candidates, which fails only when more than ``MARGIN`` cells lie within float32 rounding
(~1e-6 relative) of the last neighbour's distance; the returned distances and order are
then those of float64 arithmetic. The candidates are the smallest in a total order
(value, then cell index), so they are a function of the embedding alone: ``seeds`` (each
cell's neighbours in a similar embedding — the previous gene group, fewer components) put
near cells in the heap first, so that the scan rarely has to update it; they change the
time, never a bit of the answer (which the gene partition's J-invariance relies on).
Tiles depend on the number of cells only, and BLAS runs on one thread inside numba's
workers, so the result does not depend on the thread count.
"""

from __future__ import annotations

from typing import Any, Literal

import numba
import numpy as np

from .._numerics import device as on_device
from .._numerics.machine import blas_threads

__all__ = ["EXACT_MAX_CELLS", "MARGIN", "NeighborSearch", "exact_neighbours", "knn_graph"]

NeighborSearch = Literal["auto", "exact", "approximate"]
EXACT_MAX_CELLS = 100_000  # neighbor_search="auto" searches exactly up to this many cells

MARGIN = 8
"""Candidates kept beyond ``n_neighbors`` by the float32 stage, for the float64 re-ranking."""

_TILE_BYTES = 2**23  # a tile's float32 distance block (tile × cells), per thread


@numba.njit(cache=True, inline="always")
def _before(value, cell, other_value, other_cell):  # pragma: no cover - compiled
    # The candidates' total order: by value, ties by cell index.
    return value < other_value or (value == other_value and cell < other_cell)


@numba.njit(cache=True, inline="always")
def _replace_worst(values, cells, value, cell):  # pragma: no cover - compiled
    # ``values``/``cells`` form a max-heap in the total order (its root the worst candidate
    # kept): the root gives way to the new candidate, which sinks to its place.
    size = values.size
    p = 0
    while True:
        child = 2 * p + 1
        if child >= size:
            break
        if child + 1 < size and _before(values[child], cells[child], values[child + 1], cells[child + 1]):
            child += 1
        if not _before(value, cell, values[child], cells[child]):
            break
        values[p] = values[child]
        cells[p] = cells[child]
        p = child
    values[p] = value
    cells[p] = cell


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "reassoc"})
def _candidates(points, points_t, half_norms, seeds, tile, out):  # pragma: no cover - compiled
    # Each cell's ``kept`` smallest (value, cell) pairs, value = |x_j|²/2 - q·x_j: a pure
    # function of the embedding, whatever the seeds (they only fill the heap early) or the
    # order of the scan.
    n = points.shape[0]
    kept = out.shape[1]
    seeded = seeds.shape[1] > 0
    for t in numba.prange((n + tile - 1) // tile):
        start = t * tile
        stop = min(start + tile, n)
        products = np.dot(points[start:stop], points_t)
        values = np.empty(kept, np.float32)
        cells = np.empty(kept, np.int64)
        seen = np.full(n if seeded else 0, -1, np.int64)  # seen[j] == me: seed j is in me's heap
        for r in range(stop - start):
            me = start + r
            row = products[r]
            values[:] = np.inf
            cells[:] = n  # after every real cell in the order
            if seeded:
                seen[me] = me
                for q in range(seeds.shape[1]):
                    j = seeds[me, q]
                    if j >= 0 and seen[j] != me:
                        seen[j] = me
                        v = half_norms[j] - row[j]
                        if _before(v, j, values[0], cells[0]):
                            _replace_worst(values, cells, v, j)
            for j0 in range(0, n, 16):
                j1 = min(j0 + 16, n)
                worst = values[0]
                beaten = 0
                for j in range(j0, j1):  # vectorised: may any of these 16 cells be kept?
                    beaten += (half_norms[j] - row[j]) <= worst
                if beaten:
                    for j in range(j0, j1):
                        v = half_norms[j] - row[j]
                        if _before(v, j, values[0], cells[0]) and j != me and not (seeded and seen[j] == me):
                            _replace_worst(values, cells, v, j)
            out[me] = cells


@numba.njit(parallel=True, cache=True)
def _rerank(points, candidates, distances, indices):  # pragma: no cover - compiled
    # Exact float64 squared distances of the candidates (each a fixed sum over the
    # coordinates in order), sorted by (distance, cell); the first k are kept.
    k = indices.shape[1]
    for i in numba.prange(points.shape[0]):
        cells = candidates[i]
        squared = np.empty(cells.size)
        for q in range(cells.size):
            acc = 0.0
            for c in range(points.shape[1]):
                d = points[i, c] - points[cells[q], c]
                acc += d * d
            squared[q] = acc
        order = np.argsort(cells)  # then a stable sort by distance: ties by cell index
        order = order[np.argsort(squared[order], kind="mergesort")]
        for q in range(k):
            distances[i, q] = np.sqrt(squared[order[q]])
            indices[i, q] = cells[order[q]]


def exact_neighbours(
    embedding: np.ndarray, n_neighbors: int, *, seeds: np.ndarray | None = None, device: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return distances (float64) and indices (int64) of each cell's ``n_neighbors`` nearest other cells.

    ``embedding`` is cells × dimensions; ``n_neighbors`` < cells. Rows are sorted by
    distance, ties by cell index. ``seeds`` (cells × any, cell indices, ``-1`` for none)
    are cells likely to be near each cell; they make the search faster, never different
    (see the module's notes). ``device``: a torch device screens the candidates
    (:func:`~sc_noise2self._numerics.device.neighbour_candidates`; seeds are not needed there).
    """
    points = np.asarray(embedding, dtype=np.float64)
    n = points.shape[0]
    if not 0 < n_neighbors < n:
        msg = f"n_neighbors must be between 1 and the number of cells - 1 ({n - 1}), got {n_neighbors}."
        raise ValueError(msg)
    if not np.isfinite(points).all():
        msg = "The embedding holds NaN or infinite values; neighbours cannot be found."
        raise ValueError(msg)
    points = np.ascontiguousarray(points - points.mean(axis=0))
    single = points.astype(np.float32)
    half_norms = (0.5 * np.einsum("ij,ij->i", points, points)).astype(np.float32)
    seeds = np.full((n, 0), -1, np.int64) if seeds is None else np.ascontiguousarray(seeds, dtype=np.int64)
    if seeds.shape[0] != n or (seeds.size and seeds.max() >= n):
        msg = f"seeds must have one row per cell and hold cell indices below {n}."
        raise ValueError(msg)
    n_candidates = min(n_neighbors + MARGIN, n - 1)
    if device is not None:
        candidates = on_device.neighbour_candidates(single, half_norms, n_candidates, device)
    else:
        candidates = np.empty((n, n_candidates), np.int64)
        tile = int(np.clip(_TILE_BYTES // (4 * n), 8, 128))
        with blas_threads(1):
            _candidates(single, np.ascontiguousarray(single.T), half_norms, seeds, tile, candidates)
    distances = np.empty((n, n_neighbors))
    indices = np.empty((n, n_neighbors), np.int64)
    _rerank(points, candidates, distances, indices)
    return distances, indices


def knn_graph(
    embedding: np.ndarray,
    n_neighbors: int,
    *,
    method: Literal["exact", "approximate"] = "exact",
    seed: int = 0,
    seeds: np.ndarray | None = None,
    device: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each cell's ``n_neighbors`` nearest other cells.

    ``"exact"``: a compiled brute-force search (:func:`~sc_noise2self.denoisers._search.exact_neighbours`;
    its cost grows with cells squared), ``seeds`` being cells likely near each one (they
    speed it up). ``"approximate"``: pynndescent's NN-descent, seeded by ``seed`` (the same
    seed gives the same graph). ``device``: a torch device for the exact search's screening.
    """
    if method == "exact":
        return exact_neighbours(embedding, n_neighbors, seeds=seeds, device=device)
    from pynndescent import NNDescent

    index = NNDescent(embedding, n_neighbors=n_neighbors + 1, random_state=seed, n_jobs=-1)
    indices, distances = index.neighbor_graph
    cells = np.arange(len(embedding))[:, None]
    # A neighbour it did not find (index -1) becomes the cell itself: an extra weight on its
    # self-loop. Each cell is then dropped from its own list (wherever ties put it), and
    # self entries still needed to fill the list go last, at the row's farthest distance,
    # so distances stay sorted and the adaptive kernel's scale holds.
    indices = np.where(indices < 0, cells, indices)
    is_self = indices == cells
    farthest = np.max(np.where(is_self, 0.0, distances), axis=1, keepdims=True)
    distances = np.where(is_self, farthest, distances)
    order = np.argsort(is_self, axis=1, kind="stable")[:, :n_neighbors]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(indices, order, axis=1)
