from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse, stats

from sc_noise2self._numerics.transform import (
    TRANSFORMS,
    build_conversion,
    cell_scales,
    expected_transform,
    transform_counts,
)


@pytest.mark.parametrize("transform", ["sqrt", "log1p", "none"])
def test_expected_transform_matches_direct_sum(transform):
    mu = np.array([0.0, 0.01, 0.5, 3.0, 40.0, 900.0])
    scales = np.array([0.3, 1.0, 7.0])
    got = expected_transform(mu, scales, transform)
    k = np.arange(5000)
    for i, s in enumerate(scales):
        want = [np.sum(stats.poisson.pmf(k, m) * TRANSFORMS[transform](s * k)) for m in mu]
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("transform", ["sqrt", "log1p", "none"])
def test_large_rates_integrate_to_the_direct_sum(transform):
    """Above rate 400 the sum over counts becomes a trapezoid rule on a window: the two agree to rounding."""
    mu = np.array([399.0, 401.0, 2_345.6, 1e5, 3e7])
    scales = np.array([1e-3, 1.0, 37.0])
    got = expected_transform(mu, scales, transform)
    for j, m in enumerate(mu):
        k = np.arange(max(0, int(m - 15 * np.sqrt(m))), int(m + 15 * np.sqrt(m)) + 30)
        pmf = stats.poisson.pmf(k, m)
        want = (pmf / pmf.sum()) @ TRANSFORMS[transform](np.outer(k, scales))
        np.testing.assert_allclose(got[:, j], want, rtol=1e-12)


def test_depth_conversion_cost_does_not_grow_with_the_largest_count():
    import time
    import tracemalloc

    for max_rate in (1e3, 1e9, 1e15):
        tracemalloc.start()
        start = time.process_time()  # this process's CPU time: a busy machine does not inflate it
        conversion = build_conversion(
            "log1p",
            fraction=1e-3,
            train_scales=np.geomspace(1e-2, 1e2, 50),
            normalized=True,
            max_rate=max_rate,
            loss="mse",
        )
        seconds = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert np.isfinite(conversion.table).all()
        assert peak < 1.5 * 2**30 and seconds < 30, (max_rate, peak, seconds)


def test_transform_counts_keeps_sparsity_and_scales_rows():
    X = sparse.csr_matrix(np.array([[0, 4], [9, 0]]))
    out = transform_counts(X, "sqrt", np.array([1.0, 4.0]))
    np.testing.assert_allclose(out.toarray(), [[0, 2], [6, 0]])
    assert out.nnz == 2


@pytest.mark.parametrize("transform", ["sqrt", "log1p", "none"])
@pytest.mark.parametrize("target_sum", [None, 1e3], ids=["raw", "normalised"])
def test_converted_truth_is_unbiased_for_the_held_out_half(transform, target_sum):
    """Predicting E[T(s'x')] exactly and converting gives E[T(s''x'')] of the held-out half."""
    rng = np.random.default_rng(0)
    p, n_draws = 0.7, 40_000
    lam = np.array([0.05, 0.3, 1.0, 2.5, 8.0, 30.0, 150.0])
    totals = np.array([500.0, 5000.0])  # two cells of different depth
    train_scales = cell_scales(totals, target_sum, p)
    test_scales = cell_scales(totals, target_sum, 1 - p)
    conv = build_conversion(
        transform, fraction=p, train_scales=train_scales, normalized=target_sum is not None, max_rate=400.0, loss="mse"
    )
    pred = np.stack([expected_transform(p * lam, [s], transform)[0] for s in train_scales])
    converted = conv(pred, train_scales)

    # Monte Carlo: Poisson counts of each cell, split binomially, held-out half transformed.
    x = rng.poisson(lam, size=(n_draws, lam.size))
    held_out = x - rng.binomial(x, p)
    func = TRANSFORMS[transform]
    for c, s_test in enumerate(test_scales):
        sample = func(s_test * held_out)
        mean, sem = sample.mean(axis=0), sample.std(axis=0) / np.sqrt(n_draws)
        assert np.all(np.abs(converted[c] - mean) < 4 * sem + 2e-4 * np.abs(mean)), (converted[c], mean, sem)
        if transform != "none":
            # Plain rescaling, exact only for a linear transform, is biased far beyond the sampling error.
            naive = pred[c] * _naive_factor(transform, (1 - p) / p, normalised=target_sum is not None)
            assert np.max(np.abs(naive - mean) / sem) > 20


def _naive_factor(transform: str, ratio: float, *, normalised: bool) -> float:
    if normalised:  # both halves have the same expected normalised counts
        return 1.0
    return np.sqrt(ratio) if transform == "sqrt" else ratio


def test_poisson_table_returns_held_out_rates():
    p = 0.9
    conv = build_conversion(
        "sqrt", fraction=p, train_scales=np.ones(1), normalized=False, max_rate=200.0, loss="poisson"
    )
    lam = np.array([0.0, 0.2, 1.0, 10.0, 100.0])
    pred = expected_transform(p * lam, [1.0], "sqrt")
    np.testing.assert_allclose(conv(pred, np.ones(1)), [(1 - p) * lam], rtol=2e-3, atol=2e-4)


def test_negative_predictions_convert_to_zero():
    conv = build_conversion("log1p", fraction=0.5, train_scales=np.ones(1), normalized=False, max_rate=10.0, loss="mse")
    np.testing.assert_array_equal(conv(np.array([[-3.0, 0.0]]), np.ones(1)), [[0.0, 0.0]])


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["sqrt", "log1p"]),
    st.floats(0.1, 0.95),
    st.lists(st.floats(0.0, 300.0), min_size=1, max_size=8),
    st.floats(0.01, 100.0),
)
def test_property_conversion_round_trips_expected_values(transform, p, lam, scale):
    """For any rate and scale, the converted expected train value is the expected test value."""
    lam = np.asarray(lam)
    scales = np.array([scale, scale * 3.0])
    conv = build_conversion(transform, fraction=p, train_scales=scales, normalized=True, max_rate=400.0, loss="mse")
    ratio = (1 - p) / p
    for s in scales:
        pred = expected_transform(p * lam, [s], transform)
        want = expected_transform((1 - p) * lam, [s / ratio], transform)
        got = conv(pred, np.array([s]))
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("transform", ["sqrt", "log1p", "none"])
@pytest.mark.parametrize("dispersion", [1.5, 15.0])
def test_negative_binomial_expectation_matches_direct_sum(transform, dispersion):
    """E[T(s X)] for X ~ NB with mean μ and variance φ μ, against scipy's pmf summed far into the tail."""
    mu = np.array([1e-4, 0.3, 3.0, 50.0, 400.0, 2500.0])
    scales = np.array([0.5, 3.0])
    got = expected_transform(mu, scales, transform, dispersion)
    for i, m in enumerate(mu):
        k = np.arange(int(m + 40 * np.sqrt(dispersion * m) + 200 * dispersion))
        pmf = stats.nbinom.pmf(k, m / (dispersion - 1), 1 / dispersion)
        want = [pmf @ TRANSFORMS[transform](s * k) for s in scales]
        np.testing.assert_allclose(got[:, i], want, rtol=1e-10, atol=1e-14)
    assert np.array_equal(expected_transform(np.zeros(1), scales, transform, dispersion), np.zeros((2, 1)))


@pytest.mark.parametrize("transform", ["sqrt", "log1p"])
def test_negative_binomial_conversion_is_unbiased_for_beta_binomial_halves(transform):
    """NB counts split beta-binomially: converting E[T(s' x')] gives E[T(s'' x'')] of the held-out half."""
    from sc_noise2self._numerics.split import beta_binomial_split, split_seed

    rng = np.random.default_rng(1)
    p, phi, n_draws = 0.8, 6.0, 40_000
    lam = np.array([0.3, 2.0, 10.0, 60.0])
    totals = np.array([800.0])
    train_scales, test_scales = cell_scales(totals, 1e3, p), cell_scales(totals, 1e3, 1 - p)
    conv = build_conversion(
        transform, fraction=p, train_scales=train_scales, normalized=True, max_rate=400.0, loss="mse", dispersion=phi
    )
    pred = expected_transform(p * lam, train_scales, transform, phi)
    converted = conv(pred, train_scales)[0]
    size = np.broadcast_to(lam / (phi - 1), (n_draws, lam.size))
    X = sparse.csr_matrix(rng.negative_binomial(size, 1 / phi))
    _, held_out = beta_binomial_split(X, p, split_seed(0, 0, 0), size[X.nonzero()])
    sample = TRANSFORMS[transform](test_scales[0] * held_out.toarray())
    mean, sem = sample.mean(axis=0), sample.std(axis=0) / np.sqrt(n_draws)
    assert np.all(np.abs(converted - mean) < 4 * sem + 2e-4 * np.abs(mean)), (converted, mean, sem)
    # The Poisson table, which ignores the dispersion, is off by far more than the sampling error.
    poisson = build_conversion(
        transform, fraction=p, train_scales=train_scales, normalized=True, max_rate=400.0, loss="mse"
    )(pred, train_scales)[0]
    assert np.max(np.abs(poisson - mean) / sem) > 10


@pytest.mark.parametrize("transform", ["sqrt", "log1p", "none"])
def test_tables_pickle_as_their_recipe_and_rebuild_to_the_same_bytes(transform):
    """Dask sends the tables to every worker: megabytes as arrays, a few hundred bytes as recipes."""
    import pickle

    from sc_noise2self._numerics import transform as _transform

    scales = np.geomspace(0.5, 40.0, 300)
    tables = [
        _transform.build_conversion(
            transform, fraction=0.9, train_scales=scales, normalized=True, max_rate=3e3, loss="mse"
        ),
        _transform.output_depth(transform, fraction=0.9, scales=scales, normalized=True, max_rate=3e3),
    ]
    for table in tables:
        data = pickle.dumps(table)
        assert len(data) < 2_000 < sum(np.asarray(a).nbytes for a in table[:-1])
        _transform._build_once.cache_clear()  # rebuilt here, as in a fresh worker
        back = pickle.loads(data)
        assert type(back) is type(table) and back.inv_step == table.inv_step
        for a, b in zip(back[:-1], table[:-1], strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
