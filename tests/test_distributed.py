"""The distributed engine: blockwise calibration on a LocalCluster of worker processes equals the in-memory one."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sc_noise2self as n2s

from .conftest import simulate_low_rank_poisson

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    """Two worker processes (the dashboard on a free port: 8787 may be taken); the environment is put back after."""
    # distributed's nannies set OMP_NUM_THREADS=1 (and MKL/OpenBLAS's, MALLOC_TRIM_THRESHOLD_,
    # PYTHONHASHSEED) in this process's own environment and leave them there, so every process
    # started later — the notebooks' kernels — would run torch and BLAS on one thread.
    saved = dict(os.environ)
    try:
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def counts():
    return simulate_low_rank_poisson(400, 90, 4, mean_depth=300.0, seed=2).counts


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")  # the depth-conversion table, ~10 MiB
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"method": "pca", "n_splits": 2}, id="pca"),
        pytest.param({"method": "diffusion", "grid": n2s.tl.grid(t=range(4), n_neighbors=[5, 15])}, id="diffusion"),
    ],
)
def test_local_cluster_equals_in_memory(client, counts, settings):
    expected = n2s.tl.calibrate(counts, progress=False, random_state=4, **settings)
    lazy = da.from_array(counts, chunks=(64, -1))
    got = n2s.tl.calibrate(lazy, progress=False, random_state=4, **settings)
    assert client.run(lambda: 1)  # the workers are alive and were used by dask.compute
    assert got.best == expected.best
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-9)


def test_denoise_output_on_a_local_cluster(client, counts):
    import anndata as ad

    memory = ad.AnnData(counts.astype(np.float32))
    n2s.pp.denoise(memory, progress=False)
    lazy = ad.AnnData(da.from_array(counts, chunks=(100, -1)))
    n2s.pp.denoise(lazy, progress=False)
    assert lazy.uns["denoised"]["best"] == memory.uns["denoised"]["best"]
    np.testing.assert_allclose(lazy.layers["denoised"].compute(), memory.layers["denoised"], atol=1e-4)


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
def test_masked_genes_and_the_pipeline_on_a_local_cluster(client, counts, monkeypatch):
    """mask_var with count output, the randomised route, the gene partition, pp.pca and pp.neighbors: as in memory."""
    import anndata as ad

    monkeypatch.setattr("sc_noise2self.denoisers.pca.AUTO_MAX_GENES", 40)  # the randomised route, as for many genes
    memory = ad.AnnData(counts.astype(np.float32))
    memory.var["highly_variable"] = np.arange(memory.n_vars) % 2 == 0
    lazy = ad.AnnData(da.from_array(counts, chunks=(100, -1)), var=memory.var.copy())
    for a in (memory, lazy):
        n2s.pp.denoise(a, grid=[2, 4, 6], scale="counts", max_dense_bytes=1, progress=False)
        n2s.pp.denoise(a, key_added="genes", calibration="genes", n_groups=4, grid=[2, 4], progress=False)
        n2s.pp.pca(a, objective="reconstruction", grid=[2, 4, 6], progress=False)
        n2s.pp.neighbors(a, grid=[3, 5, 10], progress=False)
    assert client.run(lambda: 1)
    assert lazy.uns["denoised"]["best"] == memory.uns["denoised"]["best"]
    assert lazy.uns["denoised"]["n_genes_fitted"] == 45
    np.testing.assert_allclose(lazy.layers["denoised"].compute(), memory.layers["denoised"].compute(), rtol=1e-4)
    np.testing.assert_allclose(lazy.obsm["X_pca"], memory.obsm["X_pca"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lazy.uns["pca"]["variance_ratio"], memory.uns["pca"]["variance_ratio"], rtol=1e-7)
    np.testing.assert_allclose(lazy.uns["genes"]["loss"], memory.uns["genes"]["loss"], rtol=1e-9)
    got, expected = lazy.uns["neighbors"]["calibration"], memory.uns["neighbors"]["calibration"]
    assert got["best"] == expected["best"]
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-9)
