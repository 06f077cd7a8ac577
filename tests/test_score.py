from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s


@pytest.fixture
def held_out():
    rng = np.random.default_rng(0)
    rates = rng.gamma(0.5, 4.0, size=(300, 80))
    return rates, sparse.csr_matrix(rng.poisson(rates))


def test_truth_scores_better_than_noise(held_out):
    rates, test = held_out
    noisy = np.random.default_rng(1).poisson(rates)
    truth = n2s.tl.score_denoising(rates, test)
    raw = n2s.tl.score_denoising(noisy, test)
    assert truth["mse"] < raw["mse"] and truth["poisson"] < raw["poisson"]


def test_matches_a_direct_computation(held_out):
    rates, test = held_out
    y = test.toarray().astype(float)
    norm = lambda m: np.log1p(m / m.sum(axis=1, keepdims=True) * 1e4)  # noqa: E731
    rate = np.maximum(rates * y.sum(axis=1, keepdims=True) / rates.sum(axis=1, keepdims=True), 1e-6)
    got = n2s.tl.score_denoising(np.sqrt(rates), test, scale="sqrt", chunk_size=7)
    assert got["mse"] == pytest.approx(np.mean((norm(rates) - norm(y)) ** 2), rel=1e-10)
    assert got["poisson"] == pytest.approx(np.mean(rate - y * np.log(rate)), rel=1e-10)


def test_poisson_is_prediction_first(held_out):
    """A swapped loss (target first) would reward predicting zeros; ours does not."""
    rates, test = held_out
    assert n2s.tl.score_denoising(rates, test)["poisson"] < n2s.tl.score_denoising(rates**3, test)["poisson"]


def test_bad_arguments(held_out):
    rates, test = held_out
    with pytest.raises(ValueError, match="same shape"):
        n2s.tl.score_denoising(rates[:10], test)
    with pytest.raises(ValueError, match="scale must be"):
        n2s.tl.score_denoising(rates, test, scale="log")
    with pytest.raises(ValueError, match="non-integer"):
        n2s.tl.score_denoising(rates, sparse.csr_matrix(rates))
