"""ALRA: the rank-k reconstruction thresholded and rescaled gene by gene, its rank chosen by MCV."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import transformed
from sc_noise2self.denoisers import ALRA
from sc_noise2self.denoisers.alra import spectral_gap_rank

from ._helpers import fit, predict, predictions
from .conftest import simulate_low_rank_poisson


def _reference(values: np.ndarray, scores: np.ndarray, components: np.ndarray, k: int, quantile: float) -> np.ndarray:
    """ALRA on a dense matrix, step by step as its authors' R function reads, from the same SVD factors."""
    low_rank = scores[:, :k] @ components[:k]
    thresholds = np.abs(np.quantile(low_rank, quantile, axis=0))
    kept = np.where(low_rank <= thresholds, 0.0, low_rank)
    out = kept.copy()
    for g in range(values.shape[1]):
        nonzero, observed = kept[:, g] != 0, values[values[:, g] != 0, g]
        if nonzero.sum() > 1 and observed.size > 1 and kept[nonzero, g].std(ddof=1) > 0:
            sigma_1, sigma_2 = kept[nonzero, g].std(ddof=1), observed.std(ddof=1)
            out[nonzero, g] = (kept[nonzero, g] - kept[nonzero, g].mean()) * sigma_2 / sigma_1 + observed.mean()
    out[kept == 0] = 0
    out[out < 0] = 0
    restore = (values > 0) & (out == 0)
    out[restore] = values[restore]
    return out


@pytest.fixture(scope="module")
def sim():
    return simulate_low_rank_poisson(700, 150, 6, mean_depth=800.0, seed=3)


def test_output_is_alra_as_its_authors_define_it(sim):
    values = transformed(sim.counts, "log1p", 1e4)
    model, data = fit(ALRA(), values, [3, 8])
    for k in (3, 8):
        reference = _reference(values.toarray(), model.scores_, model.components_, k, 0.001)
        np.testing.assert_allclose(predict(model, data, k), reference, rtol=1e-4, atol=1e-4)  # float32 output
    assert set(predictions(model, data)) == {3, 8}
    for k, pred in predictions(model, data, slice(100, 300)).items():  # the sweep's blocks, as the output's
        np.testing.assert_array_equal(pred, predict(model, data, k, slice(100, 300)))


def test_output_is_non_negative_keeps_exact_zeros_and_every_observed_value(sim):
    values = transformed(sim.counts, "log1p", 1e4)
    model, data = fit(ALRA(), values, [6])
    out = predict(model, data, 6)
    assert out.min() >= 0 and (out == 0).any()
    observed = values.toarray() > 0
    assert (out[observed] > 0).all()  # an observed value is never zeroed


def test_spectral_gap_rule():
    gaps_at = 12
    singular = np.r_[np.linspace(100, 60, gaps_at), np.linspace(10, 9, 100 - gaps_at)]
    singular += np.random.default_rng(0).normal(scale=1e-3, size=100)
    assert spectral_gap_rank(np.sort(singular)[::-1]) == gaps_at
    assert spectral_gap_rank(singular[:50]) is None  # fewer than 100 singular values: no rule


def test_mcv_chooses_the_rank_and_reports_alras_own(sim, tmp_path):
    adata = ad.AnnData(sim.counts.astype(np.float32))
    n2s.pp.denoise(adata, method="alra", grid=range(1, 31), progress=False)
    record = adata.uns["denoised"]
    assert record["method"] == "alra" and record["grid_names"] == ["k"]
    assert 1 <= record["best"] <= 30 and adata.layers["denoised"].min() >= 0
    rule = record["method_report"]["spectral_gap_rank"]
    assert rule.shape == (record["params"]["n_splits"],) and 1 <= rule[0] <= 100
    adata.write_h5ad(tmp_path / "alra.h5ad")
    assert ad.read_h5ad(tmp_path / "alra.h5ad").uns["denoised"]["method_report"]["spectral_gap_rank"].tolist() == (
        rule.tolist()
    )


@pytest.mark.parametrize("quantile", [0, 0.6, -0.1, "0.001", None])
def test_bad_quantile_is_refused_before_any_work(sim, quantile):
    adata = ad.AnnData(sim.counts.astype(np.float32))
    with pytest.raises(ValueError, match="quantile must be"):
        n2s.pp.denoise(adata, method=ALRA(quantile=quantile), progress=False)
    assert not adata.layers and not adata.uns
