"""Leiden clusters from calibrated vs default PCA and neighbour settings, on simulated cell types.

Data: ``tests.conftest.simulate_clusters`` (seeded Poisson counts, 2,000 cells × 1,000
genes, eight types with 30 % down to 2 % of the cells, a state gradient inside each type,
~1,000 UMIs per cell). For each seed, every pipeline is log-normalised scanpy
(``normalize_total(1e4)``, ``log1p``), then a PCA, a neighbour graph and Leiden at the
resolution that gives the true number of types (bisection; the mean ARI over three Leiden
seeds). Pipelines: scanpy's defaults (50 PCs, 15 neighbours), ``n2s.pp.pca`` (objective
"neighbors" and "reconstruction") with scanpy's 15 neighbours, and ``n2s.pp.pca`` +
``n2s.pp.neighbors`` (with ``select="min"``, the default, and ``"1se"``). Also the
ground-truth error of the kNN average at the calibrated ``n_neighbors`` over the best on the
same grid (the oracle), at the calibrated ``n_pcs``.

    .venv/bin/python benchmarks/pipeline_clusters.py [--seeds 0 1 2 3 4] [--depth 1000 --spread 0.5 --gradient 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from _fitted import fit
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import cell_scales, expected_transform, transformed
from sc_noise2self.denoisers import KNNAverage
from tests.conftest import simulate_clusters


def leiden_ari(adata: ad.AnnData, labels: np.ndarray, n_clusters: int, seeds: int = 3) -> float:
    """Mean ARI over Leiden seeds, each at the resolution giving ``n_clusters`` (or the closest found)."""
    scores = []
    for seed in range(seeds):
        low, high, best = 0.01, 5.0, None
        for _ in range(30):
            resolution = (low + high) / 2
            sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed)
            found = adata.obs["leiden"].nunique()
            if best is None or abs(found - n_clusters) < abs(best[0] - n_clusters):
                best = (found, adata.obs["leiden"].to_numpy().copy())
            if found == n_clusters:
                break
            low, high = (resolution, high) if found < n_clusters else (low, resolution)
        scores.append(adjusted_rand_score(labels, best[1]))
    return float(np.mean(scores))


def log_normalised(counts) -> ad.AnnData:
    """Scanpy's log-normalised expression in ``X`` (1e4 per cell, ``log1p``), the counts in ``layers["counts"]``."""
    adata = ad.AnnData(counts.astype(np.float32))
    adata.layers["counts"] = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def with_scanpy_defaults(adata: ad.AnnData) -> ad.AnnData:
    """A copy with scanpy's default PCA (50 components) and graph (15 neighbours)."""
    default = adata.copy()
    sc.pp.pca(default, n_comps=50)
    sc.pp.neighbors(default, n_neighbors=15)
    return default


def knn_regret(sim, n_pcs: int, grid: np.ndarray, chosen: int) -> float:
    """Ground-truth error of the kNN average at ``chosen`` over the best value of ``grid``."""
    totals = np.asarray(sim.counts.sum(axis=1)).ravel()
    scales = cell_scales(totals, 1e4, 1.0)
    truth = np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])
    model, data = fit(KNNAverage(n_pcs=n_pcs, random_state=0), transformed(sim.counts, "log1p", 1e4), grid)
    errors = np.array([np.mean((pred - truth) ** 2) for _, pred in model.predictions(data.block())])
    return float(errors[list(grid).index(chosen)] / errors.min())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--depth", type=float, default=1000.0, help="mean UMIs per cell")
    parser.add_argument("--spread", type=float, default=0.5, help="strength of the type differences")
    parser.add_argument("--gradient", type=float, default=1.0, help="strength of the state gradient inside a type")
    args = parser.parse_args()
    sc.settings.verbosity = 0
    rows = []
    for seed in args.seeds:
        sim = simulate_clusters(mean_depth=args.depth, spread=args.spread, gradient=args.gradient, seed=seed)
        n_types = len(np.unique(sim.labels))
        base = log_normalised(sim.counts)
        default = with_scanpy_defaults(base)
        graph = base.copy()
        n2s.pp.pca(graph, layer="counts", progress=False)
        sc.pp.neighbors(graph, n_neighbors=15)
        recon = base.copy()
        n2s.pp.pca(recon, layer="counts", objective="reconstruction", progress=False)
        sc.pp.neighbors(recon, n_neighbors=15)
        both = graph.copy()
        n2s.pp.neighbors(both, layer="counts", progress=False, overwrite=True)
        n_pcs = graph.obsm["X_pca"].shape[1]
        k = int(both.uns["neighbors"]["calibration"]["best"])
        knn_grid = np.asarray(both.uns["neighbors"]["calibration"]["grid"])
        regret = knn_regret(sim, n_pcs, knn_grid, k)
        simplest = graph.copy()
        n2s.pp.neighbors(simplest, layer="counts", select="1se", progress=False, overwrite=True)
        k_1se = int(simplest.uns["neighbors"]["calibration"]["best"])
        row = {
            "seed": seed,
            "default (50 PCs, 15)": leiden_ari(default, sim.labels, n_types),
            f"pp.pca neighbors ({n_pcs}), 15": leiden_ari(graph, sim.labels, n_types),
            f"pp.pca reconstruction ({recon.obsm['X_pca'].shape[1]}), 15": leiden_ari(recon, sim.labels, n_types),
            f"pp.pca + pp.neighbors ({n_pcs}, {k})": leiden_ari(both, sim.labels, n_types),
            f"pp.pca + pp.neighbors 1se ({n_pcs}, {k_1se})": leiden_ari(simplest, sim.labels, n_types),
            "kNN regret": regret,
            "kNN regret 1se": knn_regret(sim, n_pcs, knn_grid, k_1se),
        }
        rows.append(row)
        print(
            "  ".join(
                f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}"
                for name, value in row.items()
            ),
            flush=True,
        )
    keys = {
        "default": "default",
        "pp.pca neighbors": "pp.pca",
        "pp.pca reconstruction": "pp.pca reconstruction",
        "pp.pca + pp.neighbors (": "pp.pca + pp.neighbors",
        "pp.pca + pp.neighbors 1se": "pp.pca + pp.neighbors(select='1se')",
    }
    print("mean ARI over seeds:")
    for key, label in keys.items():
        values = [next(v for n, v in row.items() if n.startswith(key)) for row in rows]
        print(f"  {label}: {np.mean(values):.3f}")
    print(f"kNN average regret at the calibrated n_neighbors: max {max(r['kNN regret'] for r in rows):.3f}")
    print(f"kNN average regret at the 1se n_neighbors: max {max(r['kNN regret 1se'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
