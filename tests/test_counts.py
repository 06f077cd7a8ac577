"""Denoised counts (``scale="counts"``): the exact inversion of E[T(s X)], for every method and storage."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import sc_noise2self as n2s

from .conftest import simulate_low_rank_poisson

SCALES = [
    pytest.param({"transform": "log1p", "target_sum": 1e4}, id="log1p-1e4"),
    pytest.param({"transform": "sqrt", "target_sum": None}, id="sqrt-raw"),
    pytest.param({"transform": "none", "target_sum": 1e4}, id="none-1e4"),
]


@pytest.fixture(scope="module")
def sim():
    return simulate_low_rank_poisson(500, 200, 6, mean_depth=800.0, seed=4)


def _naive_counts(values: np.ndarray, totals: np.ndarray, transform: str, target_sum: float | None) -> np.ndarray:
    """What a user would do without the inversion: expm1 / square, then undo the depth scaling."""
    back = {"log1p": np.expm1, "sqrt": np.square, "none": lambda v: v}[transform](values.astype(np.float64))
    scale = np.ones_like(totals) if target_sum is None else target_sum / totals
    return np.maximum(back, 0) / scale[:, None]


def _null_floor(adata: ad.AnnData, counts=None) -> np.ndarray:
    """The floor the layer was written with: its share of each entry's null rate (cell total × gene share)."""
    counts = adata.X if counts is None else counts
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    shares = np.asarray(counts.sum(axis=0), dtype=np.float64).ravel() / totals.sum()
    return adata.uns["denoised"]["count_floor"]["share"] * np.outer(totals, shares)


@pytest.mark.parametrize("settings", SCALES)
def test_counts_are_closer_to_the_true_rates_than_naive_back_transforms(sim, settings):
    a = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(a, grid=[2, 4, 6, 8, 12], progress=False, **settings)
    b = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(b, grid=[2, 4, 6, 8, 12], progress=False, scale="counts", **settings)
    assert b.uns["denoised"]["scale"] == "counts" and a.uns["denoised"]["best"] == b.uns["denoised"]["best"]
    counts = b.layers["denoised"]
    assert counts.dtype == np.float32 and (counts >= 0).all()
    totals = np.asarray(sim.counts.sum(axis=1), dtype=np.float64).ravel()
    naive = np.maximum(_naive_counts(a.layers["denoised"], totals, **settings), _null_floor(b))
    error, naive_error = np.mean((counts - sim.rates) ** 2), np.mean((naive - sim.rates) ** 2)
    if settings["transform"] == "none":  # a linear scale: the inversion is the plain rescaling
        np.testing.assert_allclose(counts, naive, rtol=1e-4, atol=1e-4)
    else:
        assert error < 0.95 * naive_error, (error, naive_error)
    assert abs(counts.mean() / sim.rates.mean() - 1) < 0.02  # the depth is kept


@pytest.mark.parametrize("method", ["pca", "diffusion"])
def test_factored_counts_are_the_dense_counts(sim, method):
    dense, factored = ad.AnnData(sim.counts.copy()), ad.AnnData(sim.counts.copy())
    for a, budget in ((dense, None), (factored, 1)):
        n2s.pp.denoise(a, method=method, grid=[2, 5], scale="counts", max_dense_bytes=budget, progress=False)
    layer = factored.layers["denoised"]
    assert hasattr(layer, "compute") and factored.uns["denoised"]["output"] == "factored"
    np.testing.assert_array_equal(layer.compute(), dense.layers["denoised"])
    np.testing.assert_array_equal(n2s.tl.denoised_genes(factored, genes=[3, 1]), dense.layers["denoised"][:, [3, 1]])


def test_dropped_cells_and_genes_stay_zero_and_dask_input_works(sim, tmp_path):
    da = pytest.importorskip("dask.array")
    X = sim.counts.tolil()
    X[4] = 0
    X[:, 9] = 0
    X = X.tocsr()
    memory = ad.AnnData(X.copy())
    n2s.pp.denoise(memory, grid=[3, 6], scale="counts", progress=False)
    out = memory.layers["denoised"]
    assert not out[4].any() and not out[:, 9].any() and out[5].any()
    lazy = ad.AnnData(da.from_array(X, chunks=(128, -1)))
    n2s.pp.denoise(lazy, grid=[3, 6], scale="counts", progress=False)
    np.testing.assert_allclose(lazy.layers["denoised"].compute(), out, rtol=1e-4, atol=1e-4)
    lazy.write_h5ad(tmp_path / "lazy.h5ad")
    back = ad.read_h5ad(tmp_path / "lazy.h5ad")
    assert back.uns["denoised"]["scale"] == "counts"
    np.testing.assert_allclose(back.layers["denoised"], out, rtol=1e-4, atol=1e-4)


def test_autoencoder_counts(sim):
    pytest.importorskip("torch")
    from sc_noise2self._numerics.transform import to_counts
    from sc_noise2self.denoisers import Autoencoder

    a, b = ad.AnnData(sim.counts.copy()), ad.AnnData(sim.counts.copy())
    for x, scale in ((a, "transformed"), (b, "counts")):
        model = Autoencoder(hidden=(32,), batch_size=64, device="cpu")
        n2s.pp.denoise(x, method=model, grid=[2, 4], scale=scale, progress=False)
    counts = b.layers["denoised"]
    assert np.isfinite(counts).all() and (counts >= 0).all()
    totals = np.asarray(sim.counts.sum(axis=1), dtype=np.float64).ravel()
    floor = b.uns["denoised"]["count_floor"]["share"]
    shares = np.asarray(sim.counts.sum(axis=0), dtype=np.float64).ravel() / totals.sum()
    expected = to_counts("log1p", totals, 1e4, sim.counts.max(), None).with_floor(floor, shares)
    expected = expected(a.layers["denoised"], slice(None))
    np.testing.assert_array_equal(counts, expected)  # the same network's output, inverted


def test_counts_need_counts_and_a_known_scale(sim):
    a = ad.AnnData(sim.counts.copy())
    with pytest.raises(ValueError, match="scale must be 'transformed' or 'counts'"):
        n2s.pp.denoise(a, scale="log1p", progress=False)
    lognorm = ad.AnnData(np.log1p(sim.counts.toarray() / 7.0))
    with pytest.raises(ValueError, match="scale='counts' maps the output back to counts, which needs raw counts"):
        n2s.pp.denoise(
            lognorm, calibration="genes", transform="none", target_sum=None, grid=[2], scale="counts", progress=False
        )
    assert "denoised" not in lognorm.layers and "denoised" not in lognorm.uns


def test_the_floor_is_chosen_on_the_held_out_likelihood(sim):
    from sc_noise2self._engine.floor import FLOORS, PER

    a = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(a, grid=[2, 4, 6], scale="counts", progress=False)
    record = a.uns["denoised"]["count_floor"]
    np.testing.assert_array_equal(record["grid"], FLOORS / PER)
    assert record["loss"].shape == record["grid"].shape and np.isfinite(record["loss"]).all()
    assert record["share"] == record["grid"][np.argmin(record["loss"])]
    floor = _null_floor(a)
    layer = a.layers["denoised"]
    assert np.all(layer >= floor.astype(np.float32) * (1 - 1e-6))
    if record["share"] > 0:
        assert np.any(layer == floor.astype(np.float32))  # some entries sit on the floor
    transformed = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(transformed, grid=[2, 4, 6], progress=False)
    assert "count_floor" not in transformed.uns["denoised"]


def test_every_gene_is_floored_with_a_gene_mask(sim):
    a = ad.AnnData(sim.counts.copy())
    a.var["highly_variable"] = np.arange(a.n_vars) < 120
    n2s.pp.denoise(a, grid=[2, 4], scale="counts", progress=False)
    assert a.uns["denoised"]["n_genes_fitted"] == 120
    layer, floor = a.layers["denoised"], _null_floor(a)
    assert np.all(layer >= floor.astype(np.float32) * (1 - 1e-6))
    assert np.isfinite(layer).all() and layer[:, 120:].any()


def test_the_gene_partition_writes_counts_without_a_floor(sim):
    a = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(a, calibration="genes", grid=[2, 4], scale="counts", progress=False)
    assert "count_floor" not in a.uns["denoised"]
    assert (a.layers["denoised"] >= 0).all() and np.isfinite(a.layers["denoised"]).all()


def test_an_interrupted_floor_leaves_the_data_as_they_were(sim, monkeypatch):
    a = ad.AnnData(sim.counts.copy())
    a.layers["denoised"] = np.ones(a.shape, dtype=np.float32)  # the user's own layer of that name

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sc_noise2self.pp._denoise.count_floor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        n2s.pp.denoise(a, grid=[2, 4], scale="counts", overwrite=True, progress=False)
    assert "denoised" not in a.uns and (a.layers["denoised"] == 1).all()
