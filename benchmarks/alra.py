"""ALRA on the OpenProblems denoising protocol: its rank chosen by MCV, and by its own rule, beside PCA.

Run: ``.venv/bin/python benchmarks/alra.py`` (not CI). Data: the bundled PBMC 2k, and the real
datasets in ``../shared/data`` when present (mouse 10k, genes seen in ≥ 20 cells; PBMC 8k, its
2,000 most detected genes).

The task's split (binomial 0.9/0.1 of the molecules, seed 0; genes without training counts
dropped) and metrics (``openproblems/metrics.py``: MSE of log-normalised counts; the task's
Poisson score and the prediction-first one). Each method gets the training counts, works on
scanpy's scale (``log1p`` of counts per 10,000) and writes counts back: with the package's exact
inversion (``scale="counts"``) and, for ALRA, also with ``expm1`` back to each cell's depth, as
ALRA's own pipeline leaves its output. Rows:

- ALRA at the rank MCV chooses (``pp.denoise(method="alra")``, the default grid 1..100);
- ALRA at its own rank: the last singular-value gap over six noise SDs (the rule of its
  authors), computed on all the training counts;
- PCA at the rank MCV chooses (the package default), and no denoising.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "openproblems"))

from _real_data import SHARED_DATA, mouse10k, pbmc8k  # noqa: E402
from metrics import score_table  # noqa: E402
from run import task_split  # noqa: E402

import sc_noise2self as n2s  # noqa: E402
from sc_noise2self._numerics.transform import transformed  # noqa: E402
from sc_noise2self.denoisers import ALRA, ArrayData  # noqa: E402


def denoised_counts(train: sparse.csr_matrix, scale: str = "counts", **settings) -> tuple[np.ndarray, dict, float]:
    """Counts from ``pp.denoise`` on the training counts (``scale``: the exact inversion, or ``expm1``)."""
    adata = ad.AnnData(train.astype(np.float32))
    start = time.perf_counter()
    n2s.pp.denoise(adata, scale="counts" if scale == "counts" else "transformed", progress=False, **settings)
    seconds = time.perf_counter() - start
    out = np.asarray(adata.layers["denoised"], dtype=np.float64)
    if scale == "expm1":
        totals = np.asarray(train.sum(axis=1), dtype=np.float64).ravel()
        out = np.maximum(np.expm1(out), 0.0) * (totals[:, None] / 1e4)
    return out, adata.uns["denoised"], seconds


def evaluate(name: str, counts: sparse.csr_matrix) -> None:
    train, test = task_split(counts)
    print(f"\n### {name}: {train.shape[0]:,} cells × {train.shape[1]:,} genes (after the split)\n")
    row = score_table(train, test, "rank")

    row("no denoising", "-", train.toarray(), 0.0)
    values = transformed(train, "log1p", 1e4)
    rule = ALRA().fit(ArrayData(values), np.array([1])).report().get("spectral_gap_rank")
    for scale in ("counts", "expm1"):
        out, record, seconds = denoised_counts(train, scale, method="alra")
        row(f"ALRA, rank by MCV ({scale})", int(record["best"]), out, seconds)
        if rule is not None:
            out, _, seconds = denoised_counts(train, scale, method="alra", grid=[rule])
            row(f"ALRA, its own rank rule ({scale})", rule, out, seconds)
    out, record, seconds = denoised_counts(train, "counts")
    row("PCA, rank by MCV (counts)", int(record["best"]), out, seconds)


def main() -> None:
    evaluate("PBMC 2k (bundled)", sparse.csr_matrix(n2s.datasets.pbmc2k().X))
    if (SHARED_DATA / "mouse10k_first1000genes.h5ad").exists():
        evaluate("mouse 10k (475 genes in >= 20 cells)", sparse.csr_matrix(mouse10k().X))
    if (SHARED_DATA / "pbmc8k.h5ad").exists():
        evaluate("PBMC 8k (2,000 most detected genes)", sparse.csr_matrix(pbmc8k().X))


if __name__ == "__main__":
    main()
