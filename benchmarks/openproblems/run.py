"""The OpenProblems denoising task on every real dataset in ../shared/data: our methods and the peers.

Run (not CI; needs the peers' venvs, see benchmarks/README.md):

    .venv/bin/python benchmarks/openproblems/run.py

Each dataset is split the task's way: every molecule goes to the training part with
probability 0.9 (binomial thinning, seed 0), and genes without training counts are dropped.
Every method gets the training counts and returns denoised counts for the same cells and
genes; the task's metrics (``metrics.py``) score them against the held-out counts. Methods:

- no denoising (the training counts themselves);
- ours, as the task-shaped script ``method_sc_noise2self.py`` (a subprocess reading
  ``train.h5ad``, writing ``layers["denoised"]`` as counts): PCA, diffusion and the
  autoencoder, each calibrated by MCV on scanpy's scale (the package default), with the
  exact inversion to counts; and PCA mapped back with the usual ``expm1`` instead;
- MAGIC (``magic-impute`` 3.0, own venv), as the task's wrapper runs it: ``sqrt`` of counts,
  each cell scaled to sum 1, MAGIC (knn 5, decay 1, t = 3), squared back and rescaled to the
  cell's total;
- kNN-smoothing 2.1 (Wagner, Yan & Yanai; own venv), k = 10 (its other settings default);
  it sums each cell's neighbourhood, so its output is rescaled to the cell's own total.

Wall times are each method's whole run, measured here one after the other on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
from metrics import score_table
from scipy import sparse

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path.insert(0, str(BENCH))
from _real_data import mouse10k, pbmc8k  # noqa: E402

import sc_noise2self as n2s  # noqa: E402

OUR_PYTHON = Path(sys.executable)
MAGIC_PYTHON = BENCH / "venvs" / "magic" / "bin" / "python"
KNN_PYTHON = BENCH / "venvs" / "knn_smoothing" / "bin" / "python"


def task_split(counts: sparse.csr_matrix) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Binomial 0.9/0.1 of the molecules; genes without training counts dropped from both parts."""
    (split,) = n2s.pp.split_counts(counts, split_fraction=0.9, random_state=0)
    keep = np.asarray(split.train.sum(axis=0)).ravel() > 0
    return sparse.csr_matrix(split.train[:, keep]), sparse.csr_matrix(split.test[:, keep])


def run_ours(train: sparse.csr_matrix, method: str, tmp: Path, counts: str = "exact") -> tuple[np.ndarray, str]:
    source, target = tmp / "train.h5ad", tmp / f"{method}.h5ad"
    ad.AnnData(obs={"_": np.zeros(train.shape[0])}, layers={"counts": train}).write_h5ad(source)
    command = [OUR_PYTHON, HERE / "method_sc_noise2self.py", "--input_train", source, "--output", target]
    done = subprocess.run(
        [*command, "--method", method, "--counts", counts], capture_output=True, text=True, check=True
    )
    return np.asarray(ad.read_h5ad(target).layers["denoised"], dtype=np.float64), done.stdout.split("\n")[-2]


def run_magic(train: sparse.csr_matrix, tmp: Path) -> tuple[np.ndarray, str]:
    totals = np.asarray(train.sum(axis=1), dtype=np.float64).ravel()
    root = sparse.csr_matrix(np.sqrt(train.astype(np.float64)))
    root_totals = np.asarray(root.sum(axis=1)).ravel()
    scaled = sparse.csr_matrix(sparse.diags(1.0 / root_totals) @ root)
    source, target = tmp / "magic_in.npz", tmp / "magic_out.npy"
    sparse.save_npz(source, scaled)
    subprocess.run(
        [MAGIC_PYTHON, BENCH / "_magic_runner.py", source, target, "3"], capture_output=True, text=True, check=True
    )
    smoothed = np.maximum(np.load(target), 0.0) ** 2
    return smoothed / smoothed.sum(axis=1, keepdims=True) * totals[:, None], "t=3"


def run_knn_smoothing(train: sparse.csr_matrix, tmp: Path, k: int = 10) -> tuple[np.ndarray, str]:
    source, target = tmp / "knn_in.npz", tmp / "knn_out.npy"
    sparse.save_npz(source, train.astype(np.float64))
    subprocess.run(
        [KNN_PYTHON, HERE / "_knn_smoothing_runner.py", source, target, str(k)],
        capture_output=True,
        text=True,
        check=True,
    )
    smoothed = np.load(target)  # sums over each cell's neighbourhood: put back at the cell's own depth
    totals = np.asarray(train.sum(axis=1), dtype=np.float64).ravel()
    return smoothed / smoothed.sum(axis=1, keepdims=True) * totals[:, None], f"k={k}"


def evaluate(name: str, counts: sparse.csr_matrix) -> None:
    train, test = task_split(counts)
    print(f"\n### {name}: {train.shape[0]:,} cells × {train.shape[1]:,} genes (after the split)\n")
    row = score_table(train, test, "setting")

    row("no denoising", "-", train, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(f"sc_noise2self {m} (MCV)", lambda m=m: run_ours(train, m, Path(tmp))) for m in ("pca", "diffusion")]
        runs += [("sc_noise2self autoencoder (MCV)", lambda: run_ours(train, "autoencoder", Path(tmp)))]
        runs += [("sc_noise2self pca (MCV), expm1 back-transform", lambda: run_ours(train, "pca", Path(tmp), "expm1"))]
        if MAGIC_PYTHON.exists():
            runs.append(("MAGIC", lambda: run_magic(train, Path(tmp))))
        if KNN_PYTHON.exists():
            runs.append(("kNN-smoothing", lambda: run_knn_smoothing(train, Path(tmp))))
        for label, run in runs:
            start = time.perf_counter()
            denoised, setting = run()
            row(label, setting, denoised, time.perf_counter() - start)


def main() -> None:
    evaluate("mouse 10k (475 genes in >= 20 cells)", sparse.csr_matrix(mouse10k().X))
    evaluate("PBMC 8k (2,000 most detected genes)", sparse.csr_matrix(pbmc8k().X))


if __name__ == "__main__":
    main()
