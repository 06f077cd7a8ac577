from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse, stats

from sc_noise2self import pp
from sc_noise2self._numerics.split import beta_binomial_split, binomial_split, multinomial_folds, split_seed

from ._helpers import ARRAY_TYPES, DTYPES, as_type, dense


@pytest.mark.parametrize("array_type", ARRAY_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_halves_add_up_and_keep_type(small_counts, array_type, dtype):
    X = as_type(small_counts, array_type, dtype)
    (split,) = pp.split_counts(X, split_fraction=0.7, random_state=3)
    assert type(split.train) is type(X)
    assert split.train.dtype == dtype
    np.testing.assert_array_equal(dense(split.train) + dense(split.test), dense(X))
    assert (dense(split.train) >= 0).all() and (dense(split.test) >= 0).all()
    # sparsity pattern of each half lies within the input's
    assert not (dense(split.train)[dense(X) == 0]).any()
    assert not (dense(split.test)[dense(X) == 0]).any()


def test_same_seed_same_bytes_across_array_types(small_counts):
    reference = pp.split_counts(small_counts, random_state=11, n_splits=2)
    for array_type in (np.asarray, sparse.csc_matrix, sparse.csr_array):
        for dtype in (np.int64, np.float32):
            other = pp.split_counts(as_type(small_counts, array_type, dtype), random_state=11, n_splits=2)
            for a, b in zip(reference, other, strict=True):
                np.testing.assert_array_equal(dense(a.train), dense(b.train))
    again = pp.split_counts(small_counts, random_state=11, n_splits=2)
    for a, b in zip(reference, again, strict=True):
        assert a.train.data.tobytes() == b.train.data.tobytes()
        assert a.test.indices.tobytes() == b.test.indices.tobytes()
    other_seed = pp.split_counts(small_counts, random_state=12)
    assert (dense(other_seed[0].train) != dense(reference[0].train)).any()


def test_split_i_does_not_depend_on_n_splits(small_counts):
    one = pp.split_counts(small_counts, n_splits=1, random_state=5)
    three = pp.split_counts(small_counts, n_splits=3, random_state=5)
    np.testing.assert_array_equal(one[0].train.toarray(), three[0].train.toarray())
    assert (three[1].train.toarray() != three[0].train.toarray()).any()


def test_binomial_moments_and_independence_on_poisson_data():
    rng = np.random.default_rng(0)
    lam = rng.gamma(1.0, 3.0, size=(400, 50))
    X = sparse.csr_matrix(rng.poisson(lam))
    p = 0.8
    (split,) = pp.split_counts(X, split_fraction=p, random_state=1)
    train, test = split.train.toarray().astype(float), split.test.toarray().astype(float)
    # E[x'] = p x, checked over ~ 60k molecules
    assert train.sum() / X.sum() == pytest.approx(p, abs=0.01)
    # x' and x'' of a Poisson variable are independent: no correlation once λ is removed
    resid_train, resid_test = train - p * lam, test - (1 - p) * lam
    corr = np.corrcoef(resid_train.ravel(), resid_test.ravel())[0, 1]
    assert abs(corr) < 0.02
    # whereas thinning a fixed count makes the halves anti-correlated given x
    resid_given_x = train - p * X.toarray()
    assert np.corrcoef(resid_given_x.ravel(), (test - (1 - p) * X.toarray()).ravel())[0, 1] < -0.9


def test_multinomial_folds_partition_the_molecules(small_counts):
    folds = pp.split_counts(small_counts, scheme="multinomial", n_splits=4, random_state=2)
    assert len(folds) == 4
    total = sum(f.test.toarray() for f in folds)
    np.testing.assert_array_equal(total, small_counts.toarray())
    for fold in folds:
        assert fold.fraction == pytest.approx(0.75)
        np.testing.assert_array_equal(fold.train.toarray() + fold.test.toarray(), small_counts.toarray())
    shares = np.array([f.test.sum() for f in folds]) / small_counts.sum()
    np.testing.assert_allclose(shares, 0.25, atol=0.02)


def test_split_counts_on_anndata_writes_layers(small_counts):
    import anndata as ad

    adata = ad.AnnData(small_counts.astype(np.float32))
    pp.split_counts(adata, n_splits=2, key_added="mcv")
    assert set(adata.layers) == {"mcv_train_0", "mcv_test_0", "mcv_train_1", "mcv_test_1"}
    np.testing.assert_array_equal(
        (adata.layers["mcv_train_1"] + adata.layers["mcv_test_1"]).toarray(), adata.X.toarray()
    )
    copy = pp.split_counts(adata, copy=True)
    assert "split_train" in copy.layers and "split_train" not in adata.layers


@pytest.mark.parametrize(
    ("values", "match"),
    [
        pytest.param([[1.5, 0], [0, 2]], "non-integer", id="log-normalised"),
        pytest.param([[-1, 0], [0, 2]], "negative", id="negative"),
        pytest.param([[np.nan, 1], [0, 2]], "NaN", id="nan"),
    ],
)
def test_bad_counts_raise(values, match):
    with pytest.raises(ValueError, match=match):
        pp.split_counts(np.array(values, dtype=float))


def test_empty_cells_and_genes_split_fine():
    (split,) = pp.split_counts(np.array([[0, 0, 0], [0, 5, 3]]), random_state=0)
    assert split.train[0].sum() == 0 and (split.train + split.test)[1].tolist() == [0, 5, 3]


def test_float16_is_refused(small_counts):
    with pytest.raises(ValueError, match="float16"):
        pp.split_counts(small_counts.astype(np.float16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split_fraction": 1.0}, r"split_fraction must be a finite number in \(0, 1\)"),
        ({"n_splits": 0}, "positive integer"),
        ({"scheme": "multinomial", "n_splits": 3, "split_fraction": 0.5}, "leave split_fraction unset"),
        ({"scheme": "multinomial", "n_splits": 1}, "n_splits >= 2"),
        ({"scheme": "other"}, "scheme must be"),
        ({"random_state": -1}, "random_state"),
    ],
)
def test_bad_arguments_raise(small_counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pp.split_counts(small_counts, **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 30),
    st.floats(0.05, 0.95),
    st.integers(0, 2**32 - 1),
    st.floats(0.05, 0.9),
)
def test_property_split_is_exact_and_within_pattern(n_cells, n_genes, p, seed, density):
    rng = np.random.default_rng(seed)
    X = sparse.random(
        n_cells, n_genes, density=density, format="csr", random_state=rng, data_rvs=lambda k: rng.integers(1, 50, k)
    )
    train, test = binomial_split(X, p, seed)
    np.testing.assert_array_equal((train + test).toarray(), X.toarray())
    assert set(zip(*train.nonzero(), strict=True)) <= set(zip(*X.nonzero(), strict=True))
    assert train.has_sorted_indices and test.has_sorted_indices
    assert train.dtype == test.dtype == X.dtype and np.all(train.data != 0) and np.all(test.data != 0)


@pytest.mark.parametrize("n", [1, 4, 30, 700, 5000])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_entry_is_one_exact_binomial_draw(n, p):
    """Every entry's training count follows Bin(n, p): its pmf (small n), mean and variance."""
    X = sparse.csr_matrix(np.full((4000, 25), n))
    train, _ = binomial_split(X, p, split_seed(7, 0, 0))
    draws = train.toarray().ravel().astype(np.int64)
    se = np.sqrt(n * p * (1 - p) / draws.size)
    assert abs(draws.mean() - n * p) < 4 * se
    assert draws.var() / (n * p * (1 - p)) == pytest.approx(1.0, abs=0.03)
    if n <= 30:
        observed = np.bincount(draws, minlength=n + 1)
        expected = stats.binom.pmf(np.arange(n + 1), n, p) * draws.size
        keep = expected > 5
        chi2 = (((observed - expected) ** 2)[keep] / expected[keep]).sum()
        assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3


def test_blocks_of_rows_split_alone_equal_the_whole_split(small_counts):
    """Counter-based draws: splitting rows a..b with row_offset=a gives those rows of the whole split."""
    X = sparse.csr_matrix(small_counts)
    seed = split_seed(3, 0, 0)
    whole_train, whole_test = binomial_split(X, 0.8, seed)
    for size in (1, 7, X.shape[0]):
        parts = [binomial_split(X[a : a + size], 0.8, seed, row_offset=a) for a in range(0, X.shape[0], size)]
        assert (sparse.vstack([t for t, _ in parts]) != whole_train).nnz == 0
        assert (sparse.vstack([t for _, t in parts]) != whole_test).nnz == 0
    seeds = [split_seed(3, 1, j) for j in range(2)]
    folds = multinomial_folds(X, 3, seeds)
    halves = [multinomial_folds(X[a : a + 5], 3, seeds, row_offset=a) for a in range(0, X.shape[0], 5)]
    for j, fold in enumerate(folds):
        assert (sparse.vstack([h[j] for h in halves]) != fold).nnz == 0


# -- negative-binomial (beta-binomial / Dirichlet-multinomial) splitting ------------------------------------------


def _nb_counts(rng: np.random.Generator, size: np.ndarray, keep: float) -> np.ndarray:
    """``NB(size, keep)`` counts (numpy's convention: failures before ``size`` successes of chance ``keep``)."""
    return rng.negative_binomial(size, keep)


def _entry_sizes(X: sparse.csr_matrix, size: np.ndarray) -> np.ndarray:
    return size[X.nonzero()] if size.ndim == 2 else np.full(X.nnz, float(size))


@pytest.mark.parametrize("p", [0.5, 0.9])
@pytest.mark.parametrize("per_entry", [False, True], ids=["size-per-gene", "size-per-entry"])
def test_beta_binomial_halves_of_nb_counts_are_independent_nb(p, per_entry):
    """Data thinning: X ~ NB(r, π) gives halves NB(p r, π) and NB((1 - p) r, π), uncorrelated."""
    rng = np.random.default_rng(0)
    keep = 0.2
    # per entry: sizes ∝ the mean (linear variance φ = 1 / keep), as amplified reads
    size = rng.uniform(0.05, 4.0, size=(40_000, 3)) if per_entry else np.array(3.0)
    X = sparse.csr_matrix(_nb_counts(rng, np.broadcast_to(size, (40_000, 3)), keep))
    train, test = beta_binomial_split(X, p, split_seed(1, 0, 0), _entry_sizes(X, size))
    assert (train + test != X).nnz == 0
    a, b = train.toarray().astype(float), test.toarray().astype(float)
    mean = np.broadcast_to(size, a.shape) * (1 - keep) / keep
    for j in range(3):  # around each entry's own means, as the sizes (and so the means) differ per entry
        assert abs(np.corrcoef(a[:, j] - p * mean[:, j], b[:, j] - (1 - p) * mean[:, j])[0, 1]) < 0.02
        assert a[:, j].mean() == pytest.approx(p * mean[:, j].mean(), rel=0.03)
    if not per_entry:  # the training half is NB(p r, π): its variance too
        assert a.var() == pytest.approx(p * 3.0 * (1 - keep) / keep**2, rel=0.05)


def test_binomial_halves_of_nb_counts_are_dependent_as_predicted():
    """Cov(x', x'') = p (1 - p) (V - μ): what binomial thinning leaves between the halves of overdispersed counts."""
    rng = np.random.default_rng(1)
    X = sparse.csr_matrix(_nb_counts(rng, np.full((60_000, 2), 3.0), 0.2))
    train, test = binomial_split(X, 0.5, split_seed(2, 0, 0))
    x, a, b = X.toarray()[:, 0].astype(float), train.toarray()[:, 0], test.toarray()[:, 0]
    predicted = 0.25 * (x.var() - x.mean())
    assert np.cov(a, b)[0, 1] == pytest.approx(predicted, rel=0.08)
    assert np.corrcoef(a, b)[0, 1] > 0.3


def test_dirichlet_multinomial_folds_of_nb_counts_are_uncorrelated():
    rng = np.random.default_rng(2)
    X = sparse.csr_matrix(_nb_counts(rng, np.full((40_000, 2), 2.0), 0.25))
    seeds = [split_seed(3, 1, j) for j in range(3)]
    folds = multinomial_folds(X, 4, seeds, size=np.full(X.nnz, 2.0))
    assert (sum(folds) != X).nnz == 0
    dense_folds = [f.toarray()[:, 0].astype(float) for f in folds]
    for i in range(4):
        assert dense_folds[i].mean() == pytest.approx(X.toarray()[:, 0].mean() / 4, rel=0.04)
        for j in range(i):
            assert abs(np.corrcoef(dense_folds[i], dense_folds[j])[0, 1]) < 0.02


def test_beta_binomial_split_is_counter_based():
    """Same seed, same bytes; blocks of rows split alone (row_offset) equal the whole split."""
    rng = np.random.default_rng(3)
    X = sparse.csr_matrix(_nb_counts(rng, np.full((97, 40), 0.7), 0.3))
    size = rng.uniform(0.1, 5.0, X.nnz)
    seed = split_seed(4, 0, 0)
    whole_train, whole_test = beta_binomial_split(X, 0.8, seed, size)
    again, _ = beta_binomial_split(X, 0.8, seed, size)
    assert (again != whole_train).nnz == 0
    for step in (1, 13):
        parts = []
        for a in range(0, X.shape[0], step):
            block = X[a : a + step]
            sizes = size[X.indptr[a] : X.indptr[min(a + step, X.shape[0])]]
            parts.append(beta_binomial_split(block, 0.8, seed, sizes, row_offset=a))
        assert (sparse.vstack([t for t, _ in parts]) != whole_train).nnz == 0
        assert (sparse.vstack([t for _, t in parts]) != whole_test).nnz == 0


@pytest.mark.parametrize("size", [1e-12, 1e-3, 1e3, 1e12])
def test_beta_binomial_extreme_sizes(size):
    """Tiny sizes move an entry's counts together (one molecule); huge ones are binomial; never a NaN."""
    X = sparse.csr_matrix(np.full((3000, 4), 7))
    train, test = beta_binomial_split(X, 0.9, split_seed(5, 0, 0), np.full(X.nnz, size))
    a = train.toarray()
    assert (train + test != X).nnz == 0
    assert a.mean() == pytest.approx(0.9 * 7, rel=0.03)
    if size < 1e-2:
        assert np.isin(a, [0, 7]).mean() > 0.99
    if size > 1e11:
        assert a.var() == pytest.approx(7 * 0.9 * 0.1, rel=0.08)


def test_beta_binomial_entries_beyond_a_million_molecules():
    X = sparse.csr_matrix(np.array([[3_000_000, 5], [0, 2_000_001]]))
    train, test = beta_binomial_split(X, 0.5, split_seed(6, 0, 0), np.full(X.nnz, 50.0))
    assert (train + test != X).nnz == 0
    share = train.toarray()[0, 0] / 3_000_000
    assert 0.2 < share < 0.8  # Beta(25, 25): within 0.5 ± 0.3 always in practice


def test_split_counts_negative_binomial_on_reads_and_dask():
    from .conftest import read_dispersion, simulate_reads

    da = pytest.importorskip("dask.array")
    sim = simulate_reads(600, 200, mean_reads=4.0, law="logarithmic", seed=1)
    X = sim.counts
    (split,) = pp.split_counts(X, sampling="negative_binomial", random_state=2)
    assert 0.85 * read_dispersion(4.0, "logarithmic") < split.dispersion < 1.15 * read_dispersion(4.0, "logarithmic")
    assert (split.train + split.test != X).nnz == 0
    # The halves are uncorrelated around the truth (binomial thinning leaves them correlated).
    truth = sim.rates * 4.0
    cov = {}
    for name, (train, test) in {
        "nb": (split.train, split.test),
        "binomial": tuple(pp.split_counts(X, random_state=2)[0][:2]),
    }.items():
        cov[name] = np.mean((train.toarray() - 0.9 * truth) * (test.toarray() - 0.1 * truth)) / np.mean(0.09 * truth)
    assert abs(cov["nb"]) < 0.15 * cov["binomial"]
    assert cov["binomial"] > 0.5 * (read_dispersion(4.0, "logarithmic") - 1)  # p (1 - p) (φ - 1) μ, over p (1 - p) μ
    # any chunking of a dask array gives the same bytes, for both schemes
    for chunks in ((37, -1), (600, 50)):
        (lazy,) = pp.split_counts(da.from_array(X, chunks=chunks), sampling="negative_binomial", random_state=2)
        assert (lazy.train.compute() != split.train).nnz == 0
        folds = pp.split_counts(
            da.from_array(X, chunks=chunks), scheme="multinomial", n_splits=3, sampling="negative_binomial"
        )
        memory = pp.split_counts(X, scheme="multinomial", n_splits=3, sampling="negative_binomial")
        for got, want in zip(folds, memory, strict=True):
            assert (got.test.compute() != want.test).nnz == 0
            assert got.dispersion == want.dispersion > 1.5


def test_split_counts_negative_binomial_records_and_refuses():
    import anndata as ad

    from .conftest import simulate_reads

    adata = ad.AnnData(simulate_reads(seed=2).counts)
    pp.split_counts(adata, sampling="negative_binomial", dispersion=12.0)
    assert adata.uns["split"]["sampling"] == "negative_binomial"
    assert adata.uns["split"]["dispersion"] == 12.0
    with pytest.raises(ValueError, match="pass that too"):
        pp.split_counts(adata.X, dispersion=2.0)
    with pytest.raises(ValueError, match="too small for it"):
        pp.split_counts(np.ones((8, 5), dtype=int), sampling="negative_binomial")
    # dispersion 1 is binomial thinning itself
    (one,) = pp.split_counts(adata.X, sampling="negative_binomial", dispersion=1.0)
    (binomial,) = pp.split_counts(adata.X)
    assert (one.train != binomial.train).nnz == 0 and one.dispersion == 1.0
