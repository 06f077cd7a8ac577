"""Read counts (no UMIs): binomial MCV, the negative-binomial split and the gene partition, against the truth.

Run: ``cd benchmarks && ../.venv/bin/python read_counts.py [--quick]`` (not CI).

Data: ``tests.conftest.simulate_reads`` — the low-rank simulator's Poisson molecules, each
amplified into reads by a logarithmic law (4 reads on average: the reads are exactly negative
binomial with size ∝ the rate, the split's model) or 1 + Geometric (8 on average: the same
variance law, another distribution). Truth: E[log1p(s x)] over fresh molecules and reads
(Monte Carlo, 32 draws). Regret: ground-truth error of the choice / the best on the grid, for
PCA (ranks 1..30) and diffusion (t 0..8 × n_neighbors 5, 15, 30), on ``log1p`` of counts per
10,000. Times: one calibration each, side by side in this run (negative binomial / binomial).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import cell_scales, transformed
from tests.conftest import amplify, grid_errors, read_dispersion, regret, simulate_reads

PCA_GRID = np.arange(1, 31)
DIFFUSION_GRID = n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])


def truth_errors(sim, mean_reads: float, law: str, method: str) -> dict:
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4)[:, None]
    rng = np.random.default_rng(123)
    truth = np.mean([np.log1p(scales * amplify(rng, rng.poisson(sim.rates), mean_reads, law)) for _ in range(32)], 0)
    values = transformed(sim.counts, "log1p", 1e4)
    return grid_errors(values, truth, method, PCA_GRID if method == "pca" else DIFFUSION_GRID)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two seeds at 600 × 300 only")
    args = parser.parse_args()
    shapes = [(600, 300)] if args.quick else [(600, 300), (3000, 1000)]
    seeds = range(2) if args.quick else range(4)
    print(
        "| reads per molecule | cells × genes | method | seed | φ true / estimated | binomial | negative binomial "
        "| genes | time NB / binomial |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for law, mean_reads in (("logarithmic", 4.0), ("geometric", 8.0)):
        for n_cells, n_genes in shapes:
            for seed in seeds:
                sim = simulate_reads(n_cells, n_genes, mean_reads=mean_reads, law=law, seed=seed)
                for method, grid, n_splits in (("pca", PCA_GRID, 3), ("diffusion", DIFFUSION_GRID, 1)):
                    errors = truth_errors(sim, mean_reads, law, method)
                    kwargs = {"method": method, "grid": grid, "random_state": seed, "progress": False}
                    start = time.perf_counter()
                    binomial = n2s.tl.calibrate(sim.counts, n_splits=n_splits, **kwargs)
                    middle = time.perf_counter()
                    nb = n2s.tl.calibrate(sim.counts, n_splits=n_splits, sampling="negative_binomial", **kwargs)
                    end = time.perf_counter()
                    genes = n2s.tl.calibrate(sim.counts, calibration="genes", **kwargs)
                    print(
                        f"| {law} ({mean_reads:g}) | {n_cells} × {n_genes} | {method} ({n_splits} split"
                        f"{'s' if n_splits > 1 else ''}) | {seed} | {read_dispersion(mean_reads, law):.1f} / "
                        f"{nb.dispersion:.1f} | {regret(errors, binomial.best):.3f} | {regret(errors, nb.best):.3f} | "
                        f"{regret(errors, genes.best):.3f} | {(end - middle) / (middle - start):.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
