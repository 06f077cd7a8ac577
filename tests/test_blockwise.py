"""Dask and backed input: blockwise calibration equals the in-memory one, whatever the chunking."""

from __future__ import annotations

import importlib.util

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s

from .conftest import simulate_low_rank_poisson

da = pytest.importorskip("dask.array")

CHUNKINGS = [
    pytest.param((37, -1), id="rows-37"),
    pytest.param((400, -1), id="one-block"),
    pytest.param((64, 25), id="rows-64-genes-25"),
]


@pytest.fixture(scope="module")
def counts() -> sparse.csr_matrix:
    return simulate_low_rank_poisson(400, 90, 4, mean_depth=300.0, seed=2).counts


def _dask(X: sparse.csr_matrix, chunks: tuple[int, int], *, dense: bool = False):
    return da.from_array(X.toarray() if dense else X, chunks=chunks)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dense", [False, True], ids=["csr-chunks", "dense-chunks"])
def test_dask_calibration_equals_in_memory(counts, chunks, dense):
    kwargs = {"n_splits": 2, "progress": False, "random_state": 4}
    expected = n2s.tl.calibrate(counts, **kwargs)
    got = n2s.tl.calibrate(_dask(counts, chunks, dense=dense), **kwargs)
    assert got.best == expected.best
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-9)
    np.testing.assert_allclose(got.baseline, expected.baseline, rtol=1e-9)
    np.testing.assert_allclose(got.cell_group_loss, expected.cell_group_loss, rtol=1e-9)
    assert got.params == expected.params


@pytest.mark.parametrize(
    "settings",
    [{"transform": "log1p", "target_sum": 1e4}, {"loss": "poisson"}, {"split_fraction": 0.7, "grid": [2, 5, 9]}],
    ids=["log1p-1e4", "poisson", "fraction-grid"],
)
def test_dask_equals_in_memory_for_other_settings(counts, settings):
    expected = n2s.tl.calibrate(counts, progress=False, **settings)
    got = n2s.tl.calibrate(_dask(counts, (50, -1)), progress=False, **settings)
    assert got.best == expected.best
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-9)


DIFFUSION_GRID = n2s.tl.grid(t=range(5), n_neighbors=[5, 15])


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_dask_diffusion_equals_in_memory(counts, chunks):
    """Embedding from merged Gram statistics, graph in memory, blocks scored from the diffused scores."""
    kwargs = {"method": "diffusion", "grid": DIFFUSION_GRID, "n_splits": 2, "progress": False, "random_state": 4}
    expected = n2s.tl.calibrate(counts, **kwargs)
    got = n2s.tl.calibrate(_dask(counts, chunks), **kwargs)
    assert got.best == expected.best
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-9)


def test_denoise_dask_with_diffusion_gives_the_in_memory_output(counts, tmp_path):
    kwargs = {"method": "diffusion", "grid": DIFFUSION_GRID, "transform": "log1p", "target_sum": 1e4}
    memory = ad.AnnData(counts.astype(np.float32))
    n2s.pp.denoise(memory, progress=False, **kwargs)
    backed_path = tmp_path / "counts.h5ad"
    ad.AnnData(counts.astype(np.float32)).write_h5ad(backed_path)
    for lazy in (ad.AnnData(_dask(counts, (64, -1))), ad.read_h5ad(backed_path, backed="r")):
        n2s.pp.denoise(lazy, progress=False, **kwargs)
        assert lazy.uns["denoised"]["output"] == "factored"
        np.testing.assert_array_equal(lazy.uns["denoised"]["best"], memory.uns["denoised"]["best"])
        np.testing.assert_allclose(np.asarray(lazy.layers["denoised"][:]), memory.layers["denoised"], atol=1e-4)


@pytest.mark.parametrize("method", ["pca", "diffusion"])
def test_many_genes_go_the_randomised_route_block_by_block_as_in_memory(counts, monkeypatch, method):
    """Above the covariance route's gene count, a randomised iteration over the blocks: dask = memory, any chunking."""
    monkeypatch.setattr("sc_noise2self.denoisers.pca.AUTO_MAX_GENES", 40)
    kwargs = {"method": method, "grid": [2, 4, 6] if method == "pca" else DIFFUSION_GRID, "progress": False}
    expected = n2s.tl.calibrate(counts, **kwargs)
    for chunks in ((37, -1), (150, 30)):
        got = n2s.tl.calibrate(_dask(counts, chunks), **kwargs)
        assert got.best == expected.best
        np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-9)


def test_the_randomised_route_finds_the_exact_components(counts):
    """Signal components exactly; the noise bulk at least as closely as the in-memory randomised SVD."""
    from sc_noise2self._numerics.linalg import centered_truncated_svd, covariance_svd, gram_randomized_svd, gram_stats
    from sc_noise2self._numerics.transform import transformed

    values = transformed(counts, "log1p", 1e4)
    exact_s, exact_vt = covariance_svd(gram_stats(values), 10)
    blocks = [values[i : i + 64] for i in range(0, values.shape[0], 64)]

    def reduce(fn, merge):
        total = None
        for block in blocks:
            total = fn(block) if total is None else merge(total, fn(block))
        return total

    settings = {"n_oversamples": 20, "n_iter": 4}
    mean, s, vt = gram_randomized_svd(reduce, values.shape, 10, rng=np.random.default_rng(0), **settings)
    np.testing.assert_allclose(mean, np.asarray(values.mean(axis=0)).ravel(), rtol=1e-12)
    np.testing.assert_allclose(s[:4], exact_s[:4], rtol=1e-5)  # the four programs of the simulation
    np.testing.assert_allclose(vt[:4], exact_vt[:4], atol=5e-3)  # signs fixed alike
    _, _, svd_s, _ = centered_truncated_svd(values, 10, rng=np.random.default_rng(0), **settings)
    assert np.abs(s / exact_s - 1).max() <= np.abs(svd_s / exact_s - 1).max() < 0.01


def test_blockwise_diffusion_scores_value_by_value_when_the_grid_does_not_fit(counts, monkeypatch):
    """Without memory for every grid value's diffused scores, each value is scored in a pass of its own."""
    kwargs = {"method": "diffusion", "grid": DIFFUSION_GRID, "progress": False}
    expected = n2s.tl.calibrate(_dask(counts, (100, -1)), **kwargs)
    monkeypatch.setattr("sc_noise2self.denoisers.diffusion.default_max_dense_bytes", lambda: 1024)
    got = n2s.tl.calibrate(_dask(counts, (100, -1)), **kwargs)
    assert got.loss.tobytes() == expected.loss.tobytes() and got.best == expected.best


def test_denoise_dask_anndata_gives_the_in_memory_output_lazily(counts, tmp_path):
    memory = ad.AnnData(counts.astype(np.float32))
    n2s.pp.denoise(memory, progress=False)
    lazy = ad.AnnData(_dask(counts, (90, -1)))
    n2s.pp.denoise(lazy, progress=False)
    assert isinstance(lazy.layers["denoised"], da.Array)
    assert lazy.uns["denoised"]["output"] == "factored"
    assert lazy.uns["denoised"]["best"] == memory.uns["denoised"]["best"]
    np.testing.assert_allclose(lazy.layers["denoised"].compute(), memory.layers["denoised"], atol=1e-4)
    lazy.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_allclose(back.layers["denoised"], memory.layers["denoised"], atol=1e-4)
    np.testing.assert_array_equal(back.uns["denoised"]["loss"], lazy.uns["denoised"]["loss"])


def test_backed_anndata_is_read_in_blocks(counts, tmp_path):
    path = tmp_path / "counts.h5ad"
    ad.AnnData(counts.astype(np.float32)).write_h5ad(path)
    memory = ad.read_h5ad(path)
    n2s.pp.denoise(memory, progress=False, max_dense_bytes=1)  # factored, to compare factors
    backed = ad.read_h5ad(path, backed="r")
    n2s.pp.denoise(backed, progress=False)
    assert backed.isbacked
    np.testing.assert_allclose(backed.obsm["denoised_scores"], memory.obsm["denoised_scores"], atol=1e-4)
    np.testing.assert_allclose(backed.uns["denoised"]["loss"], memory.uns["denoised"]["loss"], rtol=1e-9)
    backed.file.close()


def test_empty_cells_and_genes_dropped_blockwise_as_in_memory(counts):
    X = counts.tolil()
    X[5] = 0
    X[:, 7] = 0
    X = X.tocsr()
    memory = ad.AnnData(X.astype(np.float32))
    n2s.pp.denoise(memory, empty="drop", progress=False, max_dense_bytes=1)
    lazy = ad.AnnData(_dask(X, (33, -1)))
    n2s.pp.denoise(lazy, empty="drop", progress=False)
    np.testing.assert_allclose(lazy.uns["denoised"]["loss"], memory.uns["denoised"]["loss"], rtol=1e-9)
    np.testing.assert_allclose(lazy.layers["denoised"].compute(), memory.layers["denoised"].compute(), atol=1e-4)
    assert not lazy.obs["denoised_kept"].iloc[5]
    with pytest.raises(ValueError, match="1 cell without any counts"):
        n2s.tl.calibrate(_dask(X, (33, -1)), empty="error", progress=False)


def test_lazy_split_equals_in_memory_split_for_any_chunking(counts):
    for scheme, n_splits in (("binomial", 2), ("multinomial", 3)):
        expected = n2s.pp.split_counts(counts, scheme=scheme, n_splits=n_splits, random_state=9)
        for chunks in ((41, -1), (400, 30)):
            got = n2s.pp.split_counts(_dask(counts, chunks), scheme=scheme, n_splits=n_splits, random_state=9)
            for a, b in zip(expected, got, strict=True):
                assert isinstance(b.train, da.Array)
                np.testing.assert_array_equal(b.train.compute().toarray(), a.train.toarray())
                np.testing.assert_array_equal(b.test.compute().toarray(), a.test.toarray())


def test_blockwise_errors_say_what_to_do_and_leave_adata_untouched(counts):
    bad = counts.astype(np.float32).tolil()
    bad[300, 3] = -1
    lazy = ad.AnnData(_dask(bad.tocsr(), (100, -1)))
    with pytest.raises(ValueError, match=r"cells 300\.\.399\) contains negative values"):
        n2s.pp.denoise(lazy, progress=False)
    good = ad.AnnData(_dask(counts, (100, -1)))
    with pytest.raises(ValueError, match="needs the data in memory"):
        n2s.pp.denoise(good, method=n2s.denoisers.ALRA(), progress=False)
    # what cannot run blockwise is refused before the data are read: here, before the bad block
    refused = [{"method": n2s.denoisers.ALRA()}]
    if importlib.util.find_spec("torch") is not None:  # the autoencoder's gene partition trains by masking
        refused.append({"method": n2s.denoisers.Autoencoder(block_cells=50), "calibration": "genes"})
    for kwargs in refused:
        with pytest.raises(ValueError, match="needs the data in memory"):
            n2s.pp.denoise(lazy, progress=False, **kwargs)
    assert not good.layers and not good.uns and not good.obsm
    X = good.X
    inside = counts.astype(np.float32).tolil()
    inside[150, 3] = -1  # in a block the split's record does not read (it reads rows 0, 200 and 399)
    split = n2s.pp.split_counts(ad.AnnData(_dask(inside.tocsr(), (100, -1))), copy=True)
    with pytest.raises(ValueError, match=r"cells 100\.\.199\) contains negative values"):
        split.layers["split_train"].compute()
    with pytest.raises(ValueError, match=r"cells 300\.\.399\) contains negative values"):  # one it reads: now
        n2s.pp.split_counts(ad.AnnData(_dask(bad.tocsr(), (100, -1))), copy=True)
    assert good.X is X


def test_the_knn_average_calibrates_block_by_block_but_writes_from_memory_only(counts, monkeypatch):
    lazy = ad.AnnData(_dask(counts, (100, -1)))
    with pytest.raises(ValueError, match="its output needs the counts in memory"):
        n2s.pp.denoise(lazy, method="knn", progress=False)
    assert not lazy.layers and not lazy.uns
    monkeypatch.setattr("sc_noise2self.denoisers.knn._GATHERED_BYTES", 2**20)
    with pytest.raises(ValueError, match=r"averages for the 400 cells scored .* lower max_scored_cells"):
        n2s.tl.calibrate(_dask(counts, (100, -1)), method="knn", progress=False)


def test_backed_csc_is_refused_with_advice(counts, tmp_path):
    path = tmp_path / "csc.h5ad"
    ad.AnnData(sparse.csc_matrix(counts.astype(np.float32))).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="backed CSC"):
        n2s.tl.calibrate(backed, progress=False)
    backed.file.close()
