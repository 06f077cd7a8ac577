from __future__ import annotations

import numpy as np
from scipy import sparse

import sc_noise2self as n2s


def test_bundled_pbmc_is_raw_counts():
    adata = n2s.datasets.pbmc2k()
    assert adata.shape == (2000, 1000)
    assert sparse.issparse(adata.X) and adata.X.dtype == np.int32
    assert adata.X.min() >= 0 and (np.asarray(adata.X.sum(axis=0)) > 0).all()
    assert "CC BY 4.0" in adata.uns["source"]


def test_bundled_pbmc_names_genes_by_symbol_with_ensembl_ids_beside():
    adata = n2s.datasets.pbmc2k()
    assert adata.var_names.is_unique
    assert {"CD3E", "IL7R", "LYZ", "NKG7"} <= set(adata.var_names)
    assert adata.var.loc["CD3E", "gene_ids"] == "ENSG00000198851"
    assert adata.var["gene_ids"].str.startswith("ENSG").all() and adata.var["gene_ids"].is_unique


def test_bundled_pbmc_end_to_end():
    adata = n2s.datasets.pbmc2k()
    n2s.pp.denoise(adata, progress=False, grid=[1, 5, 10, 20, 30, 40])
    # a clear interior minimum on real data (at the output's depth the held-out values carry
    # more noise, a constant added to every rank, so the curve's relative depth is smaller)
    assert 5 <= adata.uns["denoised"]["best"] <= 40
    loss = adata.uns["denoised"]["loss_mean"]
    assert loss[0] > loss.min() * 1.005 and loss[-1] > loss.min() * 1.001
