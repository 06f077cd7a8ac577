"""Scoring a sample of the cells (``max_scored_cells``): does the choice move, does the regret grow?

Run: ``cd benchmarks && ../.venv/bin/python scored_cells.py`` (not CI; ~15 min on 2 cores).

MCV fits every split on all cells and scores the splits on a seeded sample of whole groups of
256 cells, at most ``max_scored_cells`` (10,000 by default) shared among them. Two checks:

- **Deep truth** (PBMC 8k, as ``deep_truth.py``: a shallow share ``q`` of each cell's molecules
  is the data, two deep parts give each setting's ground-truth error): the choice and its
  regret with ``max_scored_cells`` 1,024, 4,096, 10,000 (the default) or every cell; each
  entry shows the cells scored per split × the splits. PCA over ranks 1..60 and diffusion
  over t 0..8 × n_neighbors 5, 15, 30, package defaults otherwise (three splits at q = 0.1,
  one at q = 0.25).
- **Large shallow data** (``--cells``, default 100,000 × 2,000 synthetic, ~250 UMIs per cell,
  ``_synthetic.simulate``): the default PCA calibration scoring 5,000, 10,000, 20,000 or
  every cell: choice, ``difference_se`` at the runner-up and time, side by side in one run.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _real_data import pbmc8k
from _synthetic import simulate
from deep_truth import GRIDS, TARGET_SUM, deal, grid_outputs, truth_estimate
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import cell_scales, transformed

CAPS = [1024, 4096, 10_000, None]


def _show(value: object) -> object:
    return value if np.ndim(value) == 0 else tuple(np.asarray(value).tolist())


def deep_truth(counts: sparse.csr_matrix, q: float, seed: int) -> None:
    shallow, deep1, deep2 = deal(counts, q, seed)
    keep = np.asarray(shallow.sum(axis=1)).ravel() > 0
    shallow, deep1, deep2 = shallow[keep], deep1[keep], deep2[keep]
    scales = cell_scales(np.asarray(shallow.sum(axis=1)).ravel(), TARGET_SUM)
    r = q / ((1 - q) / 2)
    truth1, truth2 = truth_estimate(deep1, scales, r), truth_estimate(deep2, scales, r)
    values = transformed(shallow, "log1p", TARGET_SUM)
    for method in ("pca", "diffusion"):
        errors = {
            _show(value): float(np.mean((out - truth1) * (out - truth2)))
            for value, out in grid_outputs(values, shallow, scales, method)
        }
        oracle = min(errors, key=errors.get)
        cells = []
        for cap in CAPS:
            start = time.perf_counter()
            result = n2s.tl.calibrate(
                shallow, method=method, grid=GRIDS[method], max_scored_cells=cap, random_state=seed, progress=False
            )
            best = _show(result.best)
            seconds, scored = time.perf_counter() - start, result.params["scored_cells"]
            cells.append(
                f"{best}: {errors[best] / errors[oracle]:.3f} ({scored:,} × {result.loss.shape[0]}, {seconds:.0f} s)"
            )
        print(f"| {q} | {seed} | {method} | {oracle} | " + " | ".join(cells) + " |", flush=True)


def large(n_cells: int) -> None:
    counts = simulate(n_cells, 2000, 250.0)
    n2s.tl.calibrate(simulate(500, 200, 250.0), grid=[1, 2], progress=False)  # compile outside the timing
    for cap in (5000, 10_000, 20_000, None):
        start = time.perf_counter()
        result = n2s.tl.calibrate(counts, max_scored_cells=cap, progress=False)
        seconds = time.perf_counter() - start
        order = np.argsort(result.loss_mean)
        runner_up = result.grid[order[1]]
        print(
            f"| {n_cells:,} | {'all' if cap is None else f'{cap:,}'} | {result.params['scored_cells']:,} | "
            f"{result.best} | {runner_up} | {result.difference_se[order[1]]:.2e} | "
            f"{result.loss_mean[order[1]] - result.loss_mean[order[0]]:.2e} | {seconds:.1f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=100_000, help="cells of the large synthetic set (0: skip it)")
    parser.add_argument("--skip-truth", action="store_true", help="only the large synthetic set")
    args = parser.parse_args()
    if not args.skip_truth:
        counts = sparse.csr_matrix(pbmc8k().X)
        caps = " | ".join("every cell" if cap is None else f"max_scored_cells={cap:,}" for cap in CAPS)
        print(f"| q | seed | method | best on the grid | {caps} |")
        print("|---|---|---|---|" + "---|" * len(CAPS))
        for q in (0.1, 0.25):
            for seed in (0, 1):
                deep_truth(counts, q, seed)
    if args.cells:
        print("\n| cells | max_scored_cells | scored | choice | runner-up | its difference SE | loss gap | time (s) |")
        print("|---|---|---|---|---|---|---|---|")
        large(args.cells)


if __name__ == "__main__":
    sys.exit(main())
