"""What the Noise2Self gene partition costs against MCV, same method, same grid, same data.

Run: ``.venv/bin/python benchmarks/genes_cost.py [--loaded]`` (not CI). For each dataset and
method, ``tl.calibrate`` end to end with ``calibration="mcv"`` (one split) and with
``calibration="genes"`` (10 gene groups, the defaults), side by side in one process, at the
default threads; kernels compiled on a small matrix first, outside the timing. PCA over the
default rank grid; diffusion over t = 0..12 at 15 neighbours. Prints both times, the ratio
genes / MCV and both choices. ``--loaded`` starts a CPU-bound competitor (BLAS matrix
products at its default threads) first.

Data: mouse 10k (genes in >= 20 cells), PBMC 8k (2,000 most detected genes), and
``pca_sweep.simulate`` at 20,000 × 2,000.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scanpy as sc

import sc_noise2self as n2s

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

METHODS = {"pca": {}, "diffusion": {"grid": n2s.tl.grid(t=range(13), n_neighbors=[15])}}


def _timed(counts, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = n2s.tl.calibrate(counts, progress=False, random_state=0, **kwargs)
    return time.perf_counter() - start, result.best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loaded", action="store_true")
    args = parser.parse_args()
    from _competitor import competing
    from _real_data import mouse10k, pbmc8k
    from _synthetic import simulate

    sc.settings.verbosity = 0
    small = simulate(300, 100, 500.0)
    for method, kwargs in METHODS.items():  # compile
        for calibration in ("mcv", "genes"):
            n2s.tl.calibrate(small, method=method, calibration=calibration, progress=False, **kwargs)
    data = {
        "mouse 10k": mouse10k().X,
        "PBMC 8k, 2,000 genes": pbmc8k(2000).X,
        "simulated 20,000 × 2,000": simulate(20_000, 2_000, 1_500.0),
    }
    with competing(args.loaded):
        print(f"| data | method | MCV | genes | genes / MCV | choice: MCV, genes |{' (loaded)' if args.loaded else ''}")
        print("|---|---|---|---|---|---|")
        for name, counts in data.items():
            for method, kwargs in METHODS.items():
                mcv_time, mcv_best = _timed(counts, method=method, **kwargs)
                genes_time, genes_best = _timed(counts, method=method, calibration="genes", **kwargs)
                ratio = genes_time / mcv_time
                print(
                    f"| {name} | {method} | {mcv_time:.2f} s | {genes_time:.2f} s | {ratio:.2f} | "
                    f"{np.atleast_1d(mcv_best).tolist()}, {np.atleast_1d(genes_best).tolist()} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
