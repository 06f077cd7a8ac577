"""End-to-end checks on the real datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

import sc_noise2self as n2s

from .conftest import read_shared


@pytest.fixture(scope="module")
def mouse10k():
    return read_shared("mouse10k_first1000genes.h5ad")


def test_mouse10k_needs_filtering_then_finds_a_low_rank(mouse10k):
    with pytest.raises(ValueError, match="1 cell without any counts"):
        n2s.tl.calibrate(mouse10k, progress=False)
    import scanpy as sc

    adata = mouse10k.copy()
    sc.pp.filter_genes(adata, min_cells=20)
    sc.pp.filter_cells(adata, min_counts=1)
    result = n2s.tl.calibrate(adata, grid=np.arange(1, 31), progress=False)
    # shallow data (median 137 UMIs in these genes): a clear minimum at a handful of components
    assert 3 <= result.best <= 12, result.best
    assert result.loss_mean[0] > result.loss_mean.min() * 1.01
    assert result.loss_mean[-1] > result.loss_mean.min() * 1.001


@pytest.mark.slow
def test_pbmc8k_full_denoise(pbmc8k, tmp_path):
    adata = pbmc8k.copy()
    n2s.pp.denoise(adata, progress=False)
    info = adata.uns["denoised"]
    assert 10 <= info["best"] <= 80
    assert adata.layers["denoised"].shape == adata.shape
    adata.write_h5ad(tmp_path / "pbmc8k.h5ad")
