"""Low-rank (PCA) denoising: the centred data projected on its top ``k`` components."""

from __future__ import annotations

import weakref
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Literal

import numba
import numpy as np
from scipy import linalg, sparse

from .._numerics import device as on_device
from .._numerics.checks import check_int_grid, check_non_negative_int
from .._numerics.linalg import (
    GramStats,
    as_float,
    centred_scores,
    covariance_svd,
    gram_randomized_svd,
    gram_stats,
    gram_times,
    merge_gram_stats,
)
from .._numerics.loss import at_least, squared_error_row
from ._base import ArrayData, BaseDenoiser, LowRank, Sweep, Tags
from ._registry import register

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._numerics.loss import DataScorer, RowScorer
    from .._types import ArrayLike
    from ._base import Block, Data, Partition, ScoreKind

__all__ = ["PCA"]

AUTO_MAX_GENES = 4096  # solver="auto" uses the covariance route up to this many genes


@numba.njit(parallel=True, cache=True, fastmath=True)
def _add_product(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out += a @ b`` in place, one pass over ``out`` per row of ``b``.

    The sweep adds a few components at a time (inner dimension 1–5), where this is
    memory-bound; it shares numba's thread pool with the scoring kernel instead of
    contending with BLAS threads.
    """
    for c in numba.prange(out.shape[0]):
        for j in range(a.shape[1]):
            coef = a[c, j]
            for g in range(out.shape[1]):
                out[c, g] += coef * b[j, g]


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _rank_sweep_losses(
    offset, coefs, loadings, ranks, target, flat, n, rows, weights, inv_step, out
):  # pragma: no cover
    """Score every rank of ``ranks`` for a block of cells in one parallel region.

    Each cell's prediction is built up component by component in float32 (the same
    multiply-adds, in the same order, as :func:`_add_product`) and scored after each rank
    of the grid; nothing cells × genes is stored. No ``nnan``/``ninf`` fastmath: a
    non-finite prediction must give a NaN loss (see :mod:`sc_noise2self._loss`).
    """
    n_genes = loadings.shape[1]
    for c in numba.prange(coefs.shape[0]):
        pred = offset.copy()
        done = 0
        for v in range(ranks.size):
            for j in range(done, ranks[v]):
                coef = coefs[c, j]
                for g in range(n_genes):
                    pred[g] += coef * loadings[j, g]
            done = ranks[v]
            out[c, v] = squared_error_row(pred, target[c], flat, n, rows[c], weights[c], inv_step)


@numba.njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _grouped_rank_errors(offsets, coefs, loadings, groups, ranks, target, lower, out):  # pragma: no cover - compiled
    """Write each cell's summed squared error against ``target`` at every rank of ``ranks`` (its group's fit).

    One parallel region per block of cells for the whole grid (the gene partition's
    counterpart of :func:`_rank_sweep_losses`, on the data's own scale: no conversion;
    predictions floored at ``lower``).
    """
    n_genes = offsets.shape[1]
    for c in numba.prange(coefs.shape[0]):
        group = groups[c]
        pred = offsets[group].copy()
        done = 0
        for v in range(ranks.size):
            for j in range(done, ranks[v]):
                coef = coefs[c, j]
                for g in range(n_genes):
                    pred[g] += coef * loadings[group, j, g]
            done = ranks[v]
            acc = 0.0
            for g in range(n_genes):
                d = at_least(pred[g], lower) - target[c, g]
                acc += d * d
            out[c, v] = acc


@register("pca")
class PCA(BaseDenoiser):
    """Denoise by keeping the top ``n_comps`` principal components of the transformed data.

    One truncated SVD at the largest grid value serves the whole grid: the prediction at
    rank ``k`` is the one at the previous grid value plus the next components, added
    block by block over cells.

    Parameters
    ----------
    solver
        ``"covariance"``: eigenvectors of the genes × genes centred Gram matrix,
        accumulated over blocks of cells (exact, one pass; the route for dask input).
        ``"randomized"``: randomised subspace iteration on the centred Gram matrix, one pass
        over blocks of cells per iteration and never the genes × genes matrix (for many
        genes, in memory or read block by block). ``"auto"``: covariance up to 4,096 genes,
        randomised above.
    n_oversamples
        Extra random directions of the randomised SVD.
    n_iter
        Power iterations of the randomised SVD; more is more accurate for the trailing
        components.
    device
        Where the calibration's Gram matrices, eigenproblem and scoring run: ``"auto"``
        (a CUDA device when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"`` (needs torch, the ``autoencoder`` extra). The choice on a CUDA device
        is the CPU's; its losses agree to rounding.
    random_state
        Seed of the randomised SVD's test matrix (anything :func:`numpy.random.default_rng` takes).
    """

    tags = Tags(low_rank=True, gene_partition="held_out", blockwise=True)
    axis_labels: ClassVar[dict[str, str]] = {"n_comps": "number of principal components"}

    def __init__(
        self,
        *,
        solver: Literal["auto", "covariance", "randomized"] = "auto",
        n_oversamples: int = 20,
        n_iter: int = 7,
        device: str = "auto",
        random_state: object = 0,
    ) -> None:
        self.solver = solver
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.device = device
        self.random_state = random_state

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("n_comps",)

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Every rank to 20, then steps of 2 to 40 and of 5 to 100, capped by the data size."""
        grid = np.r_[np.arange(1, 21), np.arange(22, 41, 2), np.arange(45, 101, 5)]
        return grid[grid <= min(shape) - 1]

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range (called before any work)."""
        super().check_params()
        if not isinstance(self.solver, str) or self.solver not in {"auto", "covariance", "randomized"}:
            msg = f"solver must be 'auto', 'covariance' or 'randomized', got {self.solver!r}."
            raise ValueError(msg)
        check_non_negative_int(self.n_oversamples, "n_oversamples")
        check_non_negative_int(self.n_iter, "n_iter")
        on_device.check_device(self.device)

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Sorted unique ranks from 1 to ``min(n_cells, n_genes) - 1``."""
        self.check_params()
        return check_int_grid(grid, low=1, high=min(shape) - 1, name="n_comps")

    def uses_covariance(self, n_genes: int) -> bool:
        """Whether data with ``n_genes`` genes go through the covariance route."""
        self.check_params()
        return self.solver == "covariance" or (self.solver == "auto" and n_genes <= AUTO_MAX_GENES)

    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> PCA | _GroupedRankSweep:
        """Fit one truncated SVD at ``max(grid)``: from merged Gram statistics, or randomised, block by block.

        With a ``partition``, the sweep of :meth:`held_out_genes` for its held-out group.
        """
        self.device_ = device = on_device.resolve(self.device)
        if partition is not None:
            return self.held_out_genes(data, partition.genes, partition.cell_groups, grid)
        self.grid_ = np.sort(np.asarray(grid, dtype=np.int64))
        n_comps = int(self.grid_[-1])
        self._gram_cache = None
        if self.uses_covariance(data.shape[1]):
            if device is None:
                stats = data.reduce(lambda block: gram_stats(as_float(block.values)), merge_gram_stats)
                self.singular_values_, self.components_ = covariance_svd(stats, n_comps)
            else:
                stats = data.reduce(lambda block: on_device.gram_stats(block.values, device), merge_gram_stats)
                self.singular_values_, self.components_ = on_device.covariance_svd(stats, n_comps, device)
            self.mean_ = stats.mean
            return self
        self.mean_, self.singular_values_, self.components_ = self.randomized_components(data, n_comps)
        return self

    def randomized_components(
        self, data: Data, n_comps: int, columns: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gene means, singular values and components by randomised subspace iteration, block by block.

        ``columns``: a boolean mask of the genes to decompose (default: all of them).
        """
        device = getattr(self, "device_", None)
        select = (lambda values: values) if columns is None else (lambda values: values[:, columns])
        return gram_randomized_svd(
            lambda fn, merge: data.reduce(lambda block: fn(select(block.values)), merge),
            (data.shape[0], data.shape[1] if columns is None else int(columns.sum())),
            n_comps,
            n_oversamples=self.n_oversamples,
            n_iter=self.n_iter,
            rng=np.random.default_rng(self.random_state),
            terms=gram_times if device is None else partial(on_device.gram_times, device=device),
        )

    def _scores(self, block: Block) -> np.ndarray:
        """Return the block's scores (``U S``) on every fitted component."""
        if self.device_ is not None:
            return on_device.centred_scores(block.values, self.mean_, self.components_, self.device_)
        return centred_scores(as_float(block.values), self.mean_, self.components_)

    def predictions(self, block: Block) -> Iterator[tuple[int, np.ndarray]]:
        """Predictions for the block at every rank of the grid, updated in place (float32)."""
        coefs = self._scores(block).astype(np.float32)
        loadings = np.ascontiguousarray(self.components_, dtype=np.float32)
        pred = np.empty((coefs.shape[0], self.mean_.size), dtype=np.float32)
        pred[:] = self.mean_
        done = 0
        for k in self.grid_:
            _add_product(pred, np.ascontiguousarray(coefs[:, done:k]), loadings[done:k])
            done = k
            yield int(k), pred

    def fuses(self, kind: ScoreKind) -> bool:
        return kind == "held_out"

    def losses(self, block: Block, scorer: RowScorer) -> np.ndarray:
        """Per-cell MSE of the block at every rank (cells × ranks), predicted and scored in one parallel region."""
        if self.device_ is not None:
            args = (self.mean_, self._scores(block), self.components_, self.grid_, scorer, self.device_)
            return on_device.rank_sweep_losses(*args)
        coefs = np.ascontiguousarray(self._scores(block), dtype=np.float32)
        out = np.empty((coefs.shape[0], len(self.grid_)))
        _rank_sweep_losses(
            self.mean_.astype(np.float32),
            coefs,
            np.ascontiguousarray(self.components_, dtype=np.float32),
            np.asarray(self.grid_, dtype=np.int64),
            *scorer,  # target, table, row length, rows, weights, inverse step
            out,
        )
        return out

    def output(self, value: int) -> LowRank:
        """Return the rank-``value`` output, factored: mean + scores @ components."""
        return LowRank(self.mean_, lambda block: self._scores(block)[:, :value], self.components_[:value])

    def held_out_genes(
        self, data: Data | ArrayLike, genes: np.ndarray, cell_groups: np.ndarray, grid: np.ndarray
    ) -> _GroupedRankSweep:
        """Predict genes ``genes`` from the other genes' top ``k`` components, cross-fitted over cell groups.

        The components come from the other genes only (one SVD at ``max(grid)``; on the
        covariance route, one eigenproblem of the other genes' block of a Gram matrix
        computed once for every gene group of ``data``). For each cell group, the held-out
        genes are regressed on those components over the cells of the *other* groups and
        read off for the group's cells, so no prediction uses a cell's own held-out values.
        ``data``: :class:`~sc_noise2self.denoisers.Data` (read block by block; the held-out
        genes' values are held densely, cells × genes in the group) or a matrix.
        """
        data = as_data(data)
        grid = np.sort(np.asarray(grid, dtype=np.int64))
        scores = self.other_genes_scores(data, genes, int(grid[-1]))
        coefs, offsets, loadings = _cross_fitted_regression(scores, held_out_values(data, genes), cell_groups)
        return _GroupedRankSweep(grid, cell_groups, coefs, offsets, loadings)

    def other_genes_scores(self, data: Data | ArrayLike, genes: np.ndarray, n_comps: int) -> np.ndarray:
        """Scores (``U S``) of the top ``n_comps`` components of the genes other than ``genes``, block by block.

        The components are padded with zeros on ``genes``, whose values then add exact zeros to
        the scores, so they never reach them. On the covariance route they come from the other
        genes' block of one Gram matrix of ``data``, computed once for all the gene groups of a
        calibration; above, from the randomised iteration over the other genes.
        """
        data = as_data(data)
        others = ~np.asarray(genes, dtype=bool)
        padded, mean = np.zeros((n_comps, data.shape[1])), np.zeros(data.shape[1])
        if self.uses_covariance(int(others.sum())):
            stats = self._gram_of(data)
            other_stats = GramStats(stats.n, stats.mean[others], stats.m2[np.ix_(others, others)])
            _, padded[:, others] = covariance_svd(other_stats, n_comps)
            mean = stats.mean
        else:
            mean[others], _, padded[:, others] = self.randomized_components(data, n_comps, others)
        return np.concatenate(data.map(lambda block: centred_scores(as_float(block.values), mean, padded)))

    def __getstate__(self) -> dict:
        """Pickle without the gene groups' Gram matrix (a cache holding a weak reference)."""
        return {key: value for key, value in self.__dict__.items() if key != "_gram_cache"}

    def _gram_of(self, data: Data) -> GramStats:
        """:func:`gram_stats` of ``data``, computed once for the gene groups of a calibration (the same ``data``)."""
        cached = getattr(self, "_gram_cache", None)
        if cached is None or cached[0]() is not data:
            stats = data.reduce(lambda block: gram_stats(as_float(block.values)), merge_gram_stats)
            self._gram_cache = (weakref.ref(data), stats)
        return self._gram_cache[1]


def as_data(data: Data | ArrayLike) -> Data:
    """Return ``data`` as :class:`~sc_noise2self.denoisers.Data` (a matrix as ``ArrayData``)."""
    return data if hasattr(data, "reduce") else ArrayData(data)


def held_out_values(data: Data, genes: np.ndarray) -> np.ndarray:
    """Return the values of genes ``genes`` of every cell, dense float64, read block by block."""

    def dense(block: Block) -> np.ndarray:
        values = as_float(block.values)[:, genes]
        return values.toarray() if sparse.issparse(values) else values

    return np.concatenate(data.map(dense))


def _cross_fitted_regression(
    scores: np.ndarray, target: np.ndarray, cell_groups: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Regress ``target`` on the first ``k`` columns of ``scores`` for every ``k``, leaving out each cell group.

    Returns the coefficients of each cell in the orthonormalised basis of the other groups'
    centred scores ``Z - z̄ = Q R``, and per group the offset ``ȳ`` and loadings ``Qᵀ (Y - ȳ)``:
    rank ``k`` is ``ȳ + coefs[:, :k] @ loadings[:k]``, one term more than rank ``k - 1``
    (``R`` is triangular). ``R`` is the Cholesky factor of the centred Gram matrix of the
    other groups, assembled from per-group sums (in a fixed order, never as a total minus
    the group, so a group's own values cannot reach its coefficients even by rounding);
    columns are scaled to unit norm first, which the predictions do not depend on.
    """
    norms = np.sqrt(np.einsum("ij,ij->j", scores, scores))
    Z = scores / np.where(norms > 0, norms, 1.0)
    n_groups = int(cell_groups.max()) + 1
    members = [np.flatnonzero(cell_groups == g) for g in range(n_groups)]
    sums = [
        (idx.size, Z[idx].sum(axis=0), target[idx].sum(axis=0), Z[idx].T @ Z[idx], Z[idx].T @ target[idx])
        for idx in members
    ]
    coefs = np.empty_like(Z)
    offsets, loadings = [], []
    for g, inside in enumerate(members):
        n, z_sum, y_sum, zz, zy = (sum(parts[1:], parts[0]) for parts in zip(*(sums[:g] + sums[g + 1 :]), strict=True))
        z_mean, y_mean = z_sum / n, y_sum / n
        try:
            r = linalg.cholesky(zz - n * np.outer(z_mean, z_mean), lower=False)
        except linalg.LinAlgError:  # rank-deficient components (tiny data): QR of the rows themselves
            rest = np.concatenate([m for h, m in enumerate(members) if h != g])
            r = _without_empty_directions(linalg.qr(Z[rest] - z_mean, mode="economic")[1])
        coefs[inside] = linalg.solve_triangular(r, (Z[inside] - z_mean).T, trans="T", lower=False).T
        offsets.append(y_mean)
        loadings.append(linalg.solve_triangular(r, zy - n * np.outer(z_mean, y_mean), trans="T", lower=False))
    return coefs, offsets, loadings


def _without_empty_directions(r: np.ndarray) -> np.ndarray:
    """``R`` with each zero pivot's row and column replaced by the identity's.

    A direction without variance (e.g. among identical cells) then gets the coefficient its
    right-hand side has, which is zero there too, instead of a division by zero.
    """
    pivots = np.abs(np.diag(r))
    empty = pivots <= 1e-12 * max(float(pivots.max(initial=0.0)), np.finfo(float).tiny)
    r = r.copy()
    r[empty, :] = 0.0
    r[:, empty] = 0.0
    r[empty, empty] = 1.0
    return r


def _cross_fitted_prediction(scores: np.ndarray, target: np.ndarray, cell_groups: np.ndarray) -> np.ndarray:
    """Each cell's ``target`` regressed on all columns of ``scores``, learnt from the other cell groups.

    The highest rank of :func:`_cross_fitted_regression`, for every cell at once.
    """
    coefs, offsets, loadings = _cross_fitted_regression(scores, target, cell_groups)
    out = np.empty(target.shape)
    for c, (offset, load) in enumerate(zip(offsets, loadings, strict=True)):
        inside = cell_groups == c
        out[inside] = offset + coefs[inside] @ load
    return out


class _GroupedRankSweep(Sweep):
    """The gene partition's rank sweep: offsets and loadings of its own for each cell group."""

    def __init__(
        self,
        grid: np.ndarray,
        cell_groups: np.ndarray,
        coefs: np.ndarray,
        offsets: list[np.ndarray],
        loadings: list[np.ndarray],
    ):
        self.grid = self.grid_ = grid
        self.cell_groups, self.coefs = cell_groups, coefs
        self.offsets, self.loadings = np.stack(offsets), np.ascontiguousarray(np.stack(loadings))

    def fuses(self, kind: ScoreKind) -> bool:
        return kind == "data"

    def losses(self, block: Block, scorer: DataScorer) -> np.ndarray:
        """Per-cell squared error of the block against its dense target at every rank, in one pass."""
        rows, (target, lower) = block.rows, scorer
        out = np.empty((target.shape[0], len(self.grid)))
        _grouped_rank_errors(
            self.offsets,
            np.ascontiguousarray(self.coefs[rows]),
            self.loadings,
            np.ascontiguousarray(self.cell_groups[rows], dtype=np.int64),
            self.grid,
            np.ascontiguousarray(target, dtype=np.float64),
            float(lower),
            out,
        )
        return out

    def predictions(self, block: Block) -> Iterator[tuple[int, np.ndarray]]:
        rows = block.rows
        groups = self.cell_groups[rows]
        members = [np.flatnonzero(groups == g) for g in range(len(self.offsets))]
        coefs = self.coefs[rows]
        parts = [np.tile(offset, (idx.size, 1)) for offset, idx in zip(self.offsets, members, strict=True)]
        pred = np.empty((groups.size, self.offsets[0].size))
        done = 0
        for k in self.grid:
            for part, idx, loadings in zip(parts, members, self.loadings, strict=True):
                _add_product(part, np.ascontiguousarray(coefs[idx, done:k]), loadings[done:k])
                pred[idx] = part
            done = k
            yield int(k), pred
