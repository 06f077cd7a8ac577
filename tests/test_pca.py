from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from sc_noise2self._numerics.linalg import centered_truncated_svd, gram_stats, merge_gram_stats
from sc_noise2self.denoisers import PCA, Denoiser, Sweep

from ._helpers import fit, predict, predictions


@pytest.mark.parametrize("as_sparse", [True, False], ids=["csr", "dense"])
def test_truncated_svd_matches_dense_svd(simulation, as_sparse):
    X = np.sqrt(simulation.counts.toarray().astype(float))
    mean, u, s, vt = centered_truncated_svd(sparse.csr_matrix(X) if as_sparse else X, 10, rng=np.random.default_rng(0))
    np.testing.assert_allclose(mean, X.mean(axis=0))
    _, s_ref, vt_ref = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    # The signal components (8 programs) are exact; the trailing ones sit in the noise bulk,
    # where a randomised SVD is accurate to a fraction of the (tiny) spectral gaps.
    np.testing.assert_allclose(s[:7], s_ref[:7], rtol=1e-6)
    np.testing.assert_allclose(s, s_ref[:10], rtol=5e-3)
    np.testing.assert_allclose(np.abs(np.sum(vt[:7] * vt_ref[:7], axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(u.T @ u, np.eye(10), atol=1e-10)


def test_sweep_equals_direct_prediction(simulation):
    X = sparse.csr_matrix(np.sqrt(simulation.counts.astype(float)))
    grid = np.array([1, 2, 5, 9])
    pca, data = fit(PCA(random_state=0), X, grid)
    assert isinstance(pca, Denoiser) and isinstance(pca, Sweep) and pca.order == "blocks"
    rows = slice(10, 50)
    seen = []
    for k, pred in pca.predictions(data.block(rows)):
        np.testing.assert_allclose(pred, predict(pca, data, k, rows), rtol=1e-5, atol=1e-5)  # the sweep runs in float32
        seen.append(k)
    assert seen == grid.tolist()


def test_full_rank_reconstructs_the_data():
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(6, 12)).astype(float)  # centred rank 5
    pca, data = fit(PCA(random_state=0), sparse.csr_matrix(X), [5])
    out = predict(pca, data, 5)
    assert out.dtype == np.float32  # the output layer's dtype, accumulated in float64
    np.testing.assert_allclose(out, X, atol=1e-6)


def test_default_grid_is_capped_by_data_size():
    assert PCA().default_grid((1000, 500))[-1] == 100
    assert PCA().default_grid((1000, 500))[:20].tolist() == list(range(1, 21))
    assert PCA().default_grid((30, 500))[-1] == 28


def test_init_stores_parameters_untouched():
    rng = np.random.default_rng(3)
    pca = PCA(n_iter=2, random_state=rng)
    assert pca.random_state is rng and pca.n_iter == 2
    assert not hasattr(pca, "components_")


@pytest.mark.parametrize("as_sparse", [True, False], ids=["csr", "dense"])
def test_covariance_route_is_the_exact_svd(simulation, as_sparse):
    """Gram matrix accumulated over blocks of cells (pairwise merges), then a genes × genes eigenproblem."""
    X = np.sqrt(simulation.counts.toarray().astype(float))
    pca, data = fit(PCA(solver="covariance"), sparse.csr_matrix(X) if as_sparse else X, [10])
    _, s_ref, vt_ref = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(pca.mean_, X.mean(axis=0))
    np.testing.assert_allclose(pca.singular_values_, s_ref[:10], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(pca.components_ * vt_ref[:10], axis=1)), 1.0, atol=1e-8)
    scores = pca.output(10).scores(data.block())
    np.testing.assert_allclose(scores, (X - X.mean(axis=0)) @ pca.components_.T, atol=1e-8)


def test_gram_statistics_merge_in_any_grouping(simulation):
    X = np.sqrt(simulation.counts.toarray().astype(float))
    whole = gram_stats(X)
    parts = [gram_stats(X[a : a + 37]) for a in range(0, X.shape[0], 37)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merge_gram_stats(merged, part)
    assert merged.n == X.shape[0]
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("share", [0.0, 0.1, 1.0])
def test_sparse_gram_statistics_equal_the_dense_ones(simulation, share, monkeypatch):
    """Dense genes by BLAS, the others by their stored entries: the dense route's result, exactly symmetric."""
    import numba

    from sc_noise2self._numerics import linalg as linalg_module

    monkeypatch.setattr(linalg_module, "_DENSE_SHARE", share)  # all genes dense, some, none
    monkeypatch.setattr(linalg_module, "_GRAM_ELEMENTS", 5000)  # several blocks of cells
    dense = np.log1p(simulation.counts.toarray().astype(float))
    dense[3] = 0  # an empty cell
    X = sparse.csr_matrix(dense)
    stats = gram_stats(X)
    want = gram_stats(X.toarray())
    np.testing.assert_allclose(stats.mean, want.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.m2, want.m2, rtol=1e-9, atol=1e-10 * np.abs(want.m2).max())
    assert stats.n == want.n and np.array_equal(stats.m2, stats.m2.T)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert gram_stats(X).m2.tobytes() == stats.m2.tobytes()
    finally:
        numba.set_num_threads(threads)


def test_blockwise_fit_equals_in_memory_fit(simulation):
    """Data read block by block (the dask route: Gram statistics merged over blocks) give the in-memory fit."""
    da = pytest.importorskip("dask.array")
    from sc_noise2self._engine.blocks import BlockData, Source
    from sc_noise2self.denoisers import Block

    X = sparse.csr_matrix(np.sqrt(simulation.counts.astype(float)))
    grid = np.array([1, 3, 6])
    memory, data = fit(PCA(solver="covariance"), X, grid)
    source = Source(da.from_array(X, chunks=(50, -1)), "X", empty="error", counts=False)
    blocks = BlockData(
        source, lambda b, rows: Block(rows, b, None), scales=np.ones(X.shape[0]), transform="none", max_rate=1
    )
    blockwise = PCA().fit(blocks, grid)
    np.testing.assert_allclose(blockwise.components_, memory.components_, atol=1e-10)
    block = data.block(slice(50, 100))
    for (k, expected), (k2, got) in zip(
        predictions(memory, data, block.rows).items(), blockwise.predictions(block), strict=True
    ):
        assert k == k2
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_solver_is_checked_and_auto_switches_on_gene_count():
    assert PCA().uses_covariance(2000) and not PCA().uses_covariance(20000)
    assert PCA(solver="covariance").uses_covariance(20000)
    with pytest.raises(ValueError, match="solver must be"):
        PCA(solver="arpack").uses_covariance(10)
