"""Run scVI (scvi-tools) on raw counts, in scVI's own virtual environment.

Called by ``peers.py`` as a subprocess:
``benchmarks/venvs/scvi/bin/python benchmarks/_scvi_runner.py IN.npz OUT.npy MAX_EPOCHS``.
Trains ``scvi.model.SCVI`` with its defaults (10 latent dimensions, gene-wise dispersion,
ZINB likelihood) on CPU, writes ``get_normalized_expression(library_size=1e4)`` and prints
the seconds spent.
"""

from __future__ import annotations

import sys
import time

import anndata as ad
import numpy as np
import scvi
from scipy import sparse


def main() -> None:
    source, target, max_epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    adata = ad.AnnData(sparse.load_npz(source).tocsr().astype(np.float32))
    scvi.settings.seed = 0
    start = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=False)
    out = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    elapsed = time.perf_counter() - start
    np.save(target, np.asarray(out, dtype=np.float64))
    print(f"{elapsed:.3f}")


if __name__ == "__main__":
    main()
