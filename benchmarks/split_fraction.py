"""How the MCV choice moves with ``split_fraction``, and how each choice scores on the OpenProblems protocol.

Run: ``cd benchmarks && ../.venv/bin/python split_fraction.py`` (not CI; reads ``../shared/data``).

Data: the bundled PBMC 2k, mouse 10k (genes in >= 20 cells) and PBMC 8k (its 2,000 most
detected genes). Each is split 0.9/0.1 once (seed 0); PCA and diffusion are calibrated on
the 0.9 part (``log1p`` of counts per 10,000) at several ``split_fraction`` values, refitted,
and scored against the 0.1 part with ``tl.score_denoising`` (MSE, log1p, 1e4 per cell).
Training at a fraction ``p`` of the molecules, MCV finds the setting best for data at that
depth; the table shows which way the choice moves as ``p`` approaches 1.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
from _real_data import mouse10k, pbmc8k
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self.denoisers import Diffusion

FRACTIONS = (0.8, 0.9, 0.95, 0.98)
SCALE = {"transform": "log1p", "target_sum": 1e4, "empty": "drop", "progress": False}


def datasets() -> dict[str, sparse.csr_matrix]:
    return {
        "PBMC 2k": sparse.csr_matrix(n2s.datasets.pbmc2k().X),
        "mouse 10k": sparse.csr_matrix(mouse10k().X),
        "PBMC 8k": sparse.csr_matrix(pbmc8k().X),
    }


def main() -> None:
    methods = {"PCA": ("pca", None), "diffusion": ("diffusion", n2s.tl.grid(t=range(7), n_neighbors=[5, 15, 30]))}
    print("| data | method | " + " | ".join(f"p = {p}" for p in FRACTIONS) + " |")
    print("|---|---|" + "---|" * len(FRACTIONS))
    for name, counts in datasets().items():
        (split,) = n2s.pp.split_counts(counts, split_fraction=0.9, random_state=0)
        for label, (method, grid) in methods.items():
            cells = []
            for p in FRACTIONS:
                best = n2s.tl.calibrate(split.train, method=method, grid=grid, split_fraction=p, **SCALE).best
                model = "pca" if method == "pca" else Diffusion(n_neighbors=int(best[1]))
                adata = ad.AnnData(split.train)
                n2s.pp.denoise(adata, method=model, grid=[best if method == "pca" else int(best[0])], **SCALE)
                mse = n2s.tl.score_denoising(adata.layers["denoised"], split.test, scale="log1p")["mse"]
                cells.append(f"{np.atleast_1d(best).tolist()}: {mse:.4f}")
            print(f"| {name} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
