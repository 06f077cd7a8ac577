"""Autoencoder: MCV over (bottleneck, epochs) on CPU, determinism, memory; the same on CUDA when present."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

torch = pytest.importorskip("torch")

import sc_noise2self as n2s  # noqa: E402
from sc_noise2self._transform import expected_transform, transformed  # noqa: E402
from sc_noise2self.denoisers import Autoencoder, ValueSweep  # noqa: E402

from .conftest import simulate_low_rank_poisson  # noqa: E402

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
SMALL = {"hidden": (64,), "batch_size": 64, "learning_rate": 3e-3}


@pytest.fixture(scope="module")
def sim():
    return simulate_low_rank_poisson(400, 120, 6, mean_depth=500.0, seed=0)


def _truth_errors(sim, model, grid):
    truth = expected_transform(sim.rates.ravel(), [1.0], "sqrt")[0].reshape(sim.rates.shape)
    model.fit(transformed(sim.counts, "sqrt", None), model.check_grid(grid, sim.counts.shape))
    return {v: float(np.mean((predict(slice(None)) - truth) ** 2)) for v, predict in model.sweep_values()}


@pytest.mark.parametrize("device", DEVICES)
def test_mcv_choice_is_near_the_oracle(sim, device):
    grid = n2s.tl.grid(bottleneck=[2, 6, 24], epochs=range(1, 16))
    model = Autoencoder(**SMALL, device=device, random_state=0)
    errors = _truth_errors(sim, model, grid)
    result = n2s.tl.calibrate(
        sim.counts,
        method=Autoencoder(**SMALL, device=device),
        grid=grid,
        transform="sqrt",
        target_sum=None,
        progress=False,
    )
    assert result.grid_names == ("bottleneck", "epochs")
    best = result.best
    assert errors[best] <= 1.10 * min(errors.values()), (best, min(errors, key=errors.get))


def test_early_stopping_picks_an_epoch_before_an_overfitting_runs_end(sim):
    # wide code and layer, no dropout, small batches: it learns the noise, and the held-out loss turns up
    model = Autoencoder(bottleneck=64, hidden=(512,), dropout=0.0, batch_size=16, learning_rate=3e-3, device="cpu")
    result = n2s.tl.calibrate(sim.counts, method=model, grid=range(1, 41), progress=False)
    assert result.best < 20
    assert result.loss_mean[-1] > result.loss_mean.min() * 1.02
    assert model.train_loss_[(64, 40)] < 0.5 * model.train_loss_[(64, result.best)]  # training loss kept falling


def test_same_seed_same_output_on_cpu(sim):
    outputs = []
    for _ in range(2):
        adata = ad.AnnData(sim.counts.copy())
        n2s.pp.denoise(adata, method=Autoencoder(**SMALL, device="cpu", random_state=3), grid=[1, 2, 3], progress=False)
        outputs.append((adata.layers["denoised"].tobytes(), adata.uns["denoised"]["loss"].tobytes()))
    assert outputs[0] == outputs[1]
    state = torch.random.get_rng_state()
    Autoencoder(**SMALL, device="cpu").fit(transformed(sim.counts, "sqrt", None), np.array([2])).predict(slice(0, 5), 2)
    assert torch.equal(state, torch.random.get_rng_state()), "training must not touch torch's global RNG"


def test_denoise_by_name_writes_layer_and_records_epochs(sim, tmp_path):
    adata = ad.AnnData(sim.counts.copy())
    n2s.pp.denoise(adata, method="autoencoder", grid=n2s.tl.grid(bottleneck=[4, 8], epochs=[1, 2]), progress=False)
    info = adata.uns["denoised"]
    assert info["method"] == "autoencoder" and info["grid_names"] == ["bottleneck", "epochs"]
    assert info["loss"].shape == (info["params"]["n_splits"], 4) and adata.layers["denoised"].shape == adata.shape
    adata.write_h5ad(tmp_path / "ae.h5ad")


def test_sweep_protocol_and_grid_checks(sim):
    model = Autoencoder(**SMALL, device="cpu")
    assert isinstance(model.fit(sparse.csr_matrix(sim.counts, dtype=float), np.array([1])), ValueSweep)
    np.testing.assert_array_equal(model.check_grid([[8, 2], [4, 3], [4, 1]], (10, 50)), [[4, 1], [4, 3], [8, 2]])
    with pytest.raises(ValueError, match=r"bottleneck values must lie in 1\.\.50"):
        model.check_grid([[80, 1]], (10, 50))
    with pytest.raises(ValueError, match="no J-invariant form"):
        n2s.tl.calibrate(sim.counts, method=model, calibration="genes", grid=[1], progress=False)
    with pytest.raises(ValueError, match="device must be"):
        Autoencoder(device="tpu").fit(sim.counts, np.array([1]))


def test_device_cuda_without_cuda_says_so(sim):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        Autoencoder(device="cuda").fit(sim.counts, np.array([1]))


def test_training_never_allocates_the_dense_matrix():
    rng = np.random.default_rng(0)
    n_cells, n_genes = 50_000, 2_000
    counts = sparse.random(n_cells, n_genes, density=0.005, format="csr", random_state=rng, dtype=np.float64)
    counts.data = np.ceil(counts.data * 3)
    X = transformed(counts, "sqrt", None)
    model = Autoencoder(bottleneck=8, hidden=(32,), batch_size=256, device="cpu")
    tracemalloc.start()
    try:
        model.fit(X, np.array([1]))
        for _, predict in model.sweep_values():
            for start in range(0, n_cells, 2_000):
                predict(slice(start, start + 2_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense = n_cells * n_genes * 4  # float32
    assert peak < dense / 10, f"peak {peak / 2**20:.0f} MiB vs dense {dense / 2**20:.0f} MiB"
