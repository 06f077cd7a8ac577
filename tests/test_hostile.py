"""A hostile user: odd keys, odd values, odd types, interruptions. Clear errors, untouched data, or correct work."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from sc_noise2self import pp, tl
from sc_noise2self.denoisers import PCA, Diffusion, Predicted

from .conftest import simulate_low_rank_poisson

GRID = [1, 2, 4]


@pytest.fixture(scope="module")
def counts() -> sparse.csr_matrix:
    return simulate_low_rank_poisson(150, 40, 3, mean_depth=300.0, seed=3).counts


@pytest.fixture
def adata(counts) -> ad.AnnData:
    a = ad.AnnData(counts.astype(np.float32))
    a.layers["counts"] = counts.copy()
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    a.obs["group"] = pd.Categorical(np.arange(a.n_obs) % 3)
    a.uns["user"] = {"note": "mine"}
    return a


def _value(x):
    if hasattr(x, "compute"):
        x = x.compute()
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    """Every part of two AnnData objects is equal (values, names, order of columns)."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(_value(a.X), _value(b.X))
    for slot in ("layers", "obsm", "varm", "obsp", "varp"):
        ma, mb = getattr(a, slot), getattr(b, slot)
        assert sorted(ma) == sorted(mb), slot
        for key in ma:
            np.testing.assert_array_equal(_value(ma[key]), _value(mb[key]), err_msg=f"{slot}[{key!r}]")
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    _assert_same_tree(dict(a.uns), dict(b.uns))


def _assert_same_tree(x, y) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and sorted(x) == sorted(y)
        for key in x:
            _assert_same_tree(x[key], y[key])
    else:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- writes: never over the user's data ---------------------------------------------------------


def test_the_layer_being_read_is_never_written_over(adata):
    before = adata.copy()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="the layer being read"):
            pp.denoise(adata, layer="counts", key_added="counts", overwrite=overwrite, progress=False)
    assert_same(adata, before)
    pp.split_counts(adata)
    before = adata.copy()
    with pytest.raises(ValueError, match="the layer being read"):  # splitting a part again into its own name
        pp.split_counts(adata, layer="split_train", overwrite=True, random_state=1)
    assert_same(adata, before)


@pytest.mark.parametrize(
    ("setup", "kwargs", "where"),
    [
        pytest.param(lambda a: a.layers.__setitem__("mine", a.X.copy()), {}, r"adata.layers\['mine'\]", id="layer"),
        pytest.param(lambda a: a.uns.__setitem__("mine", {"x": 1}), {}, r"adata.uns\['mine'\]", id="uns"),
        pytest.param(
            lambda a: a.obsm.__setitem__("mine_scores", np.ones((a.n_obs, 2))),
            {"max_dense_bytes": 1},
            r"adata.obsm\['mine_scores'\]",
            id="obsm-factored",
        ),
        pytest.param(
            lambda a: a.var.__setitem__("mine_offset", 1.0),
            {"max_dense_bytes": 1},
            r"adata.var\['mine_offset'\]",
            id="var-factored",
        ),
    ],
)
def test_what_the_package_did_not_write_is_refused_unless_overwrite(adata, setup, kwargs, where):
    setup(adata)
    before = adata.copy()
    with pytest.raises(ValueError, match=rf"{where} .*overwrite=True"):
        pp.denoise(adata, key_added="mine", grid=GRID, progress=False, **kwargs)
    assert_same(adata, before)
    pp.denoise(adata, key_added="mine", grid=GRID, progress=False, overwrite=True, **kwargs)
    assert adata.uns["mine"]["method"] == "pca"


def test_rerunning_replaces_all_of_the_package_own_output(adata):
    X = adata.X.tolil()
    X[7] = 0
    adata.X = sparse.csr_matrix(X)
    pp.denoise(adata, grid=GRID, empty="drop", max_dense_bytes=1, progress=False)  # factored, with a kept column
    assert {"denoised_kept"} <= set(adata.obs) and "denoised_scores" in adata.obsm
    adata.X = adata.layers["counts"].astype(np.float32)  # no empty cell now, dense output
    pp.denoise(adata, grid=GRID, progress=False)
    assert "denoised_kept" not in adata.obs and "denoised_scores" not in adata.obsm
    assert "denoised_loadings" not in adata.varm and "denoised_offset" not in adata.var
    assert adata.uns["denoised"]["outputs"] == {"layers": ["denoised"]}
    np.testing.assert_array_equal(tl.denoised_genes(adata, genes=["g3"]), adata.layers["denoised"][:, [3]])
    assert tl.denoised_genes(adata, genes=["g3"])[7].any()  # the cell dropped earlier has values now
    assert list(adata.obs.columns) == ["group"] and adata.uns["user"] == {"note": "mine"}


def test_a_record_that_only_claims_the_users_entries_takes_nothing(adata):
    """A ``uns`` entry shaped like the package's record, listing the user's own entries, claims nothing."""
    adata.obsm["X_umap"] = np.ones((adata.n_obs, 2))
    adata.uns["denoised"] = {
        "version": "0",
        "function": "denoise",
        "outputs": {"obsm": ["X_umap"], "layers": ["counts"]},
    }
    before = adata.copy()
    with pytest.raises(ValueError, match=r"adata.uns\['denoised'\] exists and was not written by"):
        pp.denoise(adata, grid=GRID, progress=False)
    assert_same(adata, before)
    pp.denoise(adata, grid=GRID, progress=False, key_added="mine")  # another key: the user's entries stay
    np.testing.assert_array_equal(adata.obsm["X_umap"], before.obsm["X_umap"])
    np.testing.assert_array_equal(_value(adata.layers["counts"]), _value(before.layers["counts"]))
    _assert_same_tree(dict(adata.uns["denoised"]), dict(before.uns["denoised"]))


def test_the_package_own_output_changed_since_is_not_replaced_without_asking(adata):
    pp.denoise(adata, grid=GRID, progress=False)
    adata.layers["denoised"] = adata.layers["denoised"] * 2  # the user's own edit
    with pytest.raises(ValueError, match=r"adata.layers\['denoised'\] exists and is not what .* changed since"):
        pp.denoise(adata, grid=GRID, progress=False)
    subset = adata[::2].copy()  # a subset keeps the record but not the rows written
    with pytest.raises(ValueError, match="changed since"):
        pp.denoise(subset, grid=GRID, progress=False)
    pp.denoise(subset, grid=GRID, progress=False, overwrite=True)
    pp.denoise(subset, grid=GRID, progress=False, random_state=3)  # now the record stands as written again
    assert subset.uns["denoised"]["params"]["random_state"] == 3


@pytest.mark.parametrize("key", ["", "a/b", ".", 5, None, ("a",)])
def test_keys_that_h5ad_cannot_hold_are_refused(adata, key):
    before = adata.copy()
    with pytest.raises(ValueError, match="key_added must be a non-empty string"):
        pp.denoise(adata, key_added=key, grid=GRID, progress=False)
    with pytest.raises(ValueError, match="key_added must be a non-empty string"):
        pp.split_counts(adata, key_added=key)
    assert_same(adata, before)


@pytest.mark.parametrize("seed", [2**63, 2**64, np.uint64(2**64 - 1)])
def test_any_seed_survives_h5ad(adata, seed, tmp_path):
    pp.denoise(adata, grid=GRID, random_state=seed, progress=False)
    pp.split_counts(adata, random_state=seed)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["denoised"]["params"]["random_state"] == str(int(seed))
    assert back.uns["split"]["random_state"] == str(int(seed))


def test_split_counts_records_and_replaces_its_own_layers_only(adata):
    pp.split_counts(adata, n_splits=2, random_state=1)
    assert adata.uns["split"]["outputs"] == {
        "layers": ["split_test_0", "split_test_1", "split_train_0", "split_train_1"]
    }
    pp.split_counts(adata, random_state=2)  # one split now: the old suffixed layers go
    assert sorted(adata.layers) == ["counts", "split_test", "split_train"]
    adata.layers["mine_train"] = adata.X.copy()
    with pytest.raises(ValueError, match=r"adata.layers\['mine_train'\] exists"):
        pp.split_counts(adata, key_added="mine")
    with pytest.raises(ValueError, match=r"adata.uns\['denoised'\] exists and was not written by .*split_counts"):
        pp.denoise(adata, grid=GRID, progress=False)  # writes uns['denoised'] (its own)
        pp.split_counts(adata, key_added="denoised")


# -- all or nothing ------------------------------------------------------------------------------

STAGES = [
    pytest.param(stage, factored, id=f"{stage.rsplit('.', 1)[-1]}-{'factored' if factored else 'dense'}")
    for stage, modes in [
        ("sc_noise2self._engine.blocks.check_count_values", (False, True)),
        ("sc_noise2self._numerics.dispersion.binomial_split", (False, True)),
        ("sc_noise2self._engine.mcv.transform_counts", (False, True)),
        ("sc_noise2self.denoisers.pca.PCA.fit", (False, True)),
        ("sc_noise2self._engine.mcv.score_block", (False, True)),
        ("sc_noise2self._engine.mcv.row_scorer", (False, True)),  # the fused block scoring
        ("sc_noise2self._engine.refit.fit_at", (False, True)),
        ("sc_noise2self._engine.refit.check_finite_output", (False, True)),
        ("sc_noise2self._engine.refit._dense_output", (False,)),
        ("sc_noise2self._engine.refit.embed", (False,)),
        ("sc_noise2self._engine.refit._factored", (True,)),
        ("sc_noise2self._engine.refit.lazy_low_rank", (True,)),
        ("sc_noise2self._anndata.previous_outputs", (False, True)),
    ]
    for factored in modes
]


def _failing(exc: type[BaseException]):
    def fail(*args, **kwargs):
        raise exc("injected")

    return fail


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, MemoryError])
@pytest.mark.parametrize(("stage", "factored"), STAGES)
def test_an_exception_at_any_stage_leaves_adata_as_it_was(adata, monkeypatch, stage, exc, factored):
    pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=None if factored else 1)  # earlier output
    before = adata.copy()
    monkeypatch.setattr(stage, _failing(exc))
    with pytest.raises(exc, match="injected"):
        pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1 if factored else None, random_state=1)
    assert_same(adata, before)


@pytest.mark.parametrize(
    ("first", "fail_at"),
    [("dense", n) for n in range(1, 6)] + [("factored", n) for n in range(1, 3)],
)
def test_an_interrupted_write_is_undone(adata, monkeypatch, first, fail_at):
    """The writing itself interrupted after any number of entries: every entry is put back.

    Dense output replaced by factored output (five entries), or factored output replaced
    by dense output (its factors removed first, then two entries).
    """
    from sc_noise2self import _anndata

    pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1 if first == "factored" else None)
    before = adata.copy()
    assign, calls = _anndata._assign, []

    def flaky(*args):
        calls.append(args[1:3])
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return assign(*args)

    monkeypatch.setattr(_anndata, "_assign", flaky)
    with pytest.raises(KeyboardInterrupt):
        pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1 if first == "dense" else None, random_state=2)
    assert len(calls) == fail_at
    assert_same(adata, before)


def test_missing_dask_is_found_before_any_work(adata, monkeypatch):
    import builtins

    import scanpy  # noqa: F401  # imported first, as in any session: it looks for dask with find_spec

    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.startswith("dask"):
            raise ModuleNotFoundError(name, name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    monkeypatch.setattr("sc_noise2self.pp._denoise.calibrate", _failing(AssertionError))  # no calibration may start
    before = adata.copy()
    with pytest.raises(ImportError, match=r"needs dask, which is not installed"):
        pp.denoise(adata, grid=GRID, progress=False, max_dense_bytes=1)
    assert_same(adata, before)


@pytest.fixture
def without_torch(monkeypatch):
    """Imports of torch fail, as where it is not installed (scanpy imported first, as in any session)."""
    import builtins

    import scanpy  # noqa: F401  # it looks for dask with find_spec

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(name, name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)


@pytest.mark.parametrize("method", ["autoencoder", "instance"], ids=["by-name", "instance"])
def test_missing_torch_says_how_to_install_it(adata, without_torch, method):
    from sc_noise2self.denoisers import Autoencoder

    before = adata.copy()
    with pytest.raises(ImportError, match=r"needs torch, which is not installed: .*pip install '\.\[autoencoder\]'"):
        pp.denoise(adata, method=Autoencoder() if method == "instance" else method, progress=False)
    assert_same(adata, before)


@pytest.mark.parametrize("cls", [PCA, Diffusion], ids=["pca", "diffusion"])
def test_a_cuda_device_without_torch_is_refused_before_any_work(adata, monkeypatch, without_torch, cls):
    monkeypatch.setattr("sc_noise2self.pp._denoise.calibrate", _failing(AssertionError))  # no calibration may start
    before = adata.copy()
    with pytest.raises(ImportError, match=r"device='cuda' computes with torch, which is not installed.*device='cpu'"):
        pp.denoise(adata, method=cls(device="cuda"), progress=False)
    assert_same(adata, before)


def test_an_interrupted_sweep_past_the_default_grid_writes_nothing(monkeypatch):
    """The autoencoder sweeps on past its default grid; an interruption there leaves the AnnData as it was."""
    pytest.importorskip("torch")
    from sc_noise2self import _engine
    from sc_noise2self.denoisers import Autoencoder, autoencoder

    monkeypatch.setattr(autoencoder, "_DEFAULT_EPOCHS", 2)
    monkeypatch.setattr(Autoencoder, "default_grid", lambda self, shape: np.array([[2, 1], [2, 2]]))
    real, calls = _engine.run_mcv, []

    def interrupted_on_sweeping_on(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_engine, "run_mcv", interrupted_on_sweeping_on)
    adata = ad.AnnData(simulate_low_rank_poisson(300, 60, 4, mean_depth=500.0, seed=0).counts)
    adata.layers["denoised"] = adata.X.copy()  # the user's own layer of the same name
    before = adata.copy()
    model = Autoencoder(hidden=(16,), batch_size=64, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        pp.denoise(adata, method=model, progress=False, overwrite=True)
    assert len(calls) == 2  # the default grid's calibration, then the sweep on
    assert_same(adata, before)


# -- never a non-finite number -------------------------------------------------------------------


def test_a_diverging_autoencoder_is_refused(adata):
    pytest.importorskip("torch")
    from sc_noise2self.denoisers import Autoencoder

    before = adata.copy()
    # squared error: the count decoder's softmax keeps even a diverged network's rates finite
    model = Autoencoder(learning_rate=1e6, hidden=(16,), device="cpu", likelihood="normal")
    with pytest.raises(ValueError, match=r"not finite .*lower the autoencoder's learning_rate \(now 1e\+06\)"):
        pp.denoise(adata, method=model, grid=[1, 2, 3], progress=False)
    assert_same(adata, before)


@pytest.mark.parametrize("calibration", ["mcv", "genes"])
def test_a_non_finite_prediction_anywhere_is_refused(adata, monkeypatch, calibration):
    real = PCA.output

    def nan_output(self, value):
        def block(cells):
            out = real(self, value).block(cells)
            out[0, 0] = np.nan
            return out

        return Predicted(block)

    monkeypatch.setattr(PCA, "output", nan_output)  # the refit on all counts goes wrong
    before = adata.copy()
    with pytest.raises(ValueError, match=r"denoised output at the chosen value .* is not finite"):
        pp.denoise(adata, grid=GRID, calibration=calibration, progress=False)
    assert_same(adata, before)


@pytest.mark.parametrize("loss", ["mse", "poisson"])
def test_a_nan_in_one_grid_value_is_not_chosen(adata, monkeypatch, loss):
    # Non-finite factors make non-finite predictions in whichever path scores them (the
    # fused block kernel for MSE, value by value for Poisson).
    real = PCA.fit

    def fit_with(broken):
        def fit(self, data, grid, *, partition=None):
            real(self, data, grid, partition=partition)
            broken(self)
            return self

        return fit

    def second_component_nan(model):
        model.components_[1] = np.nan  # ranks >= 2 read it

    monkeypatch.setattr(PCA, "fit", fit_with(second_component_nan))
    with pytest.raises(ValueError, match="calibration loss is not finite at n_comps = 2"):
        tl.calibrate(adata, grid=GRID, loss=loss, progress=False)

    def mean_minus_inf(model):
        model.mean_[:] = -np.inf

    monkeypatch.setattr(PCA, "fit", fit_with(mean_minus_inf))
    with pytest.raises(ValueError, match="calibration loss is not finite"), np.errstate(invalid="ignore"):
        tl.calibrate(adata, grid=GRID, loss=loss, progress=False)  # (-inf) x (mixed signs) in the scores: NaN


# -- values that used to crash or exhaust memory -------------------------------------------------


def test_one_huge_count_costs_neither_memory_nor_time(counts):
    X = counts.astype(np.int64).tolil()
    X[3, 4] = 3 * 10**9
    a = ad.AnnData(X.tocsr())
    for kwargs in ({}, {"transform": "log1p", "target_sum": 1e4}, {"loss": "poisson"}):
        pp.denoise(a, grid=GRID, progress=False, overwrite=True, **kwargs)
        assert np.isfinite(a.layers["denoised"]).all()
    split = pp.split_counts(X.tocsr(), random_state=0)[0]
    assert split.train[3, 4] + split.test[3, 4] == 3 * 10**9
    assert abs(split.train[3, 4] / 3e9 - 0.9) < 1e-3


@pytest.mark.parametrize(
    "matrix",
    [
        pytest.param(np.array([[2**63 + 5, 1], [1, 1]], dtype=np.uint64), id="uint64-beyond-int64"),
        pytest.param(np.array([[1e19, 1.0], [1.0, 1.0]]), id="float-1e19"),
        pytest.param(np.array([[2.0**25, 1.0], [1.0, 1.0]], dtype=np.float32), id="float32-beyond-2**24"),
    ],
)
def test_counts_that_cannot_be_held_exactly_are_refused(matrix):
    with pytest.raises(ValueError, match="cannot hold every count"):
        pp.split_counts(matrix)
    with pytest.raises(ValueError, match="cannot hold every count"):
        tl.calibrate(matrix, progress=False)


@pytest.mark.parametrize(("n_cells", "n_genes"), [(20, 30), (60, 40), (124, 200), (50, 5000), (8, 30)])
def test_gene_partition_works_on_few_cells(n_cells, n_genes):
    X = sparse.csr_matrix(np.random.default_rng(0).poisson(2.0, (n_cells, n_genes)))
    X = X[:, np.asarray(X.sum(axis=0)).ravel() > 0]
    a = ad.AnnData(X)
    pp.denoise(a, calibration="genes", progress=False)
    assert np.isfinite(a.layers["denoised"]).all()
    assert a.uns["denoised"]["grid"].max() < n_cells


# -- denoised_genes ------------------------------------------------------------------------------


@pytest.fixture
def denoised(adata) -> ad.AnnData:
    adata.var_names = [f"g{i % 30}" for i in range(adata.n_vars)]  # g0..g9 twice
    pp.denoise(adata, grid=GRID, progress=False)
    return adata


@pytest.mark.parametrize(
    ("genes", "match"),
    [
        pytest.param(["g3"], "occur more than once", id="duplicated-name"),
        pytest.param(["nope"], r"not in adata.var_names: \['nope'\]", id="missing"),
        pytest.param([1000], r"must lie in -40..39", id="position-too-large"),
        pytest.param([1.5], "got float64 values", id="float-position"),
        pytest.param(None, "got None", id="none"),
        pytest.param(np.ones(5, dtype=bool), "one entry per gene", id="short-mask"),
        pytest.param([[1, 2]], "1-D", id="2-d"),
    ],
)
def test_denoised_genes_refuses_odd_genes(denoised, genes, match):
    with pytest.raises(ValueError, match=match):
        tl.denoised_genes(denoised, genes=genes)


def test_denoised_genes_accepts_what_is_unambiguous(denoised):
    layer = denoised.layers["denoised"]
    np.testing.assert_array_equal(tl.denoised_genes(denoised, genes=["g25"]), layer[:, [25]])  # unique name
    np.testing.assert_array_equal(tl.denoised_genes(denoised, genes="g25"), layer[:, [25]])
    np.testing.assert_array_equal(tl.denoised_genes(denoised, genes=[3, 33]), layer[:, [3, 33]])
    np.testing.assert_array_equal(tl.denoised_genes(denoised, genes=-1), layer[:, [-1]])
    assert tl.denoised_genes(denoised, genes=[]).shape == (denoised.n_obs, 0)
    with pytest.raises(ValueError, match="No denoised output under 'other'"):
        tl.denoised_genes(denoised, genes=[1], key="other")


# -- score_denoising -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        pytest.param(lambda d: d.__setitem__((0, 0), np.nan), {}, "NaN or infinite", id="nan"),
        pytest.param(lambda d: None, {"target_sum": -1}, "target_sum must be", id="negative-target-sum"),
        pytest.param(lambda d: None, {"target_sum": "1e4"}, "target_sum must be", id="string-target-sum"),
        pytest.param(lambda d: None, {"chunk_size": 0}, "chunk_size must be a positive integer", id="chunk-size"),
        pytest.param(lambda d: None, {"scale": "log"}, "scale must be", id="scale"),
        pytest.param(lambda d: d.__setitem__((0, 0), 1e6), {"scale": "log1p"}, "overflows", id="overflow"),
    ],
)
def test_score_denoising_refuses_bad_input(counts, change, kwargs, match):
    denoised = np.ones(counts.shape)
    change(denoised)
    with pytest.raises(ValueError, match=match):
        tl.score_denoising(denoised, counts, **kwargs)


def test_score_denoising_takes_lists(counts):
    denoised = np.ones(counts.shape)
    expected = tl.score_denoising(denoised, counts)
    assert tl.score_denoising(denoised.tolist(), counts.toarray().tolist()) == expected
    with pytest.raises(ValueError, match="same shape"):
        tl.score_denoising(denoised[:5], counts)


# -- parameters that used to reach other libraries -----------------------------------------------


def _backed(adata, tmp_path):
    path = tmp_path / "backed.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


BAD_DENOISE_ARGUMENTS = [
    ({"split_fraction": None}, "split_fraction must be a finite number"),
    ({"split_fraction": "0.9"}, "split_fraction must be a finite number"),
    ({"split_fraction": 1e-9}, "training part"),
    ({"sampling": "nb"}, "sampling must be 'poisson'"),
    ({"sampling": None}, "sampling must be 'poisson'"),
    ({"sampling": ["negative_binomial"]}, "sampling must be 'poisson'"),
    ({"dispersion": 2.0}, "pass that too"),
    ({"sampling": "negative_binomial", "dispersion": 0.5}, "dispersion must be a finite number in \\[1, "),
    ({"sampling": "negative_binomial", "dispersion": np.nan}, "dispersion must be a finite number"),
    ({"sampling": "negative_binomial", "dispersion": "3"}, "dispersion must be a finite number"),
    ({"sampling": "negative_binomial", "dispersion": True}, "dispersion must be a finite number"),
    ({"sampling": "negative_binomial", "dispersion": 1e300}, "dispersion must be a finite number"),
    ({"sampling": "negative_binomial", "calibration": "genes"}, "apply to calibration='mcv' only"),
    ({"depth": "Output"}, "depth must be 'held_out', 'output' or None"),
    ({"depth": "output", "loss": "poisson"}, "calibration='mcv' with loss='mse'"),
    ({"target_sum": "1e4"}, "target_sum must be a finite number"),
    ({"target_sum": 1e300}, "target_sum must be a finite number"),
    ({"target_sum": np.nan}, "target_sum must be a finite number"),
    ({"target_sum": 1e300, "calibration": "genes"}, "target_sum must be a finite number"),
    ({"grid": [np.inf]}, "must hold integers"),
    ({"grid": [1e30]}, "must lie in 1.."),
    ({"grid": []}, "non-empty"),
    ({"grid": [[3], [5, 6]]}, "non-empty 1-D"),
    ({"n_groups": 1.5, "calibration": "genes"}, "n_groups must be a positive integer"),
    ({"chunk_size": -3}, "chunk_size must be a positive integer"),
    ({"max_scored_cells": 0}, "max_scored_cells must be a positive integer"),
    ({"max_scored_cells": 2.5}, "max_scored_cells must be a positive integer"),
    ({"max_scored_cells": True}, "max_scored_cells must be a positive integer"),
    ({"max_scored_cells": "all"}, "max_scored_cells must be a positive integer"),
    ({"progress": "yes"}, "progress must be True or False"),
    ({"copy": 1}, "copy must be True or False"),
    ({"overwrite": "no"}, "overwrite must be True or False"),
    ({"random_state": True}, "random_state must be"),
    ({"random_state": 1.5}, "random_state must be"),
    ({"method": Diffusion(n_neighbors=0)}, "n_neighbors must be a positive integer"),
    ({"method": Diffusion(n_pcs=0)}, "n_pcs must be a positive integer"),
    ({"method": Diffusion(n_comps=0)}, "n_comps must be a positive integer"),
    ({"method": Diffusion(decay=-1)}, "decay must be"),
    ({"method": Diffusion(kernel="gauss")}, "kernel must be"),
    ({"method": PCA(n_oversamples=-50)}, "n_oversamples must be a non-negative integer"),
    ({"method": PCA(n_iter=2.5)}, "n_iter must be a non-negative integer"),
    ({"method": PCA(solver="lapack")}, "solver must be"),
    ({"method": PCA}, "got the class PCA; pass PCA\\(\\) instead"),
    ({"method": Diffusion}, "got the class Diffusion"),
    ({"method": "PCA"}, "method must be one of"),
    ({"layer": ["counts"]}, "not found in adata.layers"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_DENOISE_ARGUMENTS, ids=lambda v: str(v)[:40])
def test_bad_arguments_are_refused_before_any_work(adata, monkeypatch, kwargs, match):
    before = adata.copy()
    monkeypatch.setattr(
        "sc_noise2self._numerics.dispersion.binomial_split", _failing(AssertionError)
    )  # no split may start
    with pytest.raises(ValueError, match=match):
        pp.denoise(adata, progress=kwargs.pop("progress", False), **kwargs)
    assert_same(adata, before)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"bottleneck": 0}, "bottleneck must be a positive integer"),
        ({"bottleneck": 500}, "wider than the data's 40 genes"),
        ({"dropout": 2.0}, r"dropout must be a finite number in \[0, 1\)"),
        ({"learning_rate": -1}, "learning_rate must be"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"hidden": (0,)}, "hidden must be a tuple"),
        ({"weight_decay": np.inf}, "weight_decay must be"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_bad_autoencoder_settings_are_refused(adata, settings, match):
    pytest.importorskip("torch")
    from sc_noise2self.denoisers import Autoencoder

    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        pp.denoise(adata, method=Autoencoder(**settings), grid=[1, 2], progress=False)
    assert_same(adata, before)


@pytest.mark.parametrize(
    ("dtype", "container", "match"),
    [
        pytest.param(bool, np.asarray, r"boolean .*astype\(np.float32\)", id="bool-dense"),
        pytest.param(bool, sparse.csr_matrix, r"boolean .*astype\(np.float32\)", id="bool-csr"),
        pytest.param(np.complex128, np.asarray, r"complex; pass its real part", id="complex-dense"),
        pytest.param(np.complex128, sparse.csr_matrix, r"complex; pass its real part", id="complex-csr"),
        pytest.param(object, np.asarray, r"dtype object; .*astype\(np.float32\)", id="object-dense"),
    ],
)
def test_odd_dtypes_say_how_to_cast(counts, dtype, container, match):
    X = container(counts.toarray().astype(dtype))
    a = ad.AnnData(np.zeros(counts.shape))
    a.X = X
    with pytest.raises(ValueError, match=match):
        pp.denoise(a, progress=False)
    with pytest.raises(ValueError, match=match):
        pp.split_counts(X)


def test_one_gene_is_too_few_for_diffusion():
    a = ad.AnnData(sparse.csr_matrix(np.random.default_rng(0).poisson(50.0, (30, 1))))
    with pytest.raises(ValueError, match="Diffusion needs at least 2 cells and 2 genes"):
        pp.denoise(a, method="diffusion", progress=False)


def test_dask_with_unknown_chunk_sizes_is_refused(counts):
    da = pytest.importorskip("dask.array")
    X = da.from_array(counts.toarray(), chunks=(50, -1))
    X = X[X.sum(axis=1) > 0]  # chunk sizes unknown after boolean indexing (anndata refuses such arrays)
    for call in (lambda: tl.calibrate(X, progress=False), lambda: pp.split_counts(X)):
        with pytest.raises(ValueError, match=r"unknown chunk sizes; call `X.compute_chunk_sizes\(\)`"):
            call()


def test_backed_anndata_is_refused_where_it_cannot_work(adata, tmp_path):
    backed = _backed(adata, tmp_path)
    with pytest.raises(ValueError, match=r"backed AnnData cannot hold.*to_memory"):
        pp.split_counts(backed)
    with pytest.raises(ValueError, match=r"copy=True needs an AnnData in memory"):
        pp.denoise(backed, copy=True, progress=False)
    assert "split_train" not in backed.layers and "denoised" not in backed.uns
    backed.file.close()


def test_counts_in_raw_are_pointed_to(adata):
    adata.raw = adata.copy()
    with pytest.raises(ValueError, match=r"Layer 'raw' not found .*adata.raw.to_adata\(\)"):
        pp.denoise(adata, layer="raw", progress=False)


@pytest.mark.parametrize("groups", [1, 0, -2, "3", 2.5, True, None], ids=repr)
def test_a_methods_bad_number_of_cell_groups_is_refused(adata, groups):
    """``n_cell_groups`` (a method's tag for the gene partition) set to an odd value by a subclass."""

    class Odd(Diffusion):
        tags = dataclasses.replace(Diffusion.tags, n_cell_groups=groups)

    method = Odd()
    before = adata.copy()
    with pytest.raises(ValueError, match="n_cell_groups must be"):
        pp.denoise(adata, method=method, calibration="genes", grid=[0, 1], progress=False)
    assert_same(adata, before)


# -- inputs that used to crash or give a library's message ---------------------------------------


@pytest.mark.parametrize("method", ["pca", "diffusion", "knn", "alra", "autoencoder"])
@pytest.mark.parametrize("calibration", ["mcv", "genes"])
def test_identical_cells_are_denoised_or_refused_clearly(method, calibration):
    """A hundred copies of one cell: nothing varies, so no linear system may be solved as if it did."""
    if method == "autoencoder":
        pytest.importorskip("torch")
        from sc_noise2self.denoisers import Autoencoder

        method = Autoencoder(hidden=(16,), n_fits=1, device="cpu")
    row = np.random.default_rng(0).poisson(3.0, 200)
    a = ad.AnnData(sparse.csr_matrix(np.tile(row, (100, 1))).astype(np.float32))
    grid = [1, 2] if not isinstance(method, str) else None
    try:
        pp.denoise(a, method=method, calibration=calibration, grid=grid, progress=False)
    except ValueError as error:
        assert "no J-invariant form" in str(error)  # ALRA has no gene partition
    else:
        assert np.isfinite(a.layers["denoised"]).all()


def test_a_dispersion_beyond_what_the_split_handles_is_refused(adata):
    before = adata.copy()
    with pytest.raises(ValueError, match=r"dispersion must be a finite number in \[1, 1000\]"):
        pp.denoise(adata, sampling="negative_binomial", dispersion=1e6, progress=False)
    assert_same(adata, before)


def test_a_view_of_a_backed_anndata_is_refused_before_any_work(adata, tmp_path):
    view = _backed(adata, tmp_path)[:50]
    with pytest.raises(ValueError, match=r"view of a backed .*to_memory"):
        pp.denoise(view, grid=GRID, progress=False)
    with pytest.raises(ValueError, match=r"view of a backed .*to_memory"):
        pp.pca(view, progress=False)
    view.file.close()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: pp.denoise(a, layer="nope", progress=False), r"pass one of them, or None"),
        (lambda a: pp.denoise(a, mask_var=np.arange(a.n_vars) < 3, progress=False, grid=[1]), "select genes"),
        (lambda a: pp.split_counts(np.array([[0.5, 1.0], [1.0, 2.0]])), r"raw UMI counts: pass the layer[^;]*\.$"),
        (lambda a: tl.calibrate(a, calibration="genes", depth="output", progress=False), "pass depth=None"),
    ],
    ids=["layer", "mask-without-counts", "split-not-counts", "depth"],
)
def test_messages_say_what_to_do(adata, call, match):
    X = adata.X.toarray()
    X[:, :3] = 0  # three genes without counts
    adata.X = sparse.csr_matrix(X)
    with pytest.raises(ValueError, match=match):
        call(adata)
