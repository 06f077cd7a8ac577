"""Every registered method, and a toy one written against the contract alone, keeps the contract.

The toy (:class:`Shrink`) is the example of the docs' "Add a denoiser" page: if it passes here,
a new method written the same way plugs into every path of the package.
"""

from __future__ import annotations

import pickle

import anndata as ad
import numba
import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone

import sc_noise2self as n2s
from sc_noise2self.denoisers import BaseDenoiser, Predicted, Tags, registered

from .conftest import simulate_low_rank_poisson


class Shrink(BaseDenoiser):
    """Toy: each cell pulled towards the genes' means by ``k / 10`` (``k`` in 0..10)."""

    tags = Tags(blockwise=True)  # the means are merged over blocks of cells

    def __init__(self, *, random_state: object = 0) -> None:
        self.random_state = random_state

    def grid_names(self, grid):
        return ("k",)

    def default_grid(self, shape):
        return np.arange(11)

    def check_grid(self, grid, shape):
        return n2s.denoisers.check_int_grid(grid, low=0, high=10, name="k")

    def fit(self, data, grid, *, partition=None):
        sums = data.reduce(lambda b: (b.values.shape[0], np.asarray(b.values.sum(axis=0)).ravel()), _add)
        self.grid_, self.mean_ = np.asarray(grid), sums[1] / sums[0]
        return self

    def predictions(self, block):
        values = block.values.toarray()
        for k in self.grid_:
            yield int(k), (values + (self.mean_ - values) * (k / 10)).astype(np.float32)

    def output(self, value):
        return Predicted(lambda block: dict(self.predictions(block))[value])

    def report(self):
        return {"mean_level": float(self.mean_.mean())}


def _add(a, b):
    return a[0] + b[0], a[1] + b[1]


METHODS = {name: cls for name, cls in registered().items()}
METHODS["shrink"] = Shrink
SMALL = {"autoencoder": {"hidden": (16,), "batch_size": 64, "n_fits": 1, "device": "cpu"}}
GRIDS = {
    "pca": [1, 2, 4],
    "diffusion": [0, 1, 3],
    "knn": [2, 4, 8],
    "autoencoder": [1, 2],
    "shrink": [0, 3, 10],
    "alra": [2, 4, 6],
}


def _method(name: str, **params):
    cls = METHODS[name]
    if name == "autoencoder":
        pytest.importorskip("torch")
    return cls(**{**SMALL.get(name, {}), **params})


def _grid(name: str):
    return GRIDS.get(name, None)


@pytest.fixture(scope="module")
def counts():
    return simulate_low_rank_poisson(160, 60, 4, mean_depth=400.0, seed=5).counts


NAMES = sorted(METHODS)


def test_the_table_knows_every_registered_method():
    assert set(registered()) <= set(GRIDS), "give a new method a small grid here"


@pytest.mark.parametrize("name", NAMES)
def test_clone_and_parameters_round_trip(name):
    method = _method(name)
    params = method.get_params()
    copy = clone(method)
    assert copy is not method and copy.get_params() == params and repr(copy) == repr(method)
    assert type(method)(**params).get_params() == params  # __init__ stores its parameters as given
    changed = clone(method).set_params(random_state=7)
    assert changed.get_params()["random_state"] == 7 and method.get_params()["random_state"] == params["random_state"]
    assert pickle.loads(pickle.dumps(method)).get_params() == params


@pytest.mark.parametrize("name", NAMES)
def test_the_users_instance_is_never_fitted(counts, name):
    method = _method(name)
    before = dict(vars(method))
    n2s.tl.calibrate(counts, method=method, grid=_grid(name), progress=False)
    assert vars(method) == before


@pytest.mark.parametrize("name", NAMES)
def test_chunking_and_threads_change_no_bit(counts, name):
    method = _method(name)
    reference = n2s.tl.calibrate(counts, method=method, grid=_grid(name), progress=False)
    chunked = n2s.tl.calibrate(counts, method=method, grid=_grid(name), chunk_size=37, progress=False)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one_thread = n2s.tl.calibrate(counts, method=method, grid=_grid(name), progress=False)
    finally:
        numba.set_num_threads(threads)
    assert chunked.loss.tobytes() == reference.loss.tobytes() == one_thread.loss.tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_fused_scoring_gives_the_unfused_bytes(counts, name, monkeypatch):
    method = _method(name)
    fused = n2s.tl.calibrate(counts, method=method, grid=_grid(name), progress=False)
    monkeypatch.setattr(type(method), "fuses", lambda self, kind: False)
    plain = n2s.tl.calibrate(counts, method=method, grid=_grid(name), progress=False)
    assert fused.loss.tobytes() == plain.loss.tobytes() and fused.baseline.tobytes() == plain.baseline.tobytes()


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].tags.blockwise])
def test_dask_gives_the_in_memory_result(counts, name):
    da = pytest.importorskip("dask.array")
    method = _method(name, **({"block_cells": 40} if name == "autoencoder" else {}))
    memory = n2s.tl.calibrate(counts, method=method, grid=_grid(name), progress=False)
    lazy = n2s.tl.calibrate(da.from_array(counts, chunks=(40, -1)), method=method, grid=_grid(name), progress=False)
    assert lazy.best == memory.best
    np.testing.assert_allclose(lazy.loss, memory.loss, rtol=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if not METHODS[n].tags.blockwise])
def test_dask_is_refused_before_any_pass_where_not_supported(counts, name):
    da = pytest.importorskip("dask.array")
    with pytest.raises(ValueError, match=r"needs the data in memory; .* method="):
        n2s.tl.calibrate(da.from_array(counts, chunks=(40, -1)), method=_method(name), progress=False)


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].tags.gene_partition == "held_out"])
def test_gene_partition_predictions_are_j_invariant(counts, name):
    """Changing one cell's held-out genes changes no prediction of them for that cell.

    (A method trained by masking is J-invariant as a fitted function, not through its training,
    which reads every value: ``tests/test_autoencoder.py`` checks its network on changed input.)
    """
    from sc_noise2self._engine.genes import random_groups
    from sc_noise2self._numerics.transform import transformed
    from sc_noise2self.denoisers import ArrayData, Partition

    values = transformed(counts, "log1p", 1e4)
    groups = random_groups(values.shape[1], 4, 0, 3)
    cells = random_groups(values.shape[0], METHODS[name].tags.n_cell_groups, 0, 4)
    held_out = 0
    changed = values.tolil()
    changed[11, groups == 0] = 9.0
    outputs = []
    for matrix in (values, changed.tocsr()):
        method = _method(name)
        grid = method.check_grid(_grid(name), values.shape)
        data = ArrayData(matrix)
        sweep = method.fit(data, grid, partition=Partition(groups, held_out, cells))
        block = data.block()
        if sweep.order == "blocks":
            outputs.append([p[11].copy() for _, p in sweep.predictions(block)])
        else:
            outputs.append([step.predict(block)[11] for step in sweep.values()])
    for before, after in zip(*outputs, strict=True):  # a held-out sweep predicts its group's genes only
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", NAMES)
def test_denoise_writes_a_record_that_survives_h5ad(counts, name, tmp_path):
    adata = ad.AnnData(counts.astype(np.float32))
    n2s.pp.denoise(adata, method=_method(name), grid=_grid(name), progress=False)
    assert np.isfinite(adata.layers["denoised"]).all() and adata.layers["denoised"].shape == adata.shape
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    record, read = adata.uns["denoised"], back.uns["denoised"]
    assert sorted(read) == sorted(record)
    for key in ("loss", "grid", "best"):
        np.testing.assert_array_equal(read[key], record[key])
    assert read["method"] == (name if name in registered() else "shrink")
    for key, values in record.get("method_report", {}).items():  # what each split's fit reported
        assert values.shape == (record["params"]["n_splits"],)
        np.testing.assert_array_equal(read["method_report"][key], values)
    if name == "shrink":
        assert "mean_level" in read["method_report"]


def _paths(name: str):
    """Each way a method's output is written: dense, factored (low rank), from dask, by the gene partition."""
    tags = METHODS[name].tags
    yield "dense", {}
    if tags.low_rank:
        yield "factored", {"max_dense_bytes": 1}
    if tags.blockwise and not tags.in_memory_output:
        yield "dask", {}
    if tags.gene_partition is not None:
        yield "genes", {"calibration": "genes", "n_groups": 4}


@pytest.mark.parametrize("name", NAMES)
def test_the_denoised_layer_is_never_negative(counts, name):
    for path, kwargs in _paths(name):
        adata = ad.AnnData(counts.astype(np.float32))
        if path == "dask":
            da = pytest.importorskip("dask.array")
            adata.X = da.from_array(counts.toarray().astype(np.float32), chunks=(40, -1))
        method = _method(name, **({"block_cells": 40} if name == "autoencoder" and path == "dask" else {}))
        n2s.pp.denoise(adata, method=method, grid=_grid(name), progress=False, **kwargs)
        layer = adata.layers["denoised"]
        layer = np.asarray(layer.compute() if hasattr(layer, "compute") else layer)
        assert layer.min() >= 0 and np.isfinite(layer).all(), path
        assert adata.uns["denoised"]["non_negative"] is True
        if path == "factored":  # the layer read from the factors is their product projected onto ≥ 0
            fitted = (
                adata.var["denoised_offset"].to_numpy()
                + adata.obsm["denoised_scores"] @ adata.varm["denoised_loadings"].T
            )
            np.testing.assert_allclose(layer, np.maximum(fitted, 0), rtol=1e-5, atol=1e-6)
            assert name != "pca" or (fitted < 0).any()  # (PCA's fit dips below 0 here: the projection acts)


ODD_VALUES = [None, "x", -1, 0, 2.5, float("nan"), 1e300, True, (), [3]]


@pytest.mark.parametrize("name", NAMES)
def test_odd_parameter_values_are_refused_or_work(counts, name):
    """Every parameter with every odd value: a ValueError that names it, or a finite result — never another error."""
    small = sparse.csr_matrix(counts[:60])  # more genes than any default width
    adata = ad.AnnData(small.astype(np.float32))
    for param in _method(name).get_params():
        for value in ODD_VALUES:
            method = _method(name, **{param: value})
            try:
                n2s.pp.denoise(adata, method=method, grid=_grid(name), progress=False, overwrite=True)
            except ValueError as error:  # said in the package's words, naming what to change
                assert param in str(error) or "grid" in str(error), (param, value, str(error))
            except ImportError:
                if param != "device":
                    raise
            else:
                assert np.isfinite(adata.layers["denoised"]).all(), (param, value)
