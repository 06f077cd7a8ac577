"""Do the counts vary as Poisson samples of molecules? The check behind every MCV run.

Molecular cross-validation assumes that, given a cell's true content, its molecules are
sampled independently: ``x ~ Poisson(μ)``. Binomial thinning then gives independent halves.
For any count ``x`` with mean ``μ`` and variance ``V`` given the cell, thinning gives

    Cov(x', x'' | μ) = p (1 - p) (V - μ),

so the halves are independent exactly when the counts are Poisson around the truth. Read
counts (Smart-seq2 and other protocols without UMIs) break this: each molecule is amplified
into a random number ``A`` of reads, and ``x = A_1 + … + A_M`` with ``M ~ Poisson(μ / E[A])``
has ``V = φ μ``, ``φ = E[A²] / E[A] > 1``. The halves then share each molecule's reads, the
held-out half rewards predictions that keep the training half's noise, and MCV chooses too
little denoising.

The variance around a smooth fit ``m`` of the truth separates this from biology. Per gene,

    E[(x - m)²] ≈ φ m + m² / b + (fit error)²,

where the linear term is sampling (``φ = 1`` for molecules, ``φ > 1`` for amplified reads)
and the quadratic term is the variation of cells around the fit that is proportional to
their level (bursting, states the fit does not resolve), which MCV rightly treats as signal.
So the intercept of ``(x - m)² / m`` regressed on ``m`` (weights ``m``, the inverse variance
of the ratio under Poisson) estimates ``φ``; the median over genes with at least
:data:`MIN_EXPECTED` expected counts is robust to the few genes the fit misses (markers of
rare cells). The fit: a rank-:data:`RANK` PCA of counts per 10,000 on up to
:data:`MAX_CELLS` cells and the :data:`MAX_GENES` genes with most counts (a seeded sample,
the same for in-memory and blockwise data), times each cell's depth, with each entry's own
value left out of its cell's scores (:class:`SmoothFit`): a fit that saw the entry would
follow its noise and read low (12.9 for a true 15 at 600 × 300). Measured: 1.02–1.04 on
Poisson simulations, 0.95–1.03 on the UMI datasets, 0.87–1.03 times the truth on reads.

The same fit gives the negative-binomial split (:class:`SplitPlan`): beta-binomial
thinning with size ``r`` gives ``Cov(x', x'' | μ) = p (1 - p) (r (V - μ) - μ²) / (r + 1)``,
zero for ``V = φ μ`` at ``r = μ / (φ - 1)``, each entry's expected count over ``φ - 1``.
:data:`DEPENDENT_HALVES` is where the warning starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np
from scipy import sparse

from .checks import MAX_DISPERSION
from .linalg import centered_truncated_svd
from .machine import blas_threads
from .rows import sparse_dense_product
from .split import Stream, beta_binomial_split, binomial_split, seed_sequence
from .transform import transformed

if TYPE_CHECKING:
    from .._types import RandomState

__all__ = ["DEPENDENT_HALVES", "SmoothFit", "SplitPlan", "plan_split", "sample_cells", "sampling_dispersion"]

RANK = 10
MAX_CELLS = 2_000
MAX_GENES = 2_000
MIN_EXPECTED = 20.0
MIN_GENES = 10
DEPENDENT_HALVES = 1.5
"""Sampling dispersion above which the MCV halves count as dependent (variance 1.5× Poisson)."""
POISSON_RESOLUTION = 1.1
"""Estimates up to here read as Poisson (the split stays binomial): the check reads 1.02–1.04 on
Poisson simulations, where the fit's own error adds to the variance, and 0.95–1.03 on UMI data."""
_TARGET = 1e4
_BLOCK_ELEMENTS = 2**19


def sample_cells(n_cells: int, random_state: RandomState) -> np.ndarray:
    """Return a boolean mask of up to :data:`MAX_CELLS` of ``n_cells`` cells, drawn by position only.

    So in-memory and blockwise data (any chunking) give the same sample for one seed.
    """
    if n_cells <= MAX_CELLS:
        return np.ones(n_cells, dtype=bool)
    keep = np.zeros(n_cells, dtype=bool)
    rng = np.random.default_rng(seed_sequence(random_state, Stream.DISPERSION, 0))
    keep[rng.choice(n_cells, size=MAX_CELLS, replace=False)] = True
    return keep


class SmoothFit(NamedTuple):
    """A smooth fit of every entry's expected count that leaves the entry itself out.

    A cell's scores are its counts per 10,000 on the fit genes, centred and projected on
    rank-:data:`RANK` components; every gene's value is a linear function of the scores,
    fitted by least squares over the sampled cells (on the fit genes this is the PCA
    reconstruction). For an entry of a fit gene, the cell's scores are first taken without
    that gene (its centred value times its loadings subtracted), so the entry's own noise
    reaches its fit only through the components and coefficients (leverage ≈ 11 / cells):
    neither the dispersion estimate nor the split's sizes follow the noise they measure.
    """

    loadings: np.ndarray
    """Genes × rank: the components on the fit genes, zero on the others."""
    offset: np.ndarray
    """``centre @ loadings`` (rank)."""
    coef: np.ndarray
    """(1 + rank) × genes: each gene's intercept (its mean) and slope on every score."""
    own: np.ndarray
    """Per gene: what its own centred value adds to its fit through the scores (0 outside the fit genes)."""
    floor: np.ndarray
    """Least value per gene (1 % of its mean), as a linear fit can fall below 0."""

    def scores(self, values: sparse.csr_matrix) -> np.ndarray:
        """Return the scores (cells × rank) of canonical-CSR counts per 10,000 ``values``, all fit genes in."""
        return sparse_dense_product(values, self.loadings) - self.offset

    def dense_means(self, counts: sparse.csr_matrix, totals: np.ndarray) -> np.ndarray:
        """Return the expected count of every entry (dense cells × genes) of canonical-CSR ``counts``.

        As :meth:`entry_means`, zeros included (a zero's own value, 0, is left out too).
        """
        out = np.empty(counts.shape)
        _dense_means(*self._inputs(counts, totals), self.coef, self.own, self.floor, out)
        return out

    def entry_means(self, counts: sparse.csr_matrix, totals: np.ndarray) -> np.ndarray:
        """Return the expected count of every stored entry of canonical-CSR ``counts`` (cells with these ``totals``).

        Row by row in a fixed order, so a cell's values do not depend on the block it comes in.
        """
        out = np.empty(counts.nnz)
        _entry_means(*self._inputs(counts, totals), self.coef, self.own, self.floor, out)
        return out

    def _inputs(self, counts: sparse.csr_matrix, totals: np.ndarray) -> tuple[np.ndarray, ...]:
        """Return the rows' structure, counts per 10,000, depths (per 10,000) and scores, for the kernels."""
        depth = np.asarray(totals, dtype=np.float64) / _TARGET
        values = counts.data.astype(np.float64) / np.repeat(depth, np.diff(counts.indptr))
        scores = self.scores(sparse.csr_matrix((values, counts.indices, counts.indptr), shape=counts.shape))
        return counts.indptr, counts.indices, values, depth, scores


@numba.njit(inline="always")
def _mean_of(r: int, j: int, value: float, scores: np.ndarray, coef: np.ndarray, own: np.ndarray) -> float:
    """Fit of entry (r, j) whose counts per 10,000 are ``value``: the scores without its own centred value."""
    out = coef[0, j] - own[j] * (value - coef[0, j])
    for k in range(scores.shape[1]):
        out += scores[r, k] * coef[k + 1, j]
    return out


@numba.njit(parallel=True, cache=True)
def _dense_means(  # pragma: no cover - compiled
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    depth: np.ndarray,
    scores: np.ndarray,
    coef: np.ndarray,
    own: np.ndarray,
    floor: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write the expected count of every entry to ``out`` (cells × genes): zeros first, then the stored ones."""
    for r in numba.prange(indptr.size - 1):
        for j in range(out.shape[1]):
            out[r, j] = max(_mean_of(r, j, 0.0, scores, coef, own), floor[j]) * depth[r]
        for i in range(indptr[r], indptr[r + 1]):
            j = indices[i]
            out[r, j] = max(_mean_of(r, j, values[i], scores, coef, own), floor[j]) * depth[r]


@numba.njit(parallel=True, cache=True)
def _entry_means(  # pragma: no cover - compiled
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    depth: np.ndarray,
    scores: np.ndarray,
    coef: np.ndarray,
    own: np.ndarray,
    floor: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write the expected counts of the stored entries to ``out`` (aligned with them)."""
    for r in numba.prange(indptr.size - 1):
        for i in range(indptr[r], indptr[r + 1]):
            j = indices[i]
            out[i] = max(_mean_of(r, j, values[i], scores, coef, own), floor[j]) * depth[r]


class SplitPlan(NamedTuple):
    """How an MCV calibration splits its counts, decided once from the check's sample of cells."""

    dispersion: float | None
    """``φ`` measured by the check (None: too little data)."""
    split_dispersion: float
    """``φ`` the split assumes: 1 is binomial thinning (Poisson molecules)."""
    fit: SmoothFit | None
    """Expected counts of the entries: each entry's negative-binomial size, and the output-depth
    expansion's centre (None: too little data)."""

    def halves(
        self, counts: sparse.csr_matrix, totals: np.ndarray, fraction: float, seed: int, *, row_offset: int = 0
    ) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """Split canonical-CSR ``counts`` (cells with these ``totals``) into training and held-out halves.

        With ``φ > 1`` each entry is thinned beta-binomially with negative-binomial size
        ``m / (φ - 1)`` for its expected count ``m``: counts of variance ``φ m`` (amplified
        reads) then split into halves that are uncorrelated given the cell, as molecules'
        binomial halves are.
        """
        size = self.sizes(counts, totals)
        if size is None:
            return binomial_split(counts, fraction, seed, row_offset=row_offset)
        return beta_binomial_split(counts, fraction, seed, size, row_offset=row_offset)

    def sizes(self, counts: sparse.csr_matrix, totals: np.ndarray) -> np.ndarray | None:
        """Return each stored entry's negative-binomial size, ``m / (φ - 1)``; None for binomial thinning."""
        if self.split_dispersion <= 1.0:
            return None
        return self.fit.entry_means(counts, totals) / (self.split_dispersion - 1.0)


def plan_split(
    sampling: str, dispersion: float | None, sample: sparse.csr_matrix, totals: np.ndarray, random_state: RandomState
) -> SplitPlan:
    """Measure the check on the sampled cells and decide the split (``sampling``, ``dispersion`` checked)."""
    measured, fit = _fit(sample, totals, random_state)
    if sampling == "poisson":
        return SplitPlan(measured, 1.0, fit)
    if fit is None:
        msg = (
            "sampling='negative_binomial' needs each entry's expected count from a smooth fit, and these data are "
            f"too small for it (more than {RANK + 1} cells and {MIN_GENES} genes with {MIN_EXPECTED:g} counts "
            "or more); use sampling='poisson' or calibration='genes'."
        )
        raise ValueError(msg)
    if dispersion is None:  # an estimate within the check's resolution of Poisson is Poisson
        dispersion = measured if measured is not None and measured > POISSON_RESOLUTION else 1.0
        if dispersion > MAX_DISPERSION:
            msg = (
                f"These counts vary {dispersion:.3g}x as much as Poisson sampling of molecules, beyond the "
                f"{MAX_DISPERSION:g} the negative-binomial split handles; calibrate with calibration='genes' "
                "(it does not split molecules)."
            )
            raise ValueError(msg)
    return SplitPlan(measured, dispersion, fit)


def sampling_dispersion(counts: sparse.csr_matrix, totals: np.ndarray, random_state: RandomState) -> float | None:
    """Return ``φ``, the counts' variance over Poisson sampling's around a smooth fit (module docstring).

    Parameters
    ----------
    counts
        Raw counts of the sampled cells (canonical CSR), cells × genes.
    totals
        Each of these cells' total count (the depth the fit is scaled back to).
    random_state
        The calibration's seed (the PCA draws from its own stream).

    Returns
    -------
    The median over genes with enough counts; None when fewer than :data:`MIN_GENES` genes
    or too few cells allow the estimate.
    """
    return _fit(counts, totals, random_state)[0]


def _fit(
    counts: sparse.csr_matrix, totals: np.ndarray, random_state: RandomState
) -> tuple[float | None, SmoothFit | None]:
    """Return ``φ`` and the :class:`SmoothFit` behind it; Nones when the data are too few.

    BLAS runs on one thread: its small products alternate with compiled kernels, and its
    threads left spinning beside another busy process made the check ten times slower.
    """
    with blas_threads(1):
        return _fit_on_one_thread(counts, totals, random_state)


def _fit_on_one_thread(
    counts: sparse.csr_matrix, totals: np.ndarray, random_state: RandomState
) -> tuple[float | None, SmoothFit | None]:
    totals = np.asarray(totals, dtype=np.float64)
    if (totals <= 0).any():  # cells without counts tell nothing (the calibration has dropped them already)
        counts, totals = counts[totals > 0], totals[totals > 0]
    if min(counts.shape) <= RANK + 1:
        return None, None
    gene_sums = np.asarray(counts.sum(axis=0)).ravel()
    genes = np.sort(np.argsort(-gene_sums, kind="stable")[:MAX_GENES])
    if np.count_nonzero(gene_sums[genes] >= MIN_EXPECTED) < MIN_GENES:
        return None, None
    values = transformed(counts, "none", _TARGET, totals=totals)
    fit = _smooth_fit(values, genes, random_state)
    scores = fit.scores(values)
    counts, values = counts[:, genes], values[:, genes]
    mean, slopes, own = fit.coef[0, genes], fit.coef[1:, genes], fit.own[genes]
    n_cells, n_genes = counts.shape
    sums = np.zeros((5, n_genes))  # Σm, Σm², Σm³, Σe, Σe·m per gene, e = (x - m)²
    step = max(1, _BLOCK_ELEMENTS // n_genes)
    for start in range(0, n_cells, step):
        rows = slice(start, min(start + step, n_cells))
        left_out = mean + scores[rows] @ slopes - (values[rows].toarray() - mean) * own
        m = np.maximum(left_out, 0.0) * (totals[rows, None] / _TARGET)
        error = (counts[rows].toarray() - m) ** 2
        square = m * m
        sums += [m.sum(0), square.sum(0), (square * m).sum(0), error.sum(0), (error * m).sum(0)]
    s1, s2, s3, e0, e1 = sums
    det = s1 * s3 - s2 * s2
    usable = (s1 >= MIN_EXPECTED) & (det > 1e-9 * s1 * s3)
    if np.count_nonzero(usable) < MIN_GENES:
        return None, None
    phi = (e0[usable] * s3[usable] - e1[usable] * s2[usable]) / det[usable]
    return float(np.median(phi)), fit


def _smooth_fit(values: sparse.csr_matrix, genes: np.ndarray, random_state: RandomState) -> SmoothFit:
    """Fit counts per 10,000 ``values`` of the sampled cells on ``genes``, and every gene on the fit's scores."""
    rng = np.random.default_rng(seed_sequence(random_state, Stream.DISPERSION, 1))
    mean, _, _, components = centered_truncated_svd(values[:, genes], RANK, rng=rng)  # randomised: no Gram
    loadings = np.zeros((values.shape[1], RANK))
    loadings[genes] = components.T
    empty = np.zeros(values.shape[1])
    fit = SmoothFit(loadings, mean @ components.T, np.zeros((RANK + 1, values.shape[1])), empty, empty)
    design = np.column_stack([np.ones(values.shape[0]), fit.scores(values)])
    gram, cross = design.T @ design, np.asarray((values.T @ design).T)
    try:
        coef = np.linalg.solve(gram, cross)
    except np.linalg.LinAlgError:  # scores without variance (identical cells): the least-squares fit of least norm
        coef = np.linalg.lstsq(gram, cross, rcond=None)[0]
    own = np.einsum("gk,kg->g", loadings, coef[1:])  # zero outside the fit genes
    return fit._replace(coef=coef, own=own, floor=np.maximum(0.01 * coef[0], 1e-8))
