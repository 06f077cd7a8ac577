"""How much the MCV choice moves from one split to the next, and what more splits buy.

Run: ``cd benchmarks && ../.venv/bin/python n_splits.py`` (not CI; reads ``../shared/data``).

Data: the bundled PBMC 2k, mouse 10k (genes in >= 20 cells) and PBMC 8k (its 2,000 most
detected genes), with their median counts per cell. For PCA (default grid) and diffusion
(t 0..8 × n_neighbors 5, 15, 30), package defaults otherwise: the choice of one split for
seeds 0..4 (each seed draws another split), then of three splits (seeds 0..4, so splits
overlap across seeds only by seed), and the time of one calibration of each kind.
"""

from __future__ import annotations

import time

import numpy as np
from _real_data import mouse10k, pbmc8k
from scipy import sparse

import sc_noise2self as n2s

SEEDS = range(5)
DIFFUSION_GRID = n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])


def datasets() -> dict[str, sparse.csr_matrix]:
    return {
        "PBMC 2k": sparse.csr_matrix(n2s.datasets.pbmc2k().X),
        "mouse 10k": sparse.csr_matrix(mouse10k().X),
        "PBMC 8k": sparse.csr_matrix(pbmc8k().X),
    }


def show(best: object) -> str:
    return str(best) if np.ndim(best) == 0 else f"({', '.join(str(int(v)) for v in best)})"


def main() -> None:
    print("| data | median counts | method | 1 split, seeds 0-4 | 3 splits, seeds 0-4 | time 1 / 3 splits |")
    print("|---|---|---|---|---|---|")
    for name, counts in datasets().items():
        median = float(np.median(np.asarray(counts.sum(axis=1)).ravel()))
        for method, grid in (("pca", None), ("diffusion", DIFFUSION_GRID)):
            kwargs = {"method": method, "grid": grid, "progress": False}
            row, seconds = {}, {}
            for n_splits in (1, 3):
                start = time.perf_counter()
                row[n_splits] = [
                    show(n2s.tl.calibrate(counts, n_splits=n_splits, random_state=seed, **kwargs).best)
                    for seed in SEEDS
                ]
                seconds[n_splits] = (time.perf_counter() - start) / len(SEEDS)
            print(
                f"| {name} | {median:.0f} | {method} | {' '.join(row[1])} | {' '.join(row[3])} "
                f"| {seconds[1]:.1f} s / {seconds[3]:.1f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
