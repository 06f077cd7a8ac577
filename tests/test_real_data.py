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
        n2s.tl.calibrate(mouse10k, empty="error", progress=False)
    import scanpy as sc

    adata = mouse10k.copy()
    sc.pp.filter_genes(adata, min_cells=20)
    sc.pp.filter_cells(adata, min_counts=1)
    result = n2s.tl.calibrate(adata, grid=np.arange(1, 31), progress=False)
    # shallow data (median 137 UMIs in these genes): a clear minimum at a handful of components
    assert 3 <= result.best <= 12, result.best
    # both ends above the minimum by many standard errors of the paired difference (3 splits)
    excess = (result.loss_mean - result.loss_mean.min()) / result.difference_se.clip(min=1e-300)
    assert excess[0] > 10 and excess[-1] > 3, excess[[0, -1]]


@pytest.mark.slow
def test_pbmc8k_readme_recipe(pbmc8k, tmp_path):
    """A whole pipeline on all 18,340 genes: denoise, then scanpy's PCA, neighbours, UMAP, Leiden."""
    import scanpy as sc

    adata = pbmc8k.copy()
    n2s.pp.denoise(adata, progress=False)
    info = adata.uns["denoised"]
    assert 10 <= info["best"] <= 80
    assert adata.layers["denoised"].shape == adata.shape
    sc.pp.pca(adata, layer="denoised")
    sc.pp.neighbors(adata)  # > 4,096 cells: pynndescent's graph, read by scanpy
    sc.tl.umap(adata)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False)
    assert adata.obs["leiden"].nunique() >= 5
    adata.write_h5ad(tmp_path / "pbmc8k.h5ad")


def _depth_correlations(adata, X) -> np.ndarray:
    """|r| between each of the first three principal components of ``X`` and log counts per cell."""
    import scanpy as sc

    pcs = sc.pp.pca(np.asarray(X.toarray() if hasattr(X, "toarray") else X), n_comps=3, random_state=0)
    depth = np.log(np.asarray(adata.X.sum(axis=1)).ravel())
    return np.abs([np.corrcoef(pcs[:, i], depth)[0, 1] for i in range(3)])


@pytest.mark.parametrize("dataset", ["pbmc2k", "pbmc8k"])
def test_default_layer_carries_no_more_depth_than_log_normalised_x(dataset, request):
    """The default scale is scanpy's: PCs of the denoised layer track depth no more than those of log-normalised X."""
    import scanpy as sc

    if dataset == "pbmc2k":
        adata = n2s.datasets.pbmc2k()
    else:  # its 2,000 most detected genes
        full = request.getfixturevalue("pbmc8k")
        adata = full[:, np.argsort(-np.asarray((full.X > 0).sum(axis=0)).ravel())[:2000]].copy()
    n2s.pp.denoise(adata, progress=False)
    lognorm = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, copy=True), copy=True).X
    reference = _depth_correlations(adata, lognorm)
    denoised = _depth_correlations(adata, adata.layers["denoised"])
    assert (denoised <= reference + 0.1).all(), (denoised, reference)
    raw_sqrt = adata.copy()
    n2s.pp.denoise(raw_sqrt, transform="sqrt", target_sum=None, progress=False)  # the old default keeps depth
    assert _depth_correlations(adata, raw_sqrt.layers["denoised"])[0] > 0.9
