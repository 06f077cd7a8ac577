"""Every method, calibrated or at fixed defaults, and the peers, on the OpenProblems protocol.

Run: ``.venv/bin/python benchmarks/peers.py`` (not CI; needs the peers' venvs, see
``benchmarks/README.md``). Datasets: every real dataset in ``../shared/data``: mouse 10k
(genes seen in ≥ 20 cells) and PBMC 8k (its 2,000 most detected genes, to keep scVI's CPU
training and the dense outputs manageable).

Protocol (OpenProblems denoising): raw counts split 0.9/0.1 (binomial, seed 0); each
method denoises the 0.9 part; ``tl.score_denoising`` normalises output and held-out part to
10,000 per cell, log1p, MSE; plus the prediction-first Poisson score. MAGIC gets ``sqrt`` of
counts and its output is squared back (as OpenProblems' MAGIC wrapper does); scVI gets raw
counts and returns normalised expression. Our methods run twice: on ``sqrt`` of raw counts
(the package default; output squared back) and on ``log1p`` of counts per 10,000 (the scale
this protocol measures on; output ``expm1``'d back). Wall times in this run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
from _real_data import mouse10k, pbmc8k
from diffusion_vs_magic import HERE, run_magic
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self.denoisers import Autoencoder, Diffusion

SCVI_PYTHON = HERE / "venvs" / "scvi" / "bin" / "python"
AE = {"hidden": (128,), "batch_size": 128}
OURS = {
    "PCA, 50 components (fixed)": {"method": "pca", "grid": [50]},
    "PCA, MCV": {"method": "pca"},
    "diffusion, t=3, 5 neighbours (fixed)": {"method": Diffusion(n_neighbors=5), "grid": [3]},
    "diffusion, MCV": {"method": "diffusion", "grid": n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])},
    "autoencoder, 32 wide, 10 epochs (fixed)": {
        "method": Autoencoder(**AE),
        "grid": n2s.tl.grid(bottleneck=[32], epochs=[10]),
    },
    "autoencoder, MCV": {"method": Autoencoder(**AE), "grid": n2s.tl.grid(bottleneck=[8, 32, 64], epochs=range(1, 11))},
}


# Our default (sqrt of raw counts), and the scale this protocol measures on (log1p of counts per 10,000).
SCALES = {"sqrt": {"transform": "sqrt", "target_sum": None}, "log1p, 1e4": {"transform": "log1p", "target_sum": 1e4}}


def run_scvi(counts: sparse.csr_matrix, max_epochs: int) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.npz", Path(tmp) / "out.npy"
        sparse.save_npz(source, counts)
        start = time.perf_counter()
        subprocess.run(
            [str(SCVI_PYTHON), str(HERE / "_scvi_runner.py"), str(source), str(target), str(max_epochs)],
            capture_output=True,
            text=True,
            check=True,
        )
        return np.load(target), time.perf_counter() - start


def evaluate(name: str, counts: sparse.csr_matrix) -> None:
    (split,) = n2s.pp.split_counts(counts, split_fraction=0.9, random_state=0)
    train, test = split.train, split.test
    print(f"\n## {name}: {train.shape[0]} x {train.shape[1]}\n")
    print("| method | setting | MSE | Poisson | wall time (s) |\n|---|---|---|---|---|")

    def row(method: str, setting: str, scores: dict[str, float], seconds: float) -> None:
        print(f"| {method} | {setting} | {scores['mse']:.4f} | {scores['poisson']:.4f} | {seconds:.1f} |", flush=True)

    root = sparse.csr_matrix(np.sqrt(train.astype(np.float64)))
    row("no denoising", "-", n2s.tl.score_denoising(root, test, scale="sqrt"), 0.0)
    for scale, extra in SCALES.items():
        for label, kwargs in OURS.items():
            adata = ad.AnnData(train)
            start = time.perf_counter()
            n2s.pp.denoise(adata, empty="drop", progress=False, **kwargs, **extra)
            seconds = time.perf_counter() - start
            setting = str(np.atleast_1d(adata.uns["denoised"]["best"]).tolist())
            scores = n2s.tl.score_denoising(adata.layers["denoised"], test, scale=extra["transform"])
            row(f"ours ({scale}): {label}", setting, scores, seconds)
    if (HERE / "venvs" / "magic" / "bin" / "python").exists():
        for t in ("3", "auto"):
            out, seconds, used = run_magic(root, t)
            row(f"MAGIC t={t}", f"t={used}", n2s.tl.score_denoising(out, test, scale="sqrt"), seconds)
    else:
        print("| MAGIC | not installed (see README) | | | |")
    if SCVI_PYTHON.exists():
        max_epochs = 100
        out, seconds = run_scvi(train, max_epochs)
        row("scVI", f"defaults, {max_epochs} epochs", n2s.tl.score_denoising(out, test), seconds)
    else:
        print("| scVI | not installed (see README) | | | |")


def main() -> None:
    evaluate("mouse 10k (475 genes in >= 20 cells)", sparse.csr_matrix(mouse10k().X))
    evaluate("PBMC 8k (2,000 most detected genes)", sparse.csr_matrix(pbmc8k().X))


if __name__ == "__main__":
    sys.exit(main())
