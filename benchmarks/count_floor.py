"""The floor of ``scale="counts"`` output: what the calibrated floor does to the held-out likelihood.

Run: ``.venv/bin/python benchmarks/count_floor.py`` (not CI; ~5 min on 2 cores).

On the OpenProblems denoising split of each shared dataset (``openproblems/run.py``: 90 % of
every cell's molecules to train on, seed 0), PCA and diffusion (t 0..8 × n_neighbors 5, 15,
30) calibrated by MCV with ``scale="counts"``, side by side: the floor as calibrated (each
entry at least a share ``f`` of its null rate, ``f`` chosen on the held-out Poisson likelihood
of the calibration's own splits) and without a floor (``f = 0``, what earlier versions wrote).
Scored with the task's metrics (``openproblems/metrics.py``): MSE on log-normalised counts,
the task's Poisson score (its arguments swapped, so it rewards exact zeros) and the Poisson
likelihood of the held-out counts under the prediction ("prediction first").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "openproblems"))
from _real_data import mouse10k, pbmc8k  # noqa: E402
from metrics import score_table  # noqa: E402
from run import task_split  # noqa: E402

import sc_noise2self as n2s  # noqa: E402
from sc_noise2self._engine import floor as count_floor  # noqa: E402

METHODS = {
    "pca": {"method": "pca"},
    "diffusion": {"method": "diffusion", "grid": n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])},
}


def denoised(train: sparse.csr_matrix, method: str, *, floor: bool) -> tuple[np.ndarray, str, float]:
    adata = ad.AnnData(train.astype(np.float32))
    floors = count_floor.FLOORS
    if not floor:
        count_floor.FLOORS = np.array([0])
    start = time.perf_counter()
    try:
        n2s.pp.denoise(adata, scale="counts", progress=False, **METHODS[method])
    finally:
        count_floor.FLOORS = floors
    seconds = time.perf_counter() - start
    uns = adata.uns["denoised"]
    setting = f"{uns['best']}, floor {uns['count_floor']['share']:g}"
    return np.asarray(adata.layers["denoised"], dtype=np.float64), setting, seconds


def main() -> None:
    datasets = {
        "PBMC 2k (bundled)": sparse.csr_matrix(n2s.datasets.pbmc2k().X),
        "mouse 10k (475 genes in >= 20 cells)": sparse.csr_matrix(mouse10k().X),
        "PBMC 8k (2,000 most detected genes)": sparse.csr_matrix(pbmc8k().X),
    }
    for name, counts in datasets.items():
        train, test = task_split(counts)
        print(f"\n### {name}: {train.shape[0]:,} cells × {train.shape[1]:,} genes\n")
        row = score_table(train, test, "choice")
        row("no denoising", "-", train, 0.0)
        for method in METHODS:
            for floor in (False, True):
                out, setting, seconds = denoised(train, method, floor=floor)
                row(f"{method}, {'calibrated floor' if floor else 'no floor'}", setting, out, seconds)


if __name__ == "__main__":
    sys.exit(main())
