"""Output that fits: low-rank factors and a lazy layer when the dense layer would be too big."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s

da = pytest.importorskip("dask.array")

GRID = [2, 5, 8]


@pytest.fixture
def adata(simulation) -> ad.AnnData:
    a = ad.AnnData(simulation.counts.copy())
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    return a


@pytest.mark.parametrize(
    ("method", "grid"),
    [pytest.param("pca", GRID, id="pca"), pytest.param("diffusion", [0, 1, 3], id="diffusion")],
)
def test_factored_output_equals_dense_output(adata, method, grid, tmp_path):
    dense = adata.copy()
    n2s.pp.denoise(dense, method=method, grid=grid, progress=False)
    n2s.pp.denoise(adata, method=method, grid=grid, progress=False, max_dense_bytes=1)
    assert dense.uns["denoised"]["output"] == "dense" and adata.uns["denoised"]["output"] == "factored"
    layer = adata.layers["denoised"]
    assert isinstance(layer, da.Array) and layer.dtype == np.float32 and layer.shape == adata.shape
    k = adata.obsm["denoised_scores"].shape[1]
    assert adata.varm["denoised_loadings"].shape == (adata.n_vars, k)
    np.testing.assert_allclose(layer.compute(), dense.layers["denoised"], rtol=1e-5, atol=1e-5)
    adata.write_h5ad(tmp_path / "factored.h5ad")  # materialised block by block
    back = ad.read_h5ad(tmp_path / "factored.h5ad")
    np.testing.assert_allclose(back.layers["denoised"], dense.layers["denoised"], rtol=1e-5, atol=1e-5)


def test_factored_output_keeps_dropped_cells_and_genes_at_zero(adata):
    X = adata.X.tolil()
    X[3, :] = 0
    X[:, 4] = 0
    adata.X = sparse.csr_matrix(X)
    dense = adata.copy()
    n2s.pp.denoise(dense, grid=GRID, empty="drop", progress=False)
    n2s.pp.denoise(adata, grid=GRID, empty="drop", progress=False, max_dense_bytes=1)
    values = adata.layers["denoised"].compute()
    assert not values[3].any() and not values[:, 4].any()
    np.testing.assert_allclose(values, dense.layers["denoised"], rtol=1e-5, atol=1e-5)
    assert not adata.obs["denoised_kept"].iloc[3]


@pytest.mark.parametrize("output", ["dense", "factored"])
def test_denoised_genes_reads_a_subset(adata, output):
    n2s.pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1 if output == "factored" else None)
    full = np.asarray(adata.layers["denoised"])
    for genes in (["g7", "g2"], [7, 2], np.isin(np.arange(adata.n_vars), [2, 7])):
        got = n2s.tl.denoised_genes(adata, genes=genes)
        want = full[:, [2, 7]] if isinstance(genes, np.ndarray) else full[:, [7, 2]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"not in adata\.var_names"):
        n2s.tl.denoised_genes(adata, genes=["nope"])


def test_output_without_low_rank_form_that_does_not_fit_is_refused(adata):
    from sc_noise2self.denoisers import Autoencoder

    before = (sorted(adata.layers), sorted(adata.uns))
    with pytest.raises(ValueError, match="no low-rank form"):
        n2s.pp.denoise(adata, method=Autoencoder(device="cpu"), grid=[1], progress=False, max_dense_bytes=1)
    assert (sorted(adata.layers), sorted(adata.uns)) == before


def test_the_layer_is_the_projection_of_the_factors_onto_non_negative_values(adata):
    n2s.pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1)
    record = adata.uns["denoised"]
    assert record["non_negative"] is True
    scores, loadings = adata.obsm["denoised_scores"], adata.varm["denoised_loadings"]
    product = adata.var["denoised_offset"].to_numpy() + scores @ loadings.T
    assert (product < -1e-3).any(), "no negative value to project: the test checks nothing"
    layer = adata.layers["denoised"].compute()
    assert layer.min() >= 0
    np.testing.assert_allclose(layer, np.maximum(product, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(n2s.tl.denoised_genes(adata, genes=np.arange(adata.n_vars)), layer)


def test_values_with_negative_entries_are_not_projected(simulation):
    """Data that may be negative (e.g. scaled values) carry no bound: the output keeps its sign."""
    values = simulation.counts.toarray().astype(np.float64)
    values = (values - values.mean(axis=0)) / (values.std(axis=0) + 1)
    adata = ad.AnnData(values.astype(np.float32))
    n2s.pp.denoise(adata, calibration="genes", transform="none", target_sum=None, grid=[2, 5], progress=False)
    assert adata.uns["denoised"]["non_negative"] is False and adata.layers["denoised"].min() < 0


def test_scanpy_reads_the_layer_without_invalid_values(adata):
    """Log fold changes of ``rank_genes_groups`` on the layer are finite, even where the fit dips lowest."""
    import warnings

    import scanpy as sc

    n2s.pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1)
    fitted = adata.var["denoised_offset"].to_numpy() + adata.obsm["denoised_scores"] @ adata.varm["denoised_loadings"].T
    gene = int(np.argmin(fitted.min(axis=0)))
    low = np.argsort(fitted[:, gene])[:10]
    assert fitted[low, gene].mean() < -1e-3, "no negative fit: the test checks nothing"
    adata.layers["denoised"] = adata.layers["denoised"].compute()
    adata.obs["group"] = np.where(np.isin(np.arange(adata.n_obs), low), "low", "rest")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="invalid value", category=RuntimeWarning)
        sc.tl.rank_genes_groups(adata, "group", groups=["low"], layer="denoised", use_raw=False)
    assert np.isfinite(adata.uns["rank_genes_groups"]["logfoldchanges"]["low"].astype(float)).all()
