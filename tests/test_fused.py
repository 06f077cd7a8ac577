"""Sweeps that predict and score a block at every grid value in one parallel region give the same losses.

The same bytes as scoring each value's prediction separately against the same (dense) targets,
in block order or in value order.
"""

from __future__ import annotations

import numpy as np
import pytest

from sc_noise2self import tl
from sc_noise2self.denoisers import PCA, Diffusion, KNNAverage

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
        pytest.param(Diffusion(n_comps=20), np.arange(6), id="diffusion"),
        pytest.param(Diffusion(n_comps=20), tl.grid(t=[0, 2, 3], n_neighbors=[4, 9]), id="diffusion 2-D"),
    ],
)
@pytest.mark.parametrize(("transform", "target_sum"), [("log1p", 1e4), ("sqrt", None)], ids=["log1p", "sqrt"])
def test_fused_scoring_equals_scoring_value_by_value(counts, monkeypatch, method, grid, transform, target_sum):
    settings = {"method": method, "grid": grid, "transform": transform, "target_sum": target_sum, "progress": False}
    fused = tl.calibrate(counts, n_splits=2, chunk_size=53, **settings)
    monkeypatch.setattr(type(method), "fuses", lambda self, kind: False)  # each value's prediction scored alone
    plain = tl.calibrate(counts, n_splits=2, **settings)
    assert fused.loss.tobytes() == plain.loss.tobytes()
    assert fused.baseline.tobytes() == plain.baseline.tobytes()


def test_diffusion_falls_back_to_value_order_when_the_scores_do_not_fit(counts, monkeypatch):
    from sc_noise2self.denoisers import diffusion

    small = tl.calibrate(counts, method=Diffusion(n_comps=20), grid=np.arange(4), progress=False)
    monkeypatch.setattr(diffusion, "default_max_dense_bytes", lambda: 1)
    orders = []
    values = Diffusion.values
    monkeypatch.setattr(Diffusion, "values", lambda self: orders.append(self.order) or values(self))
    big = tl.calibrate(counts, method=Diffusion(n_comps=20), grid=np.arange(4), progress=False)
    assert set(orders) == {"values"} and big.loss.tobytes() == small.loss.tobytes()
    assert big.baseline.tobytes() == small.baseline.tobytes()


def test_poisson_loss_keeps_the_value_by_value_path(counts):
    result = tl.calibrate(counts, grid=[1, 3, 5], loss="poisson", progress=False)
    assert np.isfinite(result.loss).all()
