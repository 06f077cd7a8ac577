"""PCA calibration on every gene of PBMC 8k against one ``sc.pp.pca(n_comps=100)`` on the same data.

Run: ``.venv/bin/python benchmarks/all_genes.py [--loaded] [--repeats 2]`` (not CI). Data: all
8,381 cells × 18,340 genes of PBMC 8k (``../shared/data``, 11.8 M nonzeros). Scanpy:
``normalize_total(1e4)``, ``log1p``, ``sc.pp.pca(n_comps=100)`` (its default solver for sparse
input), timed on the log-normalised matrix. Ours: ``tl.calibrate`` on the raw counts with the
package defaults (MCV, one split, ``log1p`` of counts per 10,000, the default rank grid up to
100): the split, the transform, one randomised truncated SVD at k = 100 (above 4,096 genes),
the depth conversion and the scoring of every rank. Best of ``--repeats``, alternately, in one
process at the default threads, after a warm-up of both on 500 cells. ``--loaded`` starts a
CPU-bound competitor (BLAS matrix products at its default threads) first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import scanpy as sc

import sc_noise2self as n2s

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loaded", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from _competitor import competing
    from _real_data import pbmc8k

    sc.settings.verbosity = 0
    adata = pbmc8k(n_genes=18340)
    counts = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata[:500].copy(), n_comps=50)  # warm-up
    n2s.tl.calibrate(counts[:500], grid=[1, 2], progress=False)
    scanpy_times, our_times, best = [], [], None
    with competing(args.loaded):
        for _ in range(args.repeats):
            start = time.perf_counter()
            sc.pp.pca(adata, n_comps=100)
            scanpy_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            best = n2s.tl.calibrate(counts, progress=False).best
            our_times.append(time.perf_counter() - start)
    scanpy_time, our_time = min(scanpy_times), min(our_times)
    state = "loaded" if args.loaded else "idle"
    print(
        f"| {state} | {scanpy_time:.2f} s | {our_time:.2f} s (chose {best}) | {our_time / scanpy_time:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
