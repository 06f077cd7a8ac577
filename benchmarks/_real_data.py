"""The real datasets the benchmarks share, prepared the same way everywhere (from ``../shared/data``)."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import SHARED_DATA


def mouse10k() -> ad.AnnData:
    """Mouse 10k (first 1,000 genes), genes seen in >= 20 cells, cells with counts."""
    mouse = ad.read_h5ad(SHARED_DATA / "mouse10k_first1000genes.h5ad")
    sc.pp.filter_genes(mouse, min_cells=20)
    sc.pp.filter_cells(mouse, min_counts=1)
    return mouse


def pbmc8k(n_genes: int = 2000) -> ad.AnnData:
    """PBMC 8k, its ``n_genes`` most detected genes (in their original order)."""
    pbmc = ad.read_h5ad(SHARED_DATA / "pbmc8k.h5ad")
    detected = np.asarray((pbmc.X > 0).sum(axis=0)).ravel()
    return pbmc[:, np.sort(np.argsort(-detected, kind="stable")[:n_genes])].copy()
