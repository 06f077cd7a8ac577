"""Our calibrated diffusion against MAGIC, on the simulator (truth known) and on real data.

Run: ``.venv/bin/python benchmarks/diffusion_vs_magic.py`` (not CI; needs MAGIC's venv,
see ``benchmarks/README.md``). MAGIC (``magic-impute`` 3.0) needs ``numpy<2``, so it runs
in ``benchmarks/venvs/magic`` as a subprocess on the very same input matrices.

Every method gets the same input, ``sqrt`` of raw counts, and returns values on that
scale. Methods: no denoising; MAGIC with t = 3 and t = "auto" (its defaults otherwise:
knn 5, decay 1, 100 PCs); ours (``Diffusion``, defaults: 15-neighbour lazy walk in 100
PCs) over t = 0..12 × n_neighbors ∈ {5, 15, 30}, calibrated by MCV and by the
Noise2Self gene partition. Wall times are measured in this one run.

- Simulator: ``tests/conftest.py``'s low-rank Poisson model, 3,000 cells × 500 genes;
  error = mean squared difference to ``E[sqrt(x)]`` under the true rates.
- Real data (OpenProblems denoising protocol): each dataset's counts are split 0.9/0.1
  (binomial, seed 0); methods denoise the 0.9 part; the output is squared back to counts,
  both sides are normalised to 10,000 per cell and log1p'd, and the MSE is taken.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import expected_transform

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.conftest import simulate_low_rank_poisson  # noqa: E402

MAGIC_PYTHON = HERE / "venvs" / "magic" / "bin" / "python"
GRID = n2s.tl.grid(t=range(13), n_neighbors=[5, 15, 30])


def run_magic(values: sparse.csr_matrix, t: str) -> tuple[np.ndarray, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.npz", Path(tmp) / "out.npy"
        sparse.save_npz(source, values)
        start = time.perf_counter()
        out = subprocess.run(
            [str(MAGIC_PYTHON), str(HERE / "_magic_runner.py"), str(source), str(target), t],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - start
        return np.load(target), wall, out.stdout.split()[-1]


def run_ours(counts: sparse.csr_matrix, calibration: str) -> tuple[np.ndarray, float, str]:
    adata = ad.AnnData(counts)
    start = time.perf_counter()
    n2s.pp.denoise(
        adata, method="diffusion", calibration=calibration, grid=GRID, transform="sqrt", target_sum=None, progress=False
    )
    wall = time.perf_counter() - start
    best = adata.uns["denoised"]["best"]
    return adata.layers["denoised"].astype(np.float64), wall, f"t={best[0]}, k={best[1]}"


def methods(counts: sparse.csr_matrix):
    """Yield (name, sqrt-scale output, seconds, setting) for every method on ``counts``."""
    root = sparse.csr_matrix(np.sqrt(counts.astype(np.float64)))
    yield "no denoising", root.toarray(), 0.0, "-"
    for t in ("3", "auto"):
        out, wall, used = run_magic(root, t)
        yield f"MAGIC t={t}", out, wall, f"t={used}"
    for calibration, label in (("mcv", "MCV"), ("genes", "gene partition")):
        out, wall, used = run_ours(counts, calibration)
        yield f"ours, {label}", out, wall, used


def simulator() -> None:
    sim = simulate_low_rank_poisson(3000, 500, 8, mean_depth=800.0, seed=0)
    truth = expected_transform(sim.rates.ravel(), [1.0], "sqrt")[0].reshape(sim.rates.shape)
    print(f"\n## Simulator: {sim.counts.shape[0]} x {sim.counts.shape[1]}, error vs E[sqrt(x)]\n")
    print("| method | setting | ground-truth MSE | wall time (s) |\n|---|---|---|---|")
    for name, out, wall, used in methods(sim.counts):
        print(f"| {name} | {used} | {np.mean((out - truth) ** 2):.5f} | {wall:.1f} |")


def log_normalised(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(totals, 1e-12) * 1e4)


def real(name: str, adata: ad.AnnData) -> None:
    (split,) = n2s.pp.split_counts(adata.X, split_fraction=0.9, random_state=0)
    train = split.train
    keep = np.asarray(train.sum(axis=1)).ravel() > 0
    train, test = train[keep], split.test[keep]
    keep_genes = np.asarray(train.sum(axis=0)).ravel() > 0
    train, test = train[:, keep_genes], test[:, keep_genes]
    target = log_normalised(test.toarray().astype(np.float64))
    print(f"\n## {name}: {train.shape[0]} x {train.shape[1]}, OpenProblems MSE (0.9/0.1, 1e4, log1p)\n")
    print("| method | setting | MSE | wall time (s) |\n|---|---|---|---|")
    for method, out, wall, used in methods(train):
        pred = log_normalised(np.maximum(out, 0.0) ** 2)
        print(f"| {method} | {used} | {np.mean((pred - target) ** 2):.5f} | {wall:.1f} |")


def main() -> None:
    if not MAGIC_PYTHON.exists():
        sys.exit(f"MAGIC's venv is missing: see benchmarks/README.md ({MAGIC_PYTHON})")
    from _real_data import mouse10k, pbmc8k

    simulator()
    real("mouse 10k (genes in >= 20 cells)", mouse10k())
    real("PBMC 8k (2,000 most detected genes)", pbmc8k())


if __name__ == "__main__":
    main()
