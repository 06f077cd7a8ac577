"""Cost of the whole MCV rank sweep relative to one truncated SVD, and split throughput.

Run: ``.venv/bin/python benchmarks/pca_sweep.py [--cells 20000 --genes 2000]``

Data: a seeded low-rank Poisson matrix (cells mix 10 gene programs, log-normal depth
around ``--depth`` UMIs per cell), CSR int32 — sparse and shallow like 10x data.
Everything is measured in this one run, side by side, on the same matrix:

- ``svd``: one centred randomised truncated SVD at k = 100 of the transformed training
  half (the fit the sweep needs anyway);
- ``sweep``: ``tl.calibrate`` over k = 1..100 end to end (split, transform, that SVD,
  depth conversion tables, scoring all 100 ranks block by block);
- ``split``: binomial thinning of all nonzeros;
- the same sweep over the default grid of ``pp.denoise``;
- the floor: the sweep's compiled kernel over every cell and rank with the exact depth
  conversion, and the same rank updates scored with no conversion at all (plain squared
  error, what any conversion, however cheap, must add to), so the least a calibration that
  scores every rank of every entry could cost is printed beside the goal.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _synthetic import best_of, simulate
from scipy import sparse
from threadpoolctl import threadpool_info

from sc_noise2self import tl
from sc_noise2self._numerics.linalg import centered_truncated_svd, centred_scores
from sc_noise2self._numerics.loss import row_scorer
from sc_noise2self._numerics.split import binomial_split
from sc_noise2self._numerics.transform import build_conversion, cell_scales, transform_counts
from sc_noise2self.denoisers import PCA, ArrayData
from sc_noise2self.denoisers.pca import _grouped_rank_errors, _rank_sweep_losses

SQRT = {"transform": "sqrt", "target_sum": None}  # the scale these figures were measured on


def covariance_fit(data: ArrayData, grid: np.ndarray) -> tuple[PCA, np.ndarray]:
    """One covariance-route SVD at ``max(grid)`` and every cell's scores (``U S``) on its components.

    The sweep needs both; ``PCA.fit`` makes the scores block by block as they are asked for, so
    they are computed here, as its fit computed them before.
    """
    model = PCA(solver="covariance").fit(data, grid)
    return model, centred_scores(data.matrix(), model.mean_, model.components_)


def kernel_seconds(
    model: PCA, scores: np.ndarray, test: sparse.csr_matrix, counts: sparse.csr_matrix, block: int = 256
) -> tuple:
    """Seconds of the fused rank-sweep kernel over every cell, with the exact conversion and with none.

    The same float32 rank updates, in the same order, over the same blocks of cells and
    the same dense held-out targets (``sqrt`` of the held-out counts); "none" scores each
    rank by plain squared error (:func:`_grouped_rank_errors` with one group), a lower bound
    for any conversion. Returns (exact, none, relative difference of their loss totals).
    """
    ranks = model.grid_
    loadings = np.ascontiguousarray(model.components_, dtype=np.float32)
    offset = model.mean_.astype(np.float32)
    conversion = build_conversion(
        "sqrt",
        fraction=0.9,
        train_scales=np.ones(counts.shape[0]),
        normalized=False,
        max_rate=1.5 * 0.9 * float(counts.max()) + 20.0,
        loss="mse",
    )
    times = {"exact": 0.0, "none": 0.0}
    totals = {"exact": 0.0, "none": 0.0}
    for start in range(0, counts.shape[0], block):
        rows = slice(start, min(start + block, counts.shape[0]))
        target = transform_counts(test[rows], "sqrt", np.ones(rows.stop - rows.start)).toarray()
        coefs = np.ascontiguousarray(scores[rows], dtype=np.float32)
        scorer = row_scorer(target, conversion=conversion, train_scales=np.ones(coefs.shape[0]))
        out = np.empty((coefs.shape[0], ranks.size))
        tic = time.perf_counter()
        _rank_sweep_losses(offset, coefs, loadings, ranks, *scorer, out)
        times["exact"] += time.perf_counter() - tic
        totals["exact"] += out.sum()
        tic = time.perf_counter()
        _grouped_rank_errors(
            offset[None], coefs, loadings[None], np.zeros(coefs.shape[0], np.int64), ranks, scorer.target, -np.inf, out
        )
        times["none"] += time.perf_counter() - tic
        totals["none"] += out.sum()
    return times["exact"], times["none"], abs(totals["exact"] - totals["none"]) / totals["none"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--depth", type=float, default=1_500.0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    counts = simulate(args.cells, args.genes, args.depth)
    n, g = counts.shape
    depth = np.median(np.asarray(counts.sum(axis=1)))
    print(f"data: {n} x {g} CSR, {counts.nnz:,} nonzeros ({counts.nnz / n / g:.1%}), median {depth:.0f} UMIs/cell")
    blas = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    print(f"threads: {blas}")

    t_split = best_of(args.repeats, lambda: binomial_split(counts, 0.9, 0))
    print(f"split: {t_split:.3f} s, {counts.nnz / t_split / 1e6:.1f} M nonzeros/s")

    train, _ = binomial_split(counts, 0.9, 0)
    scales = cell_scales(np.asarray(counts.sum(axis=1)).ravel(), None, 0.9)
    X = transform_counts(train, "sqrt", scales)
    t_random = best_of(args.repeats, lambda: centered_truncated_svd(X, args.k, rng=np.random.default_rng(0)))
    print(f"one randomised truncated SVD at k={args.k}: {t_random:.2f} s")
    data = ArrayData(X)
    t_svd = best_of(args.repeats, lambda: covariance_fit(data, np.array([args.k])))
    print(f"one covariance-route SVD at k={args.k} (the default up to 4,096 genes, used below): {t_svd:.2f} s")

    grid = np.arange(1, args.k + 1)
    tl.calibrate(simulate(300, 100, 500.0), grid=[1, 2], progress=False, **SQRT)  # compile outside the timing
    t_sweep = best_of(args.repeats, lambda: tl.calibrate(counts, grid=grid, progress=False, **SQRT))
    print(f"whole sweep k=1..{args.k} (split + transform + SVD + scoring {args.k} ranks): {t_sweep:.2f} s")
    print(f"ratio sweep / one SVD: {t_sweep / t_svd:.2f} (goal <= 1.5); / one randomised SVD: {t_sweep / t_random:.2f}")
    print(f"scoring cost per matrix entry and rank: {(t_sweep - t_svd) / (n * g * args.k) * 1e9:.2f} ns")
    default = PCA().default_grid(counts.shape)
    t_default = best_of(args.repeats, lambda: tl.calibrate(counts, progress=False, **SQRT))
    print(f"default grid ({default.size} ranks in 1..{default[-1]}): {t_default:.2f} s, ratio: {t_default / t_svd:.2f}")

    # The floor: what scoring every rank costs with the exact conversion and with none at all.
    _, test = binomial_split(counts, 0.9, 0)
    model, scores = covariance_fit(data, grid)
    kernel_seconds(model, scores[:512], test[:512], counts[:512])  # compile outside the timing
    runs = [kernel_seconds(model, scores, test, counts) for _ in range(args.repeats)]
    exact, none = min(r[0] for r in runs), min(r[1] for r in runs)
    print(
        f"rank-sweep kernel, all {n} cells x {args.k} ranks: exact conversion {exact:.2f} s "
        f"({exact / (n * g * args.k) * 1e9:.2f} ns per entry and rank), no conversion {none:.2f} s "
        f"({none / (n * g * args.k) * 1e9:.2f} ns); loss totals differ by {runs[0][2]:.1%} (the conversion's effect)"
    )
    rest = t_split + t_svd + none
    print(
        f"least a whole calibration scoring every rank could cost (split + SVD + no-conversion sweep): "
        f"{rest:.2f} s = {rest / t_svd:.2f} x one SVD, before transforms, targets and the dispersion check"
    )


if __name__ == "__main__":
    main()
