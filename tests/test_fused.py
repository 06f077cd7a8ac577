"""Sweeps that predict and score a block at every grid value in one parallel region give the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from sc_noise2self import _calibrate, tl
from sc_noise2self.denoisers import PCA, KNNAverage

from .conftest import simulate_low_rank_poisson


@pytest.fixture(scope="module")
def counts():
    return simulate_low_rank_poisson(400, 120, 5, mean_depth=500.0, seed=4).counts


@pytest.mark.parametrize(
    ("method", "grid"),
    [
        pytest.param(PCA(), np.arange(1, 25), id="pca"),
        pytest.param(KNNAverage(n_pcs=6), np.array([2, 3, 7, 20]), id="knn"),
        pytest.param(KNNAverage(), tl.grid(n_neighbors=[2, 5, 9], n_pcs=[2, 4, 8]), id="knn 2-D"),
    ],
)
@pytest.mark.parametrize(("transform", "target_sum"), [("log1p", 1e4), ("sqrt", None)], ids=["log1p", "sqrt"])
def test_fused_scoring_equals_scoring_value_by_value(counts, monkeypatch, method, grid, transform, target_sum):
    settings = {"method": method, "grid": grid, "transform": transform, "target_sum": target_sum, "progress": False}
    fused = tl.calibrate(counts, n_splits=2, chunk_size=53, **settings)
    sweep_losses = _calibrate._sweep_losses

    def value_by_value(*args, **kwargs):
        return sweep_losses(*args, **{**kwargs, "scorer": None})

    monkeypatch.setattr(_calibrate, "_sweep_losses", value_by_value)
    plain = tl.calibrate(counts, n_splits=2, **settings)
    assert fused.loss.tobytes() == plain.loss.tobytes()
    assert fused.baseline.tobytes() == plain.baseline.tobytes()


def test_poisson_loss_keeps_the_value_by_value_path(counts):
    result = tl.calibrate(counts, grid=[1, 3, 5], loss="poisson", progress=False)
    assert np.isfinite(result.loss).all()
