from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from sc_noise2self._numerics.loss import POISSON_FLOOR, held_out_target, score_block
from sc_noise2self._numerics.transform import TRANSFORMS, build_conversion, cell_scales


@pytest.mark.parametrize("transform", ["sqrt", "log1p", "none"])
@pytest.mark.parametrize("loss", ["mse", "poisson"])
@pytest.mark.parametrize("target_sum", [None, 100.0], ids=["raw", "normalised"])
@pytest.mark.parametrize("reused", [False, True], ids=["sparse-target", "dense-target"])
def test_kernel_matches_numpy_reference(transform, loss, target_sum, reused):
    rng = np.random.default_rng(0)
    counts = sparse.csr_matrix(rng.poisson(rng.gamma(0.5, 2.0, size=(30, 25))))
    counts = counts[np.asarray(counts.sum(axis=1)).ravel() > 0]
    p = 0.8
    totals = np.asarray(counts.sum(axis=1)).ravel().astype(float)
    train_s, test_s = cell_scales(totals, target_sum, p), cell_scales(totals, target_sum, 1 - p)
    conv = build_conversion(
        transform, fraction=p, train_scales=train_s, normalized=target_sum is not None, max_rate=50.0, loss=loss
    )
    pred = rng.normal(1.0, 1.0, size=counts.shape)  # includes negative predictions
    shuffled = counts.copy()  # the same matrix with each row's entries out of order
    for c in range(shuffled.shape[0]):
        span = slice(shuffled.indptr[c], shuffled.indptr[c + 1])
        order = rng.permutation(span.stop - span.start)
        shuffled.indices[span], shuffled.data[span] = shuffled.indices[span][order], shuffled.data[span][order]
    shuffled.has_sorted_indices = False
    target = held_out_target(shuffled, test_s, transform=transform, loss=loss, reused=reused)
    got = score_block(pred, target, conversion=conv, train_scales=train_s, loss=loss)
    value = conv(pred, train_s)
    y = counts.toarray().astype(float)
    if loss == "mse":
        want = ((value - TRANSFORMS[transform](test_s[:, None] * y)) ** 2).sum(axis=1)
    else:
        rate = np.maximum(value, POISSON_FLOOR)
        want = (rate - y * np.log(rate)).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_poisson_loss_is_minimised_by_the_true_rate():
    """Prediction first: mean(ρ - y log ρ) is smallest at ρ = E[y] (a swapped loss would not be)."""
    rng = np.random.default_rng(1)
    y = sparse.csr_matrix(rng.poisson(3.0, size=(200, 50)))
    conv = build_conversion(
        "none", fraction=0.5, train_scales=np.ones(1), normalized=False, max_rate=40.0, loss="poisson"
    )
    ones = np.ones(200)
    losses = {
        rate: score_block(
            np.full(y.shape, rate),
            held_out_target(y, ones, transform="none", loss="poisson"),
            conversion=conv,
            train_scales=ones,
            loss="poisson",
        ).sum()
        for rate in (2.0, 3.0, 4.0)
    }
    assert losses[3.0] < losses[2.0] and losses[3.0] < losses[4.0]
