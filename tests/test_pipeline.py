"""pp.pca and pp.neighbors: scanpy's outputs, with n_comps and n_neighbors chosen by self-supervision."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self._numerics.transform import cell_scales, expected_transform, transformed
from sc_noise2self.denoisers import Block, KNNAverage
from sc_noise2self.denoisers.knn import neighbour_means
from sc_noise2self.pp import _pipeline

from ._helpers import fit, out_of_core, predict, predictions
from .conftest import simulate_clusters, simulate_low_rank_poisson
from .test_hostile import assert_same

PCS = [2, 4, 6]
KS = [3, 5, 10]


@pytest.fixture(scope="module")
def sim():
    return simulate_clusters(300, 200, mean_depth=800.0, seed=1)


@pytest.fixture
def adata(sim) -> ad.AnnData:
    """Scanpy's usual state before PCA: log-normalised X, raw counts in a layer."""
    a = ad.AnnData(sim.counts.astype(np.float32))
    a.layers["counts"] = sim.counts.copy()
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _pca(a, **kwargs):
    n2s.pp.pca(a, **{"layer": "counts", "grid": PCS, "progress": False} | kwargs)


def _neighbors(a, **kwargs):
    n2s.pp.neighbors(a, **{"layer": "counts", "grid": KS, "progress": False} | kwargs)


# -- what scanpy writes -------------------------------------------------------------------------


@pytest.mark.parametrize("hvg", [False, True], ids=["all genes", "highly variable"])
def test_pca_writes_what_scanpy_writes_at_the_chosen_rank(adata, hvg):
    if hvg:
        sc.pp.highly_variable_genes(adata, n_top_genes=120)
    ours = adata.copy()
    _pca(ours)
    n_comps = ours.obsm["X_pca"].shape[1]
    assert n_comps == int(np.asarray(ours.uns["pca"]["calibration"]["best"])[-1])
    theirs = adata.copy()
    sc.pp.pca(theirs, n_comps=n_comps, mask_var="highly_variable" if hvg else None)
    assert ours.obsm["X_pca"].dtype == np.float32
    # Same subspace and scores up to each component's sign.
    signs = np.sign(np.sum(ours.varm["PCs"] * theirs.varm["PCs"], axis=0))
    np.testing.assert_allclose(ours.obsm["X_pca"], theirs.obsm["X_pca"] * signs, atol=2e-3)
    np.testing.assert_allclose(ours.varm["PCs"], theirs.varm["PCs"] * signs, atol=1e-4)
    for name in ("variance", "variance_ratio"):
        np.testing.assert_allclose(ours.uns["pca"][name], theirs.uns["pca"][name], rtol=1e-4)
    assert ours.uns["pca"]["params"]["use_highly_variable"] is hvg
    if hvg:
        assert not ours.varm["PCs"][~adata.var["highly_variable"].to_numpy()].any()


def test_pca_objectives(adata):
    graph, recon = adata.copy(), adata.copy()
    _pca(graph, grid=[2, 4, 6, 10])
    best = np.asarray(graph.uns["pca"]["calibration"]["best"])
    assert graph.uns["pca"]["calibration"]["grid_names"] == ["n_neighbors", "n_pcs"]
    assert graph.obsm["X_pca"].shape[1] == best[1]
    assert graph.uns["pca"]["calibration"]["objective"] == "neighbors"
    _pca(recon, objective="reconstruction", grid=np.arange(1, 21))
    same = adata.copy()
    n2s.pp.denoise(same, layer="counts", grid=np.arange(1, 21), progress=False)  # pp.denoise's rank
    assert recon.obsm["X_pca"].shape[1] == same.uns["denoised"]["best"]


def test_neighbors_writes_what_scanpy_writes_for_the_chosen_k(adata):
    _pca(adata)
    _neighbors(adata)
    k = int(adata.uns["neighbors"]["calibration"]["best"])
    theirs = adata.copy()
    sc.pp.neighbors(theirs, n_neighbors=k)
    for key in ("distances", "connectivities"):
        assert (adata.obsp[key] != theirs.obsp[key]).nnz == 0
    assert adata.uns["neighbors"]["params"] == theirs.uns["neighbors"]["params"] | {"use_rep": "X_pca"}
    sc.tl.umap(adata)  # scanpy's tools run on it unchanged
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2) and adata.obs["leiden"].nunique() > 1


def test_neighbors_options_reach_scanpy(adata):
    from sklearn.neighbors import KNeighborsTransformer

    _pca(adata)
    transformer = KNeighborsTransformer(n_neighbors=99, metric="manhattan")
    _neighbors(adata, key_added="manhattan", transformer=transformer, n_pcs=4, method="gauss")
    k = int(adata.uns["manhattan"]["calibration"]["best"])
    theirs = adata.copy()
    sc.pp.neighbors(
        theirs, n_pcs=4, method="gauss", transformer=KNeighborsTransformer(n_neighbors=k, metric="manhattan")
    )
    assert transformer.n_neighbors == 99  # the user's instance is left as it was
    assert set(adata.obsp) == {"manhattan_distances", "manhattan_connectivities"}
    assert adata.uns["manhattan"]["connectivities_key"] == "manhattan_connectivities"
    assert adata.uns["manhattan"]["params"]["n_pcs"] == 4
    assert (adata.obsp["manhattan_connectivities"] != theirs.obsp["connectivities"]).nnz == 0


def test_records_survive_h5ad_and_plot(adata, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _pca(adata)
    _neighbors(adata)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    for key in ("pca", "neighbors"):
        np.testing.assert_array_equal(back.uns[key]["calibration"]["loss"], adata.uns[key]["calibration"]["loss"])
        assert n2s.pl.calibration(back, key=key, show=False) is not None
    sc.pp.neighbors(back)  # scanpy reads the record it wrote, and replaces it
    assert "calibration" not in back.uns["neighbors"]


def test_same_seed_same_bytes(adata):
    a, b, c = adata.copy(), adata.copy(), adata.copy()
    for x in (a, b):
        _pca(x)
        _neighbors(x)
    _pca(c, random_state=5)
    assert a.obsm["X_pca"].tobytes() == b.obsm["X_pca"].tobytes()
    assert a.obsp["connectivities"].data.tobytes() == b.obsp["connectivities"].data.tobytes()
    assert not np.array_equal(a.uns["pca"]["calibration"]["loss"], c.uns["pca"]["calibration"]["loss"])


def test_empty_cells_project_like_zero_expression(adata):
    counts = adata.layers["counts"].tolil()
    counts[7, :] = 0
    adata.layers["counts"] = sparse.csr_matrix(counts)
    _pca(adata)
    assert adata.uns["pca"]["calibration"]["n_dropped_cells"] == 1
    mean_projection = -adata.X[np.arange(adata.n_obs) != 7].mean(axis=0) @ adata.varm["PCs"]
    np.testing.assert_allclose(adata.obsm["X_pca"][7], np.asarray(mean_projection).ravel(), rtol=1e-3, atol=1e-3)
    assert np.isfinite(adata.obsm["X_pca"]).all()


# -- the user's data ---------------------------------------------------------------------------


def test_a_foreign_pca_or_graph_is_kept_unless_overwrite(adata):
    sc.pp.pca(adata, n_comps=5)
    sc.pp.neighbors(adata)
    before = adata.copy()
    with pytest.raises(ValueError, match=r"not written by sc_noise2self.pp.pca.*overwrite=True"):
        _pca(adata)
    with pytest.raises(ValueError, match=r"not written by sc_noise2self.pp.neighbors.*overwrite=True"):
        _neighbors(adata)
    assert_same(adata, before)
    _pca(adata, overwrite=True)
    _neighbors(adata, overwrite=True)
    _pca(adata, grid=[3])  # its own output is replaced without asking
    assert adata.obsm["X_pca"].shape[1] == 3 and adata.uns["pca"]["function"] == "pca"


def test_copy_and_views(adata):
    before = adata.copy()
    out = n2s.pp.pca(adata, layer="counts", grid=PCS, copy=True, progress=False)
    assert_same(adata, before)
    assert "X_pca" in out.obsm
    view = out[:200]
    _neighbors(view)
    assert not view.is_view and view.obsp["connectivities"].shape == (200, 200)


def test_an_interrupted_write_leaves_everything(adata, monkeypatch):
    _pca(adata)
    _neighbors(adata)
    before = adata.copy()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_pipeline, "_scanpy_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _neighbors(adata, grid=[4, 6])
    monkeypatch.setattr(_pipeline, "_pca_outputs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _pca(adata, grid=[3])
    assert_same(adata, before)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda a: n2s.pp.pca(a, progress=False), "integer|counts", id="log-normalised X"),
        pytest.param(lambda a: _pca(a, objective="clusters"), "objective", id="objective"),
        pytest.param(lambda a: _pca(a, grid=[[2, 3]]), "1-D", id="2-D grid"),
        pytest.param(lambda a: _pca(a, grid=[0, 2]), "n_pcs", id="rank 0"),
        pytest.param(lambda a: _pca(a, grid=[]), "grid of n_pcs.*non-empty", id="empty grid"),
        pytest.param(lambda a: _pca(a, grid=[2.5, 3]), "grid of n_pcs.*integers", id="fractional rank"),
        pytest.param(lambda a: _pca(a, grid=["3"]), "grid of n_pcs.*integers", id="string rank"),
        pytest.param(lambda a: _pca(a, grid=[np.nan]), "grid of n_pcs.*integers", id="NaN rank"),
        pytest.param(lambda a: _pca(a, grid=[[3], [5, 6]]), "grid of n_pcs.*1-D", id="ragged grid"),
        pytest.param(lambda a: _pca(a, key_added=""), "key_added", id="empty key"),
        pytest.param(lambda a: _pca(a, mask_var="nope"), "mask_var", id="mask_var"),
        pytest.param(lambda a: _pca(a, layer="nope"), "not found", id="layer"),
        pytest.param(lambda a: _neighbors(a), "X_pca.*pp.pca", id="no embedding"),
        pytest.param(lambda a: _neighbors(a, use_rep="X_umap"), "X_umap", id="use_rep"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", n_pcs=9), "n_pcs=9", id="n_pcs"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", n_pcs=0), "n_pcs", id="n_pcs 0"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", method="tsne"), "method", id="method"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", transformer="annoy"), "transformer", id="transformer"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", transformer=object()), "transformer", id="object"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", metric="nearness"), "refuses", id="metric"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", metric=3), "metric", id="metric type"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", metric_kwds=[1]), "metric_kwds", id="metric_kwds"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", grid=[1, 3]), "n_neighbors", id="k=1"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", grid=[301]), "n_neighbors", id="k > cells"),
        pytest.param(lambda a: _neighbors(a, use_rep="emb", calibration="knn"), "calibration", id="calibration"),
        pytest.param(lambda a: _neighbors(a, use_rep="nan"), "finite", id="NaN embedding"),
    ],
)
def test_bad_input_is_refused_before_any_write(adata, call, match):
    adata.obsm["emb"] = np.random.default_rng(0).normal(size=(adata.n_obs, 5)).astype(np.float32)
    adata.obsm["nan"] = np.full((adata.n_obs, 3), np.nan)
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        call(adata)
    assert_same(adata, before)


def test_pca_of_neighbour_graphs_refuses_counts_read_block_by_block(adata, tmp_path):
    pytest.importorskip("dask.array")
    counts = ad.AnnData(adata.layers["counts"], obs=adata.obs)
    for kind, other in out_of_core(counts, tmp_path, kinds=("dask-100", "backed")):
        with pytest.raises(ValueError, match=r"needs the counts in memory.*objective='reconstruction'"):
            n2s.pp.pca(other, progress=False)
        assert not other.uns and not other.obsm, kind


def test_neighbors_out_of_core_gives_the_in_memory_graph(sim, tmp_path):
    """The averages of the scored cells gathered block by block: the same curve, choice and graph."""
    pytest.importorskip("dask.array")
    big = simulate_clusters(1500, 120, mean_depth=600.0, seed=3)
    for counts, settings in (
        (ad.AnnData(sim.counts.astype(np.float32)), {}),
        (ad.AnnData(big.counts.astype(np.float32)), {"max_scored_cells": 600, "n_splits": 2}),  # a sample
    ):
        counts.obs_names = [f"c{i}" for i in range(counts.n_obs)]
        counts.obsm["X_pca"] = np.asarray(sim_embedding(counts.X))
        memory = counts.copy()
        _neighbors(memory, layer=None, **settings)
        for kind, other in out_of_core(counts, tmp_path):
            _neighbors(other, layer=None, **settings)
            got, expected = other.uns["neighbors"]["calibration"], memory.uns["neighbors"]["calibration"]
            assert got["best"] == expected["best"], kind
            np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-9, err_msg=kind)
            for key in ("distances", "connectivities"):
                assert (other.obsp[key] != memory.obsp[key]).nnz == 0, kind


def sim_embedding(counts) -> np.ndarray:
    """A PCA embedding of counts, as sc.pp.pca would give after log-normalising (20 components)."""
    values = transformed(sparse.csr_matrix(counts), "log1p", 1e4).toarray()
    values -= values.mean(axis=0)
    u, s, _ = np.linalg.svd(values, full_matrices=False)
    return (u[:, :20] * s[:20]).astype(np.float32)


@pytest.mark.parametrize("hvg", [False, True], ids=["all genes", "highly variable"])
def test_pca_reconstruction_out_of_core_gives_the_in_memory_pca(sim, tmp_path, hvg):
    pytest.importorskip("dask.array")
    counts = ad.AnnData(sim.counts.astype(np.float32))
    if hvg:
        counts.var["highly_variable"] = np.arange(counts.n_vars) % 3 > 0
    memory = counts.copy()
    settings = {"objective": "reconstruction", "grid": PCS, "progress": False}
    n2s.pp.pca(memory, **settings)
    for kind, other in out_of_core(counts, tmp_path):
        n2s.pp.pca(other, **settings)
        got, expected = other.uns["pca"], memory.uns["pca"]
        assert got["calibration"]["best"] == expected["calibration"]["best"], kind
        np.testing.assert_allclose(got["calibration"]["loss"], expected["calibration"]["loss"], rtol=1e-9)
        for key in ("variance", "variance_ratio"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-7, err_msg=kind)
        np.testing.assert_allclose(other.obsm["X_pca"], memory.obsm["X_pca"], rtol=1e-4, atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(other.varm["PCs"], memory.varm["PCs"], atol=1e-6, err_msg=kind)


# -- the kNN average --------------------------------------------------------------------------


def test_neighbour_means_are_plain_means():
    rng = np.random.default_rng(0)
    X = sparse.random(40, 7, density=0.4, random_state=1, format="csr")
    others = np.array([rng.permutation(np.delete(np.arange(40), c))[:6] for c in range(40)])
    cells = np.arange(40)
    sizes = np.array([1, 3, 7])
    got = neighbour_means(X, cells, others, sizes)
    dense = X.toarray()
    for v, size in enumerate(sizes):
        members = np.c_[cells, others][:, :size]
        np.testing.assert_allclose(got[v], dense[members].mean(axis=1), rtol=1e-6)
    without_self = neighbour_means(X, np.full(40, -1), others, np.array([2]))
    np.testing.assert_allclose(without_self[0], dense[others[:, :2]].mean(axis=1), rtol=1e-6)


def test_knn_sweep_does_not_depend_on_blocks(sim):
    values = transformed(sim.counts, "log1p", 1e4)
    grid = n2s.tl.grid(n_neighbors=KS, n_pcs=PCS)
    model, data = fit(KNNAverage(random_state=0), values, KNNAverage().check_grid(grid, values.shape))
    whole = list(predictions(model, data).values())
    parts = [list(predictions(model, data, slice(s, s + 37)).values()) for s in range(0, values.shape[0], 37)]
    for v, pred in enumerate(whole):
        assert np.concatenate([part[v] for part in parts]).tobytes() == pred.tobytes()
    np.testing.assert_array_equal(
        predict(model, data, (5, 4), slice(5, 9)), whole[list(map(tuple, model.grid_)).index((5, 4))][5:9]
    )


def test_knn_gene_partition_is_j_invariant(sim):
    values = transformed(sim.counts, "log1p", 1e4).toarray()
    genes = np.zeros(values.shape[1], dtype=bool)
    genes[::5] = True
    grid = np.array([3, 8])
    cells = Block(slice(0, len(values)), None, None)
    sweep = KNNAverage(n_pcs=5, random_state=0).held_out_genes(values, genes, np.zeros(len(values), int), grid)
    before = [p.copy() for _, p in sweep.predictions(cells)]
    changed = values.copy()
    changed[11, genes] += 7.0  # cell 11's own held-out values
    sweep = KNNAverage(n_pcs=5, random_state=0).held_out_genes(changed, genes, np.zeros(len(values), int), grid)
    after = [p.copy() for _, p in sweep.predictions(cells)]
    for b, a in zip(before, after, strict=True):
        assert a[11].tobytes() == b[11].tobytes()


def _truth(sim) -> np.ndarray:
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4, 1.0)
    return np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_choice_is_near_the_oracle(seed):
    """The calibrated n_neighbors' ground-truth error is within 1.05 x the best on the grid."""
    sim = simulate_low_rank_poisson(1200, 300, 8, mean_depth=600.0, seed=seed)
    grid = np.array([2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150])
    result = n2s.tl.calibrate(sim.counts, method=KNNAverage(n_pcs=10), grid=grid, random_state=seed, progress=False)
    model, data = fit(KNNAverage(n_pcs=10, random_state=0), transformed(sim.counts, "log1p", 1e4), grid)
    truth = _truth(sim)
    errors = np.array([np.mean((pred - truth) ** 2) for pred in predictions(model, data).values()])
    assert 2 < grid[errors.argmin()] < 150, "the simulator should have an interior optimum"
    assert errors[list(grid).index(result.best)] <= 1.05 * errors.min(), (result.best, grid[errors.argmin()])


def test_knn_noise2self_choice_is_near_the_oracle():
    sim = simulate_low_rank_poisson(1200, 300, 8, mean_depth=600.0, seed=0)
    grid = np.array([3, 5, 10, 20, 30, 50, 100, 150])
    result = n2s.tl.calibrate(sim.counts, method=KNNAverage(n_pcs=10), calibration="genes", grid=grid, progress=False)
    model, data = fit(KNNAverage(n_pcs=10, random_state=0), transformed(sim.counts, "log1p", 1e4), grid)
    truth = _truth(sim)
    errors = np.array([np.mean((pred - truth) ** 2) for pred in predictions(model, data).values()])
    assert errors[list(grid).index(result.best)] <= 1.10 * errors.min(), (result.best, grid[errors.argmin()])


@pytest.mark.parametrize(("n_cells", "n_genes"), [(2, 40), (4, 40), (300, 3)], ids=["2 cells", "4 cells", "3 genes"])
def test_the_default_grid_shrinks_to_what_tiny_data_allow(n_cells, n_genes):
    """Fewer cells than 5 neighbours or genes than 3 components: every value the data allow, not an empty grid."""
    from sc_noise2self.pp._pipeline import _graph_grid

    grid = _graph_grid(None, (n_cells, n_genes))
    assert grid.size and grid[:, 0].max() <= n_cells and grid[:, 1].max() <= min(n_cells, n_genes) - 1
    assert grid[:, 0].min() >= 2 and grid[:, 1].min() >= 1
    with pytest.raises(ValueError, match="too small for any n_pcs"):
        _graph_grid(None, (1, n_genes))


def test_the_default_grid_fits_a_small_gene_mask(adata):
    adata.var["highly_variable"] = np.arange(adata.n_vars) < 12
    n2s.pp.pca(adata, layer="counts", progress=False)
    grid = np.asarray(adata.uns["pca"]["calibration"]["grid"])
    assert grid[:, 1].max() <= 10 and adata.obsm["X_pca"].shape[1] <= 10
    assert not adata.varm["PCs"][12:].any()


@pytest.mark.parametrize("objective", ["neighbors", "reconstruction"])
def test_a_choice_at_the_default_grids_edge_sweeps_on(adata, monkeypatch, objective):
    # A default grid that stops short of the clusters' structure: the choice sits on its edge.
    if objective == "neighbors":
        monkeypatch.setattr(_pipeline, "_GRAPH_PCS", np.array([1, 2]))
    else:
        monkeypatch.setattr(n2s.denoisers.PCA, "default_grid", lambda self, shape: np.array([1, 2]))
    swept = n2s.pp.pca(adata, layer="counts", objective=objective, progress=False, copy=True)
    record = swept.uns["pca"]["calibration"]
    axis = record["grid_names"].index("n_pcs" if objective == "neighbors" else "n_comps")
    values = np.unique(np.asarray(record["grid"]).reshape(len(record["grid"]), -1)[:, axis]).tolist()
    assert values == [1, 2, 3, 4, 6, 8]  # 2 on the edge: on to 3 and 4; 4 on the edge again: on to 6 and 8 (twice)
    given = n2s.pp.pca(adata, layer="counts", objective=objective, grid=values, progress=False, copy=True)
    np.testing.assert_array_equal(given.uns["pca"]["calibration"]["loss"], record["loss"])  # as if given at once
    np.testing.assert_array_equal(given.obsm["X_pca"], swept.obsm["X_pca"])


def test_a_given_grid_is_never_extended(adata):
    result = n2s.pp.pca(adata, layer="counts", grid=[1, 2], progress=False, copy=True).uns["pca"]["calibration"]
    assert result["grid_edge"] == "n_pcs"
    assert sorted(set(np.asarray(result["grid"])[:, 1].tolist())) == [1, 2]
