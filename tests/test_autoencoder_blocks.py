"""The autoencoder trained block by block: dask and backed input equal the in-memory run with the same blocks.

"Same" for SGD with chunked shuffling: an epoch visits the blocks of cells in a random
order, reads them into buffers of at least ``buffer_cells`` cells, and shuffles each
buffer's cells into minibatches; inference batches start at every block's first cell. The
schedule depends only on the blocks' bounds and the seed, so dask chunks of ``c`` cells (or
a backed file read in blocks of ``c``) and the in-memory matrix with ``block_cells=c`` give
the same minibatches, the same network, the same losses and the same output — bytes, on CPU.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

torch = pytest.importorskip("torch")
da = pytest.importorskip("dask.array")

import sc_noise2self as n2s  # noqa: E402
from sc_noise2self.denoisers import Autoencoder  # noqa: E402
from sc_noise2self.denoisers.autoencoder._train import Buffer, block_bounds, train_epoch  # noqa: E402

from .conftest import simulate_low_rank_poisson  # noqa: E402

SMALL = {"hidden": (32,), "batch_size": 32, "learning_rate": 3e-3, "device": "cpu"}
GRID = n2s.tl.grid(bottleneck=[4, 8], epochs=[1, 3])


@pytest.fixture(scope="module")
def counts():
    return simulate_low_rank_poisson(300, 80, 5, mean_depth=400.0, seed=2).counts


@pytest.mark.parametrize("likelihood", ["normal", "negative_binomial"])
def test_dask_equals_memory_with_the_same_blocks(counts, likelihood):
    memory = Autoencoder(**SMALL, likelihood=likelihood, block_cells=70, buffer_cells=100)
    chunked = Autoencoder(**SMALL, likelihood=likelihood, buffer_cells=100)
    adatas = [ad.AnnData(counts.copy()), ad.AnnData(da.from_array(counts, chunks=(70, -1)))]
    for adata, model in zip(adatas, (memory, chunked), strict=True):
        n2s.pp.denoise(adata, method=model, grid=GRID, n_splits=2, progress=False)
    in_memory, lazy = (a.uns["denoised"] for a in adatas)
    assert lazy["output"] == "lazy" and in_memory["output"] == "dense"
    np.testing.assert_array_equal(lazy["loss"], in_memory["loss"])
    np.testing.assert_array_equal(lazy["loss_no_denoising"], in_memory["loss_no_denoising"])
    layer = adatas[1].layers["denoised"]
    assert isinstance(layer, da.Array) and layer.dtype == np.float32
    assert np.asarray(layer.compute()).tobytes() == adatas[0].layers["denoised"].tobytes()
    # other blocks give another (equally valid) schedule: not the same bytes
    other = ad.AnnData(da.from_array(counts, chunks=(50, -1)))
    n2s.pp.denoise(
        other, method=Autoencoder(**SMALL, likelihood=likelihood, buffer_cells=100), grid=GRID, progress=False
    )
    assert not np.array_equal(other.uns["denoised"]["loss"], in_memory["loss"][:1])


def test_one_block_is_the_plain_in_memory_run(counts, tmp_path):
    path = tmp_path / "counts.h5ad"
    ad.AnnData(counts.astype(np.float32)).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")  # a few hundred cells: one block
    memory = ad.AnnData(counts.copy())
    for adata in (memory, backed):
        n2s.pp.denoise(adata, method=Autoencoder(**SMALL), grid=GRID, progress=False)
    np.testing.assert_array_equal(backed.uns["denoised"]["loss"], memory.uns["denoised"]["loss"])
    assert np.asarray(backed.layers["denoised"].compute()).tobytes() == memory.layers["denoised"].tobytes()
    backed.file.close()


def test_empty_genes_and_counts_scale_equal_memory(counts):
    dense = counts.toarray()
    dense[:, 7] = 0
    memory = ad.AnnData(sparse.csr_matrix(dense))
    lazy = ad.AnnData(da.from_array(sparse.csr_matrix(dense), chunks=(100, -1)))
    for adata, model in ((memory, Autoencoder(**SMALL, block_cells=100)), (lazy, Autoencoder(**SMALL))):
        n2s.pp.denoise(adata, method=model, grid=GRID, scale="counts", progress=False)
    out = np.asarray(lazy.layers["denoised"].compute())
    np.testing.assert_array_equal(out, memory.layers["denoised"])
    assert not out[:, 7].any() and (out >= 0).all() and np.isfinite(out).all()


def test_empty_cells_are_left_out_and_written_as_zeros(counts):
    # blocks are counted in kept cells, so dropping cells moves the bounds of the blocks after them
    dense = counts.toarray()
    dense[[5, 150]] = 0
    lazy = ad.AnnData(da.from_array(sparse.csr_matrix(dense), chunks=(100, -1)))
    n2s.pp.denoise(lazy, method=Autoencoder(**SMALL), grid=GRID, progress=False)
    out = np.asarray(lazy.layers["denoised"].compute())
    kept = np.ones(dense.shape[0], dtype=bool)
    kept[[5, 150]] = False
    np.testing.assert_array_equal(lazy.obs["denoised_kept"], kept)
    assert not out[~kept].any() and np.isfinite(out).all() and (out[kept] != 0).any(axis=1).all()


def test_an_epoch_reads_every_block_once_in_buffers(counts):
    class Recording:
        def __init__(self, X, bounds):
            self.X, self.bounds, self.loads = X, bounds, []

        def load(self, blocks):
            self.loads.append(list(blocks))
            rows = np.concatenate([np.arange(self.bounds[b].start, self.bounds[b].stop) for b in blocks])
            return Buffer(self.X[rows], None, rows)

    from sc_noise2self.denoisers.autoencoder._module import AutoencoderModule

    X = sparse.csr_matrix(np.sqrt(counts.toarray()), dtype=np.float32)
    source = Recording(X, block_bounds(X.shape[0], 40))  # 8 blocks, the last of 20 cells
    module = AutoencoderModule(X.shape[1], 4, (16,), 0.0, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(module.parameters())
    rng = np.random.default_rng(0)
    for _ in range(3):
        source.loads.clear()
        train_epoch(module, source, optimizer, batch_size=16, buffer_cells=100, rng=rng, device=torch.device("cpu"))
        assert sorted(b for group in source.loads for b in group) == list(range(8))
        sizes = [sum(source.bounds[b].stop - source.bounds[b].start for b in group) for group in source.loads]
        assert all(size >= 100 for size in sizes[:-1])
    assert len({tuple(g) for g in source.loads}) > 1


def test_blockwise_autoencoder_refuses_the_gene_partition_and_bad_block_settings(counts):
    lazy = ad.AnnData(da.from_array(counts, chunks=(100, -1)))
    with pytest.raises(ValueError, match="calibration='genes' trains method 'autoencoder' by masking"):
        n2s.pp.denoise(lazy, method=Autoencoder(**SMALL), calibration="genes", progress=False)
    for bad in ({"block_cells": 0}, {"buffer_cells": -5}, {"block_cells": 2.5}, {"buffer_cells": None}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            n2s.pp.denoise(lazy, method=Autoencoder(**SMALL, **bad), progress=False)
    assert not lazy.layers and not lazy.uns


def test_lazy_layer_survives_h5ad(counts, tmp_path):
    lazy = ad.AnnData(da.from_array(counts, chunks=(100, -1)))
    n2s.pp.denoise(lazy, method=Autoencoder(**SMALL), grid=GRID, progress=False)
    lazy.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.layers["denoised"], np.asarray(lazy.layers["denoised"].compute()))
    assert back.uns["denoised"]["output"] == "lazy"


def test_block_cells_beyond_the_cells_is_one_block(counts):
    results = [
        n2s.tl.calibrate(counts, method=Autoencoder(**SMALL, **extra), grid=GRID, progress=False).loss
        for extra in ({}, {"block_cells": 10_000})
    ]
    np.testing.assert_array_equal(*results)


def test_interrupted_streaming_leaves_the_anndata_untouched(counts, monkeypatch):
    from sc_noise2self.denoisers.autoencoder import _train as _ae_train

    lazy = ad.AnnData(da.from_array(counts, chunks=(100, -1)))
    calls = {"n": 0}
    train = _ae_train.train_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(_ae_train, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        n2s.pp.denoise(lazy, method=Autoencoder(**SMALL), grid=GRID, progress=False)
    assert not lazy.layers and not lazy.uns and lazy.obs.columns.empty


@pytest.mark.parametrize("autocast", ["yes", 1, None])
def test_bad_autocast_is_refused(counts, autocast):
    adata = ad.AnnData(counts.copy())
    with pytest.raises(ValueError, match="autocast must be True or False"):
        n2s.pp.denoise(adata, method=Autoencoder(autocast=autocast), progress=False)
    assert not adata.layers and not adata.uns


def test_count_decoder_on_raw_counts_without_a_transform(counts):
    adata = ad.AnnData(counts.copy())
    model = Autoencoder(**SMALL, likelihood="poisson", n_fits=1)
    n2s.pp.denoise(adata, method=model, grid=GRID, transform="none", target_sum=None, progress=False)
    out = adata.layers["denoised"]
    assert np.isfinite(out).all() and (out >= 0).all()
    # with no transform the output is the rate itself: each cell's rates sum to its total count
    np.testing.assert_allclose(out.sum(axis=1), np.asarray(counts.sum(axis=1)).ravel(), rtol=1e-4)


def test_masked_training_on_scaled_values_with_negatives(counts):
    logged = np.log1p(counts.toarray() / counts.sum(axis=1).A * 1e4)
    scaled = (logged - logged.mean(axis=0)) / (logged.std(axis=0) + 1e-6)  # as sc.pp.scale leaves it
    adata = ad.AnnData(scaled.astype(np.float32))
    n2s.pp.denoise(
        adata,
        method=Autoencoder(**SMALL, mask_fill="mean"),
        calibration="genes",
        grid=[1, 2],
        transform="none",
        target_sum=None,
        select="1se",
        progress=False,
    )
    assert np.isfinite(adata.layers["denoised"]).all() and adata.uns["denoised"]["select"] == "1se"


def test_lazy_output_refuses_names_the_user_owns_and_replaces_its_own(counts):
    dense = counts.toarray()
    dense[5] = 0  # an empty cell: the kept-cells column is written too
    lazy = ad.AnnData(da.from_array(sparse.csr_matrix(dense), chunks=(100, -1)))
    lazy.obs["denoised_kept"] = "user's"
    with pytest.raises(ValueError, match="denoised_kept"):
        n2s.pp.denoise(lazy, method=Autoencoder(**SMALL), grid=GRID, progress=False)
    assert not lazy.layers and not lazy.uns and list(lazy.obs["denoised_kept"].unique()) == ["user's"]
    del lazy.obs["denoised_kept"]
    for grid in (GRID, [1]):  # a second run replaces what the first wrote
        n2s.pp.denoise(lazy, method=Autoencoder(**SMALL), grid=grid, progress=False)
    assert lazy.uns["denoised"]["grid"].ndim == 1 and lazy.obs["denoised_kept"].sum() == dense.shape[0] - 1
