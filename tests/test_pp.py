"""The AnnData-facing API: what is written, what is left alone, round trips, bad input."""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self import pp

from ._helpers import ARRAY_TYPES, DTYPES, as_type

GRID = [1, 2, 3, 5, 8, 12]


@pytest.fixture
def adata(simulation) -> ad.AnnData:
    a = ad.AnnData(simulation.counts.copy())
    a.layers["counts"] = simulation.counts.copy()
    a.obs_names = [f"cell{i}" for i in range(a.n_obs)]
    return a


def _zero_gene(X: sparse.csr_matrix, gene: int) -> sparse.csr_matrix:
    X = X.copy()
    X.data[X.indices == gene] = 0
    X.eliminate_zeros()
    return X


def _snapshot(a: ad.AnnData) -> dict:
    X = a.X.toarray() if sparse.issparse(a.X) else np.array(a.X)
    return {"X": X, "layers": sorted(a.layers), "uns": sorted(a.uns), "obs": a.obs.copy(), "var": a.var.copy()}


def _assert_unchanged(a: ad.AnnData, before: dict) -> None:
    after = _snapshot(a)
    np.testing.assert_array_equal(after["X"], before["X"])
    assert after["layers"] == before["layers"] and after["uns"] == before["uns"]
    assert after["obs"].equals(before["obs"]) and after["var"].equals(before["var"])


def test_denoise_writes_layer_and_uns_only(adata):
    before = _snapshot(adata)
    counts_layer = adata.layers["counts"].copy()
    assert pp.denoise(adata, grid=GRID, progress=False) is None
    out = adata.layers["denoised"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == adata.shape
    np.testing.assert_array_equal(adata.X.toarray(), before["X"])
    assert (adata.layers["counts"] != counts_layer).nnz == 0
    uns = adata.uns["denoised"]
    assert uns["method"] == "pca" and uns["grid_names"] == ["n_comps"] and uns["calibration"] == "mcv"
    np.testing.assert_array_equal(uns["grid"], GRID)
    assert uns["loss"].shape == (1, len(GRID))
    assert uns["best"] == GRID[int(np.argmin(uns["loss_mean"]))]
    assert uns["params"]["transform"] == "log1p" and uns["params"]["target_sum"] == 1e4  # scanpy's scale
    assert uns["params"]["split_fraction"] == 0.9
    assert uns["version"] == n2s.__version__


@pytest.mark.parametrize(
    ("transform", "target_sum"), [("log1p", 1e4), ("sqrt", None)], ids=["default-log1p-1e4", "sqrt-raw"]
)
def test_denoised_layer_is_closer_to_truth_than_the_raw_data(adata, simulation, transform, target_sum):
    from sc_noise2self._numerics.transform import TRANSFORMS, cell_scales, expected_transform

    pp.denoise(adata, grid=GRID, transform=transform, target_sum=target_sum, progress=False)
    scales = cell_scales(np.asarray(adata.X.sum(axis=1)).ravel(), target_sum)
    truth = np.stack([expected_transform(r, [s], transform)[0] for r, s in zip(simulation.rates, scales, strict=True)])
    raw_error = np.mean((TRANSFORMS[transform](adata.X.toarray() * scales[:, None]) - truth) ** 2)
    assert np.mean((adata.layers["denoised"] - truth) ** 2) < 0.5 * raw_error


def test_copy_returns_new_object_and_leaves_input(adata):
    before = _snapshot(adata)
    out = pp.denoise(adata, grid=GRID, progress=False, copy=True, key_added="dn")
    assert out is not adata and "dn" in out.layers and "dn" in out.uns
    _assert_unchanged(adata, before)


def test_uns_and_layer_survive_h5ad_round_trip(adata, tmp_path):
    pp.denoise(adata, grid=GRID, n_splits=2, progress=False)
    path = tmp_path / "denoised.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["denoised"], adata.layers["denoised"])
    for key, value in adata.uns["denoised"].items():
        if isinstance(value, dict):
            assert dict(back.uns["denoised"][key]) == value
        else:
            np.testing.assert_array_equal(back.uns["denoised"][key], value)
    ax = n2s.pl.calibration(back, show=False)
    assert ax.get_xlabel()


def test_same_seed_same_bytes_across_array_types(simulation):
    reference = None
    for array_type in [p.values[0] for p in ARRAY_TYPES]:
        for dtype in [p.values[0] for p in DTYPES]:
            a = ad.AnnData(as_type(simulation.counts, array_type, dtype))
            pp.denoise(a, grid=GRID, random_state=4, progress=False)
            result = (a.layers["denoised"].tobytes(), a.uns["denoised"]["loss"].tobytes())
            reference = reference or result
            assert result == reference, (array_type, dtype)


def test_different_seed_changes_the_split(adata):
    a, b = adata.copy(), adata.copy()
    pp.denoise(a, grid=GRID, random_state=0, progress=False)
    pp.denoise(b, grid=GRID, random_state=1, progress=False)
    assert not np.array_equal(a.uns["denoised"]["loss"], b.uns["denoised"]["loss"])


def test_counts_layer_and_estimator_instance(adata):
    adata.X = np.log1p(adata.X.toarray())  # log-normalised X, raw counts in a layer
    pp.denoise(adata, layer="counts", method=n2s.denoisers.PCA(n_iter=3), grid=GRID, progress=False)
    assert adata.uns["denoised"]["params"]["layer"] == "counts"
    assert adata.uns["denoised"]["method"] == "pca"
    assert "n_iter=3" in adata.uns["denoised"]["params"]["method_repr"]


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        pytest.param(lambda a: setattr(a, "X", np.log1p(a.X.toarray())), {}, "non-integer", id="log-normalised"),
        pytest.param(lambda a: setattr(a, "X", -a.X.toarray()), {}, "negative", id="negative"),
        pytest.param(lambda a: a.X.data.__setitem__(0, np.nan), {}, "NaN", id="nan"),
        pytest.param(
            lambda a: a.X.data.__setitem__(slice(a.X.indptr[0], a.X.indptr[1]), 0),
            {"empty": "error"},
            "1 cell without any counts",
            id="empty-cell",
        ),
        pytest.param(
            lambda a: setattr(a, "X", _zero_gene(a.X, 3)),
            {"empty": "error"},
            "1 gene without any counts",
            id="empty-gene",
        ),
        pytest.param(lambda a: None, {"empty": "ignore"}, "empty must be", id="empty-flag"),
        pytest.param(lambda a: None, {"layer": "raw"}, "Layer 'raw' not found", id="missing-layer"),
        pytest.param(lambda a: None, {"grid": [1, 2, 10_000]}, "must lie in 1..", id="grid-too-large"),
        pytest.param(lambda a: None, {"grid": [0, 2]}, "must lie in 1..", id="grid-zero"),
        pytest.param(lambda a: None, {"grid": [2.5]}, "must hold integers", id="grid-non-integer"),
        pytest.param(
            lambda a: None,
            {"split_fraction": 0.0},
            r"split_fraction must be a finite number in \(0, 1\)",
            id="fraction",
        ),
        pytest.param(lambda a: None, {"transform": "log"}, "transform must be", id="transform"),
        pytest.param(lambda a: None, {"loss": "l1"}, "loss must be", id="loss"),
        pytest.param(lambda a: None, {"method": "magic"}, "method must be", id="method"),
        pytest.param(lambda a: None, {"target_sum": -1.0}, "target_sum must be a finite number", id="target-sum"),
        pytest.param(lambda a: a.X.data.__setitem__(3, np.inf), {}, "infinite", id="inf"),
        pytest.param(lambda a: None, {"n_splits": 0}, "n_splits must be a positive integer", id="n-splits"),
        pytest.param(lambda a: None, {"chunk_size": 0}, "chunk_size must be a positive integer", id="chunk-size"),
        pytest.param(lambda a: None, {"random_state": -1}, "random_state must be", id="random-state"),
        pytest.param(lambda a: setattr(a, "X", a.X.toarray().astype(np.float16)), {}, "float16", id="float16"),
    ],
)
def test_bad_input_raises_and_leaves_adata_unchanged(adata, mutate, kwargs, match):
    adata.X = adata.X.astype(np.float64)
    mutate(adata)
    before = _snapshot(adata)
    with pytest.raises(ValueError, match=match):
        pp.denoise(adata, progress=False, **kwargs)
    _assert_unchanged(adata, before)


def test_empty_cells_and_genes_can_be_dropped(adata, monkeypatch):
    X = _zero_gene(_zero_gene(adata.X, 2), 7)
    X.data[X.indptr[5] : X.indptr[6]] = 0
    X.eliminate_zeros()
    adata.X = X
    with pytest.raises(ValueError, match=r"1 cell without any counts.*empty='drop'"):
        pp.denoise(adata, grid=GRID, progress=False, empty="error")
    said = []
    monkeypatch.setattr("sc_noise2self._engine.logg.info", lambda msg, **_: said.append(msg))
    pp.denoise(adata, grid=GRID, progress=False)  # the default drops them, and says so
    assert "    left out 1 cell and 2 genes without any counts (their output is 0)" in said
    out = adata.layers["denoised"]
    assert out.shape == adata.shape
    assert not out[5].any() and not out[:, [2, 7]].any() and out[6].any()
    assert adata.uns["denoised"]["n_dropped_cells"] == 1 and adata.uns["denoised"]["n_dropped_genes"] == 2
    kept = adata[np.arange(adata.n_obs) != 5][:, np.setdiff1d(np.arange(adata.n_vars), [2, 7])].copy()
    pp.denoise(kept, grid=GRID, progress=False, overwrite=True)  # a subset of the layer written: not as written
    np.testing.assert_array_equal(np.delete(np.delete(out, 5, axis=0), [2, 7], axis=1), kept.layers["denoised"])


def test_too_few_molecules_for_the_split():
    shallow = ad.AnnData(sparse.csr_matrix(np.eye(20, dtype=np.int32) * 3))
    with pytest.raises(ValueError, match="Too few molecules for a split"):
        pp.denoise(shallow, progress=False)
    pp.denoise(shallow, split_fraction=0.5, progress=False)


def test_int64_indices_give_the_same_result(simulation):
    wide = simulation.counts.copy()
    wide.indices, wide.indptr = wide.indices.astype(np.int64), wide.indptr.astype(np.int64)
    a, b = ad.AnnData(simulation.counts.copy()), ad.AnnData(wide)
    assert b.X.indices.dtype == np.int64
    for x in (a, b):
        pp.denoise(x, grid=GRID, progress=False)
    np.testing.assert_array_equal(a.layers["denoised"], b.layers["denoised"])


def test_too_few_cells_for_the_default_grid_is_capped():
    a = ad.AnnData(sparse.csr_matrix(np.random.default_rng(0).poisson(3.0, (8, 30))))
    pp.denoise(a, progress=False)
    assert a.uns["denoised"]["grid"].max() == 7


def test_anndata_view_input(adata):
    view = adata[:300]
    out = pp.denoise(view, grid=GRID, progress=False, copy=True)
    assert out.shape == (300, adata.n_vars) and "denoised" not in adata.layers
    pp.denoise(view, grid=GRID, progress=False)  # in place: the view becomes an actual AnnData
    assert not view.is_view and "denoised" in view.layers and "denoised" not in adata.layers


def test_progress_bar_is_shown_by_default_unless_scanpy_is_silenced(adata, capsys, monkeypatch):
    import scanpy as sc

    from sc_noise2self._engine import progress

    pp.denoise(adata, grid=GRID, progress=False)
    assert "MCV" not in capsys.readouterr().err
    pp.denoise(adata, grid=GRID, progress=True)
    assert "MCV" in capsys.readouterr().err
    monkeypatch.setattr(progress, "DELAY", 0)  # a default bar waits a second before it is drawn
    verbosity = sc.settings.verbosity
    try:
        sc.settings.verbosity = "warning"  # scanpy's default
        pp.denoise(adata, grid=GRID)
        assert "MCV" in capsys.readouterr().err
        sc.settings.verbosity = "error"
        pp.denoise(adata, grid=GRID)
        assert "MCV" not in capsys.readouterr().err
    finally:
        sc.settings.verbosity = verbosity


def test_a_quick_call_prints_nothing_by_default(adata, capsys, monkeypatch):
    from sc_noise2self._engine import progress

    monkeypatch.setattr(progress, "DELAY", 3600)
    pp.denoise(adata, grid=GRID)
    assert capsys.readouterr().err == ""
    import scanpy as sc

    logfile = sc.settings.logfile
    try:
        sc.settings.logfile = sys.stderr
        pp.denoise(adata, grid=[1, 2])  # warns that 2 is the grid's edge: the warning alone, no bar
    finally:
        sc.settings.logfile = logfile
    err = capsys.readouterr().err
    assert "largest value swept" in err and "MCV" not in err and "%|" not in err


def test_the_bar_is_drawn_with_its_whole_total_and_log_lines_beside_it(adata, capsys):
    import re

    import scanpy as sc

    verbosity, logfile = sc.settings.verbosity, sc.settings.logfile
    try:
        sc.settings.verbosity, sc.settings.logfile = "info", sys.stderr  # scanpy writes to the captured stream
        pp.denoise(adata, grid=[1, 2], progress=True, n_splits=2)  # warns, bar drawn, that 2 is the grid's edge
        err = capsys.readouterr().err
    finally:
        sc.settings.verbosity, sc.settings.logfile = verbosity, logfile
    totals = {int(total) for total in re.findall(r"\| \d+/(\d+) \[", err)}
    assert len(totals) == 1 and totals != {0}, totals
    lines = re.split(r"[\r\n]", err)
    messages = ("denoising", "largest value swept", "chose")
    assert all(any(message in line for line in lines) for message in messages)
    assert not any("%|" in line and any(message in line for message in messages) for line in lines)


def test_one_cell_is_too_small_to_calibrate():
    with pytest.raises(ValueError, match="too small for any n_comps"):
        pp.denoise(ad.AnnData(sparse.csr_matrix(np.array([[3, 4, 5]]))), progress=False)


def test_the_first_compile_of_a_process_is_announced_once(capsys, monkeypatch):
    import numba

    from sc_noise2self._engine import progress

    monkeypatch.setattr(progress, "_announced", False)
    with progress.progress_bar("MCV toy", progress=True):
        numba.njit(lambda x: x + 1)(1)  # a kernel numba has never compiled: a cache miss
    assert progress.COMPILING in capsys.readouterr().err
    with progress.progress_bar("MCV toy", progress=True):
        numba.njit(lambda x: x + 2)(1)
    assert progress.COMPILING not in capsys.readouterr().err  # once per process
    monkeypatch.setattr(progress, "_announced", False)
    with progress.progress_bar("MCV toy", progress=False):
        numba.njit(lambda x: x + 3)(1)
    assert capsys.readouterr().err == ""  # no bar asked for: nothing said
