"""A number of neighbours per cell: does each cell's own best k beat one k for all? (issue 17, optional item)

Data: ``tests.conftest.simulate_clusters`` (2,000 cells × 1,000 genes, eight types from 30 % down
to 2 % of the cells — 40 cells for the rarest —, a state gradient inside each). Per seed:

1. ``n2s.pp.pca`` chooses ``n_pcs`` (package defaults) on the log-normalised data.
2. MCV per cell: one binomial split (0.9 / 0.1); the kNN average of the training half over
   ``n_neighbors`` 5..100 in its own first ``n_pcs`` components, converted to the held-out depth
   and scored against each cell's held-out half (``losses``: a loss per cell and ``k``).
3. Choices: one ``k`` for all (the sum over cells: what ``n2s.pp.neighbors`` does), each cell's own
   argmin ("raw"), and each cell's argmin of its loss curve averaged over its ``--smooth``
   nearest cells ("smoothed"; one cell's held-out genes are too few to choose on).
4. Ground truth: the kNN average of all counts (what would be written) at each cell's ``k``
   against ``E[log1p(s X)]`` under the true rates; and Leiden (bisection to eight clusters, mean
   ARI over three Leiden seeds) on scanpy's UMAP connectivities of the full data's ``X_pca``, with
   each cell's own ``k`` (the fuzzy union of each cell's own neighbourhood, as scanpy computes it
   for one ``k``), against scanpy's defaults (50 PCs, 15) and one calibrated ``k``. For the rarest
   type, the best Jaccard index between it and a cluster.

    .venv/bin/python benchmarks/per_cell_neighbors.py [--seeds 0 1 2 3 4] [--depth 1000] [--smooth 15]

``--real``: PBMC 8k (its 2,000 most detected genes) with the deep ground truth of
``deep_truth.py``: the molecules dealt into a shallow dataset holding a share ``--share`` and two
deep parts; the kNN average of the shallow data (``n_pcs`` from ``n2s.pp.pca`` on it) at one
calibrated ``k`` and at each cell's smoothed ``k`` (the per-cell MCV curves of the shallow data),
scored by ``mean((out - E1)(out - E2))`` against the deep parts' unbiased estimates. No clusters
there, so no Leiden.

    .venv/bin/python benchmarks/per_cell_neighbors.py --real [--share 0.1] [--seeds 0] [--smooth 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from scipy import sparse
from sklearn.neighbors import NearestNeighbors
from umap.umap_ import smooth_knn_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fitted import fit
from pipeline_clusters import leiden_ari, log_normalised, with_scanpy_defaults

import sc_noise2self as n2s
from sc_noise2self._numerics.loss import held_out_target, row_scorer
from sc_noise2self._numerics.split import binomial_split
from sc_noise2self._numerics.transform import build_conversion, cell_scales, expected_transform, transformed
from sc_noise2self.denoisers import KNNAverage
from sc_noise2self.denoisers.knn import neighbour_means
from tests.conftest import simulate_clusters

GRID = np.array([5, 10, 15, 20, 30, 50, 100])


def per_cell_losses(counts: sparse.csr_matrix, n_pcs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MCV loss of the kNN average per cell (cells × GRID), and each cell's training-half neighbours."""
    train, test = binomial_split(sparse.csr_matrix(counts), 0.9, seed)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    train_scales, test_scales = cell_scales(totals, 1e4, 0.9), cell_scales(totals, 1e4, 0.1)
    model, data = fit(KNNAverage(n_pcs=n_pcs, random_state=seed), transformed(train, "log1p", 1e4, 0.9, totals), GRID)
    conversion = build_conversion(
        "log1p",
        fraction=0.9,
        train_scales=train_scales,
        normalized=True,
        max_rate=1.5 * 0.9 * float(counts.max()) + 20.0,
        loss="mse",
    )
    target = held_out_target(test, test_scales, transform="log1p", loss="mse", reused=True)
    scorer = row_scorer(target, conversion=conversion, train_scales=train_scales)
    return model.losses(data.block(), scorer), model.neighbors_[n_pcs]


def knn_graph_full(embedding: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's ``k_max`` nearest cells (itself first) and their distances, exactly."""
    dists, idx = NearestNeighbors(n_neighbors=k_max).fit(embedding).kneighbors(embedding)
    return idx, dists


def umap_connectivities(idx: np.ndarray, dists: np.ndarray, ks: np.ndarray) -> sparse.csr_matrix:
    """scanpy's UMAP connectivities with cell ``i`` using its own ``ks[i]`` neighbours (itself included)."""
    n = idx.shape[0]
    rows, cols, vals = [], [], []
    for k in np.unique(ks):
        cells = np.flatnonzero(ks == k)
        d = dists[cells, :k].astype(np.float32)
        sigmas, rhos = smooth_knn_dist(d, float(k), local_connectivity=1.0)
        w = np.exp(-np.maximum(d - rhos[:, None], 0.0) / sigmas[:, None])
        w[:, 0] = 0.0  # the cell itself
        rows.append(np.repeat(cells, k))
        cols.append(idx[cells, :k].ravel())
        vals.append(w.ravel())
    a = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    a.eliminate_zeros()
    return (a + a.T - a.multiply(a.T)).tocsr()


def truth_errors(sim, values: sparse.csr_matrix, neighbours: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Squared error against the truth of the kNN average of ``values`` with each cell's ``ks[i]``, per cell."""
    totals = np.asarray(sim.counts.sum(axis=1)).ravel()
    scales = cell_scales(totals, 1e4, 1.0)
    truth = np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])
    means = neighbour_means(values, np.arange(values.shape[0]), neighbours, GRID)  # GRID × cells × genes
    pick = np.searchsorted(GRID, ks)
    out = means[pick, np.arange(values.shape[0])]
    return np.mean((out - truth) ** 2, axis=1)


def rare_jaccard(labels: np.ndarray, clusters: np.ndarray) -> float:
    rare = labels == np.bincount(labels).argmin()
    return max(np.sum(rare & (clusters == c)) / np.sum(rare | (clusters == c)) for c in np.unique(clusters))


def leiden_with(adata: ad.AnnData, connectivities: sparse.csr_matrix, labels: np.ndarray) -> tuple[float, float]:
    g = adata.copy()
    g.obsp["connectivities"] = connectivities
    g.obsp["distances"] = connectivities  # not read by Leiden
    g.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances", "params": {}}
    ari = leiden_ari(g, labels, len(np.unique(labels)))
    return ari, rare_jaccard(labels, g.obs["leiden"].to_numpy())


def smoothed_choice(losses: np.ndarray, neighbours: np.ndarray, smooth: int) -> np.ndarray:
    """Each cell's ``k``: the argmin of its loss curve averaged with its ``smooth - 1`` nearest cells'."""
    pool = np.concatenate([np.arange(losses.shape[0])[:, None], neighbours[:, : smooth - 1]], axis=1)
    return GRID[losses[pool].mean(axis=1).argmin(axis=1)]


def real(share: float, seeds: list[int], smooth: int) -> None:
    """PBMC 8k against its deep ground truth: one calibrated ``k`` against each cell's own."""
    from _real_data import pbmc8k
    from deep_truth import deal, truth_estimate

    counts = sparse.csr_matrix(pbmc8k().X)
    print(
        f"| share (median UMIs) | seed | n_pcs | one k | per-cell k: median (5th-95th pct) | truth error: "
        f"best one k (k) / calibrated one k / per-cell smoothed ({smooth} cells) |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    for seed in seeds:
        shallow, deep1, deep2 = deal(counts, share, seed)
        keep = np.asarray(shallow.sum(axis=1)).ravel() > 0
        shallow, deep1, deep2 = shallow[keep], deep1[keep], deep2[keep]
        totals = np.asarray(shallow.sum(axis=1)).ravel()
        scales = cell_scales(totals, 1e4)
        r = share / ((1 - share) / 2)
        truth1, truth2 = truth_estimate(deep1, scales, r), truth_estimate(deep2, scales, r)
        adata = log_normalised(shallow)
        n2s.pp.pca(adata, layer="counts", random_state=seed, progress=False)
        n_pcs = adata.obsm["X_pca"].shape[1]

        losses, train_neighbours = per_cell_losses(shallow, n_pcs, seed)
        one_k = int(GRID[losses.sum(axis=0).argmin()])
        ks = smoothed_choice(losses, train_neighbours, smooth)
        values = sparse.csr_matrix(transformed(shallow, "log1p", 1e4), dtype=np.float64)
        neighbours = fit(KNNAverage(n_pcs=n_pcs, random_state=seed), values, GRID)[0].neighbors_[n_pcs]
        means = neighbour_means(values, np.arange(values.shape[0]), neighbours, GRID)  # GRID × cells × genes
        errors = {int(k): float(np.mean((m - truth1) * (m - truth2))) for k, m in zip(GRID, means, strict=True)}
        out = means[np.searchsorted(GRID, ks), np.arange(values.shape[0])]
        per_cell = float(np.mean((out - truth1) * (out - truth2)))
        best = min(errors, key=errors.get)
        print(
            f"| {share} ({np.median(totals):.0f}) | {seed} | {n_pcs} | {one_k} | {np.median(ks):.0f} "
            f"({np.percentile(ks, 5):.0f}-{np.percentile(ks, 95):.0f}) | {errors[best]:.5f} ({best}) / "
            f"{errors[one_k] / errors[best]:.3f} / {per_cell / errors[best]:.3f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--depth", type=float, default=1000.0)
    parser.add_argument("--smooth", type=int, default=15, help="cells whose loss curves a cell's choice averages")
    parser.add_argument("--real", action="store_true", help="PBMC 8k against its deep ground truth")
    parser.add_argument("--share", type=float, default=0.1, help="--real: the shallow dataset's share of molecules")
    args = parser.parse_args()
    sc.settings.verbosity = 0
    if args.real:
        real(args.share, args.seeds, args.smooth)
        return
    print(
        "| seed | n_pcs | one k (calibrated) | per-cell k: median (5th-95th pct), rarest type's median | "
        "truth error: best one k / calibrated k / per-cell raw / per-cell smoothed "
        "(rarest type: smoothed / calibrated) | "
        "ARI (rarest type's Jaccard): defaults / one k / per-cell smoothed |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    for seed in args.seeds:
        sim = simulate_clusters(mean_depth=args.depth, seed=seed)
        rare = sim.labels == np.bincount(sim.labels).argmin()
        adata = log_normalised(sim.counts)
        default = with_scanpy_defaults(adata)
        ours = adata.copy()
        n2s.pp.pca(ours, layer="counts", progress=False)
        n_pcs = ours.obsm["X_pca"].shape[1]

        losses, train_neighbours = per_cell_losses(sim.counts, n_pcs, seed)
        one_k = int(GRID[losses.sum(axis=0).argmin()])
        raw = GRID[losses.argmin(axis=1)]
        smoothed = smoothed_choice(losses, train_neighbours, args.smooth)

        values = sparse.csr_matrix(transformed(sim.counts, "log1p", 1e4), dtype=np.float64)
        full_neighbours = fit(KNNAverage(n_pcs=n_pcs, random_state=seed), values, GRID)[0].neighbors_[n_pcs]
        errors = {k: truth_errors(sim, values, full_neighbours, np.full(values.shape[0], k)) for k in GRID}
        per_raw = truth_errors(sim, values, full_neighbours, raw).mean()
        cells = truth_errors(sim, values, full_neighbours, smoothed)
        per_smooth, rare_ratio = cells.mean(), cells[rare].mean() / errors[one_k][rare].mean()
        errors = {k: e.mean() for k, e in errors.items()}

        idx, dists = knn_graph_full(ours.obsm["X_pca"], int(GRID.max()))
        ari_default = leiden_ari(default, sim.labels, len(np.unique(sim.labels)))
        jac_default = rare_jaccard(sim.labels, default.obs["leiden"].to_numpy())
        ari_one, jac_one = leiden_with(ours, umap_connectivities(idx, dists, np.full(idx.shape[0], one_k)), sim.labels)
        ari_per, jac_per = leiden_with(ours, umap_connectivities(idx, dists, smoothed), sim.labels)
        best = min(errors.values())
        print(
            f"| {seed} | {n_pcs} | {one_k} | {np.median(smoothed):.0f} ({np.percentile(smoothed, 5):.0f}-"
            f"{np.percentile(smoothed, 95):.0f}), {np.median(smoothed[rare]):.0f} | "
            f"{best:.5f} / {errors[one_k] / best:.3f} / {per_raw / best:.3f} / {per_smooth / best:.3f} "
            f"({rare_ratio:.3f}) | "
            f"{ari_default:.3f} ({jac_default:.2f}) / {ari_one:.3f} ({jac_one:.2f}) / {ari_per:.3f} ({jac_per:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
