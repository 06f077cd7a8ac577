"""``mask_var``: calibrate and fit on some genes, still denoise every gene."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import cell_scales, expected_transform

from ._helpers import assert_same_layer, out_of_core
from .conftest import simulate_low_rank_poisson

SQRT = {"transform": "sqrt", "target_sum": None}


@pytest.fixture(scope="module")
def sim():
    return simulate_low_rank_poisson(600, 300, 8, seed=0)


@pytest.fixture
def adata(sim) -> ad.AnnData:
    a = ad.AnnData(sim.counts.copy())
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    top = np.argsort(-np.asarray(sim.counts.mean(axis=0)).ravel())[:100]
    a.var["highly_variable"] = np.isin(np.arange(a.n_vars), top)
    return a


def _truth(sim, transform, target_sum):
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), target_sum)
    return np.stack([expected_transform(r, [s], transform)[0] for r, s in zip(sim.rates, scales, strict=True)])


@pytest.mark.parametrize("method", ["pca", "diffusion"])
@pytest.mark.parametrize("settings", [pytest.param(SQRT, id="sqrt"), pytest.param({}, id="default-log1p-1e4")])
def test_genes_outside_the_mask_come_out_denoised(adata, sim, method, settings):
    n2s.pp.denoise(
        adata, method=method, grid=[2, 4, 6, 8] if method == "pca" else [0, 1, 2, 3], progress=False, **settings
    )
    info = adata.uns["denoised"]
    assert info["params"]["mask_var"] == "highly_variable" and info["n_genes_fitted"] == 100
    mask = adata.var["highly_variable"].to_numpy()
    transform, target_sum = settings.get("transform", "log1p"), settings.get("target_sum", 1e4)
    truth, layer = _truth(sim, transform, target_sum), adata.layers["denoised"]
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), target_sum)  # over all genes, as scanpy
    raw = {"sqrt": np.sqrt, "log1p": np.log1p}[transform](sim.counts.toarray() * scales[:, None])
    for part in (mask, ~mask):
        assert np.mean((layer[:, part] - truth[:, part]) ** 2) < 0.3 * np.mean((raw[:, part] - truth[:, part]) ** 2)


def test_the_mask_is_calibrated_on_alone_and_matches_a_subset_run(adata, sim):
    n2s.pp.denoise(adata, grid=[2, 4, 6, 8], progress=False)
    mask = adata.var["highly_variable"].to_numpy()
    subset = ad.AnnData(sim.counts[:, mask].copy())
    totals = np.asarray(sim.counts.sum(axis=1), dtype=np.float64).ravel()
    result = n2s.tl.calibrate(subset, grid=[2, 4, 6, 8], progress=False)
    assert result.best == adata.uns["denoised"]["best"]
    # the same curve, up to the depth normalisation (all genes' totals vs the subset's)
    assert not np.allclose(result.loss, adata.uns["denoised"]["loss"])
    assert (np.asarray(sim.counts[:, mask].sum(axis=1)).ravel() < totals).all()


def test_mask_none_or_all_genes_is_the_unmasked_run(adata, sim):
    plain = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(plain, grid=[2, 4], progress=False)
    for mask_var in (None, np.ones(adata.n_vars, dtype=bool)):
        a = adata.copy()
        n2s.pp.denoise(a, grid=[2, 4], mask_var=mask_var, progress=False)
        np.testing.assert_array_equal(a.layers["denoised"], plain.layers["denoised"])
        assert a.uns["denoised"]["params"]["mask_var"] is None
    no_column = ad.AnnData(sim.counts.copy())  # the default without a highly_variable column: all genes
    n2s.pp.denoise(no_column, grid=[2, 4], progress=False)
    np.testing.assert_array_equal(no_column.layers["denoised"], plain.layers["denoised"])


@pytest.mark.parametrize("scale", ["transformed", "counts"])
def test_masked_output_is_the_same_dense_or_factored(adata, scale):
    dense, factored = adata.copy(), adata.copy()
    n2s.pp.denoise(dense, grid=[2, 4], scale=scale, progress=False)
    n2s.pp.denoise(factored, grid=[2, 4], scale=scale, max_dense_bytes=1, progress=False)
    np.testing.assert_array_equal(factored.layers["denoised"].compute(), dense.layers["denoised"])
    assert factored.varm["denoised_loadings"].shape[0] == adata.n_vars


def test_an_array_mask_and_dropped_cells(adata, sim):
    X = sim.counts.tolil()
    mask = adata.var["highly_variable"].to_numpy()
    X[3, np.flatnonzero(mask)] = 0  # no counts in the masked genes: left out, zeros
    adata.X = X.tocsr()
    n2s.pp.denoise(adata, grid=[2, 4], mask_var=mask, progress=False)
    assert adata.uns["denoised"]["params"]["mask_var"] == "array" and adata.uns["denoised"]["n_dropped_cells"] == 1
    assert not adata.layers["denoised"][3].any() and adata.layers["denoised"][4].any()


@pytest.mark.parametrize(
    ("mask_var", "kwargs", "match"),
    [
        pytest.param("nope", {}, "not a column of adata.var", id="missing-column"),
        pytest.param(np.ones(5, dtype=bool), {}, "one boolean per gene", id="short"),
        pytest.param(np.arange(300), {}, "one boolean per gene", id="integers"),
        pytest.param(np.eye(1, 300, dtype=bool)[0], {}, "at least 2", id="one-gene"),
        pytest.param("highly_variable", {"method": "autoencoder"}, "low-rank output", id="autoencoder"),
    ],
)
def test_bad_masks_are_refused_before_any_work(adata, mask_var, kwargs, match):
    if kwargs.get("method") == "autoencoder":
        pytest.importorskip("torch")
    before = (sorted(adata.layers), sorted(adata.uns))
    with pytest.raises(ValueError, match=match):
        n2s.pp.denoise(adata, mask_var=mask_var, progress=False, **kwargs)
    assert (sorted(adata.layers), sorted(adata.uns)) == before


@pytest.mark.parametrize("method", ["pca", "diffusion"])
@pytest.mark.parametrize("scale", ["transformed", "counts"])
def test_a_mask_out_of_core_gives_the_in_memory_output(adata, method, scale, tmp_path):
    pytest.importorskip("dask.array")
    X = adata.X.tolil()
    X[3, np.flatnonzero(adata.var["highly_variable"].to_numpy())] = 0  # a cell left out for the mask only
    adata.X = X.tocsr()
    settings = {"method": method, "grid": [2, 4, 6] if method == "pca" else [0, 1, 2], "scale": scale}
    memory = adata.copy()
    n2s.pp.denoise(memory, max_dense_bytes=1, progress=False, **settings)
    for kind, other in out_of_core(adata, tmp_path):
        n2s.pp.denoise(other, progress=False, **settings)
        info, expected = other.uns["denoised"], memory.uns["denoised"]
        assert info["best"] == expected["best"] and info["n_genes_fitted"] == 100 and info["n_dropped_cells"] == 1, kind
        np.testing.assert_allclose(info["loss"], expected["loss"], rtol=1e-9, err_msg=kind)
        assert_same_layer(other, memory, kind)
        assert not np.asarray(other.layers["denoised"][3].compute()).any()
