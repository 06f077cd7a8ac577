"""Noise2Self gene-partition calibration: J-invariance, choice against the truth, non-count data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self._engine.genes import random_groups
from sc_noise2self._numerics.loss import DataScorer
from sc_noise2self._numerics.transform import cell_scales, expected_transform, transformed
from sc_noise2self.denoisers import PCA, Block, Diffusion
from sc_noise2self.denoisers._search import knn_graph
from sc_noise2self.denoisers.diffusion import transition_matrix

from ._helpers import assert_same_layer, fit, out_of_core, predictions
from .conftest import grid_errors, regret, simulate_low_rank_poisson


def _cells(rows) -> Block:
    """A block named by its cells alone (a held-out sweep reads the data it was fitted on)."""
    return Block(rows, None, None)


def _predictions(sweep, n_cells):
    block = _cells(slice(0, n_cells))
    if sweep.order == "blocks":
        return {v: pred.copy() for v, pred in sweep.predictions(block)}
    return {step.value: step.predict(block) for step in sweep.values()}


@pytest.mark.parametrize(
    ("denoiser", "grid"),
    [
        pytest.param(Diffusion(n_comps=20), n2s.tl.grid(t=[0, 1, 2, 4], n_neighbors=[5, 15]), id="diffusion"),
        pytest.param(PCA(), np.array([1, 3, 8]), id="pca"),
    ],
)
def test_changing_a_cells_held_out_genes_leaves_its_prediction_unchanged(simulation, denoiser, grid):
    X = transformed(simulation.counts, "sqrt", None).toarray()
    n_cells, n_genes = X.shape
    genes = random_groups(n_genes, 10, 0, 3) == 0
    cells = random_groups(n_cells, 5, 0, 4)
    grid = denoiser.check_grid(grid, X.shape)
    before = _predictions(denoiser.held_out_genes(sparse.csr_matrix(X), genes, cells, grid), n_cells)
    changed = X.copy()
    changed[17, genes] = changed[17, genes] * 3 + 5  # one cell's held-out values
    after = _predictions(denoiser.held_out_genes(sparse.csr_matrix(changed), genes, cells, grid), n_cells)
    for value in before:
        np.testing.assert_array_equal(after[value][17], before[value][17])  # exactly J-invariant
    # while other cells of the data did see the change (the check has teeth)
    assert any(not np.array_equal(after[v], before[v]) for v in before)


def test_diffusion_walks_that_avoid_a_cell_group_match_a_plain_reference(simulation):
    """Each cell group's walk (columns of the group removed, rows renormalised), stepped in float64 by scipy."""
    X = transformed(simulation.counts, "sqrt", None)
    n_cells, n_genes = X.shape
    genes = random_groups(n_genes, 10, 0, 3) == 0
    cells = random_groups(n_cells, 5, 0, 4)
    denoiser = Diffusion(n_comps=20, random_state=0)
    grid = denoiser.check_grid(n2s.tl.grid(t=[0, 1, 3], n_neighbors=[1, 15]), X.shape)
    predictions = _predictions(denoiser.held_out_genes(X, genes, cells, grid), n_cells)
    embedding = denoiser._held_out_pca.other_genes_scores(X, genes, denoiser.n_pcs)
    target = X[:, genes].toarray()
    checked_stranded = False
    operators = denoiser._operators(embedding, grid, cell_groups=5)
    distances, indices = knn_graph(embedding, 19)
    for k, listed in ((1, 2), (15, 19)):  # ceil(k * 5 / 4): about k neighbours outside any one group
        assert (operators[k] != transition_matrix(distances[:, :listed], indices[:, :listed])).nnz == 0
    # t = 0: the J-invariant rank-20 PCA reconstruction (n_comps), as the PCA gene partition predicts it.
    rank = PCA(random_state=0).held_out_genes(X, genes, cells, np.array([denoiser.n_comps]))
    (_, reconstruction), *_ = rank.predictions(_cells(slice(0, n_cells)))
    for k, P in operators.items():
        for c in range(5):
            inside, outside = cells == c, (cells != c).astype(float)
            kept = P @ sparse.diags(outside)
            sums = np.asarray(kept.sum(axis=1)).ravel()
            walk = sparse.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)) @ kept
            for t in (0, 1, 3):
                expected = np.linalg.matrix_power(walk.toarray(), t) @ target
                stranded = inside & (sums == 0)  # cells whose every neighbour is in their group
                expected[stranded] = reconstruction[stranded]
                checked_stranded |= t > 0 and bool(np.any(stranded))
                if t == 0:
                    expected[inside] = reconstruction[inside]
                np.testing.assert_allclose(predictions[(t, k)][inside], expected[inside], rtol=2e-5, atol=1e-5)
    assert checked_stranded  # k = 1 leaves some cells with neighbours in their own group only


def _pca_truth_errors(sim, grid):
    truth = expected_transform(sim.rates.ravel(), [1.0], "sqrt")[0].reshape(sim.rates.shape)
    return np.array(list(grid_errors(transformed(sim.counts, "sqrt", None), truth, "pca", grid).values()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pca_gene_partition_choice_is_near_the_oracle(seed):
    sim = simulate_low_rank_poisson(seed=seed)
    grid = np.arange(1, 31)
    errors = _pca_truth_errors(sim, grid)
    result = n2s.tl.calibrate(sim.counts, calibration="genes", grid=grid, random_state=seed, progress=False)
    assert result.loss.shape == (10, 30)
    assert errors[result.best - 1] <= 1.10 * errors.min(), (result.best, errors.argmin() + 1)


def test_diffusion_gene_partition_choice_is_near_the_oracle(simulation):
    grid = n2s.tl.grid(t=range(11), n_neighbors=[5, 15, 30])
    truth = expected_transform(simulation.rates.ravel(), [1.0], "sqrt")[0].reshape(simulation.rates.shape)
    model, data = fit(
        Diffusion(random_state=0),
        transformed(simulation.counts, "sqrt", None),
        Diffusion().check_grid(grid, simulation.counts.shape),
    )
    errors = {v: np.mean((p - truth) ** 2) for v, p in predictions(model, data).items()}
    result = n2s.tl.calibrate(simulation.counts, method="diffusion", calibration="genes", grid=grid, progress=False)
    assert errors[result.best] <= 1.10 * min(errors.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_diffusion_gene_partition_matches_the_outputs_neighbourhood_on_deep_data(seed):
    """Deep cells (2,000 UMIs), where little smoothing is best: the walks that avoid a cell group lose that
    group's share of each neighbourhood, and without a wider graph chose one step too many (regret 1.13-1.14)."""
    sim = simulate_low_rank_poisson(2_500, 800, mean_depth=2_000.0, seed=seed)
    grid = n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4)
    truth = np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])
    errors = grid_errors(transformed(sim.counts, "log1p", 1e4), truth, "diffusion", grid)
    result = n2s.tl.calibrate(
        sim.counts, method="diffusion", calibration="genes", grid=grid, random_state=seed, progress=False
    )
    assert regret(errors, result.best) <= 1.10, (result.best, min(errors, key=errors.get))


@pytest.mark.parametrize(("method", "cls", "groups"), [("diffusion", Diffusion, 3), ("pca", PCA, 5)])
def test_a_method_sets_its_number_of_cell_groups(simulation, monkeypatch, method, cls, groups):
    seen = []
    original = cls.held_out_genes

    def spy(self, X, genes, cell_groups, grid):
        seen.append(int(cell_groups.max()) + 1)
        return original(self, X, genes, cell_groups, grid)

    monkeypatch.setattr(cls, "held_out_genes", spy)
    n2s.tl.calibrate(simulation.counts, method=method, calibration="genes", grid=[1, 2], progress=False)
    assert set(seen) == {groups} and len(seen) == 10


def test_diffusion_gene_partition_can_choose_no_smoothing_on_very_deep_cells():
    """At 100,000 UMIs no smoothing (t = 0, the PCA reconstruction) is best; the gene partition's t = 0 is that
    reconstruction's J-invariant form (it predicted the other cell groups' mean, never chosen: regret 1.49)."""
    sim = simulate_low_rank_poisson(600, 300, mean_depth=100_000.0, seed=0)
    grid = n2s.tl.grid(t=range(5), n_neighbors=[5, 15, 30])
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4)
    truth = np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])
    errors = grid_errors(transformed(sim.counts, "log1p", 1e4), truth, "diffusion", grid)
    assert min(errors, key=errors.get)[0] == 0
    result = n2s.tl.calibrate(sim.counts, method="diffusion", calibration="genes", grid=grid, progress=False)
    assert result.best[0] == 0 and regret(errors, result.best) <= 1.02


def test_gene_partition_works_on_values_that_are_not_counts(simulation):
    lognorm = np.log1p(simulation.counts.toarray() / simulation.counts.sum(axis=1).A * 1e4)
    adata = ad.AnnData(sparse.csr_matrix(lognorm))
    with pytest.raises(ValueError, match="transform='none'"):
        n2s.pp.denoise(adata, calibration="genes", progress=False)
    with pytest.raises(ValueError, match=r"calibration=.genes., transform=.none., target_sum=None"):
        n2s.pp.denoise(adata, progress=False)  # MCV needs counts; the message points to the other strategy
    n2s.pp.denoise(adata, calibration="genes", transform="none", target_sum=None, grid=range(1, 31), progress=False)
    info = adata.uns["denoised"]
    assert info["calibration"] == "genes" and 3 <= info["best"] <= 20
    scaled = ad.AnnData((lognorm - lognorm.mean(axis=0)) / lognorm.std(axis=0))  # negative values too
    n2s.pp.denoise(scaled, calibration="genes", transform="none", target_sum=None, grid=range(1, 31), progress=False)
    assert 3 <= scaled.uns["denoised"]["best"] <= 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "poisson"}, "loss='mse'"),
        ({"n_groups": 1}, "n_groups must lie in 2.."),
        ({"calibration": "cells"}, "calibration must be"),
    ],
)
def test_gene_partition_bad_arguments(simulation, kwargs, match):
    with pytest.raises(ValueError, match=match):
        n2s.tl.calibrate(simulation.counts, **{"calibration": "genes", **kwargs}, progress=False)


@pytest.mark.parametrize("method", ["pca", "diffusion"])
@pytest.mark.parametrize("calibration", ["mcv", "genes"])
def test_same_seed_same_bytes(simulation, method, calibration):
    grid = [1, 2, 4] if method == "diffusion" else [2, 5, 8]
    runs = []
    for _ in range(2):
        a = ad.AnnData(simulation.counts.copy())
        n2s.pp.denoise(a, method=method, calibration=calibration, grid=grid, random_state=7, progress=False)
        runs.append((a.layers["denoised"].tobytes(), a.uns["denoised"]["loss"].tobytes()))
    assert runs[0] == runs[1]


def _two_level_groups(n_cells: int) -> np.ndarray:
    return random_groups(n_cells, 5, 0, 4)


def test_cross_fitted_regression_is_least_squares_on_the_other_cell_groups():
    from sc_noise2self.denoisers.pca import _cross_fitted_regression

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 6)) * np.geomspace(10, 0.1, 6)
    target = scores[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(200, 4))
    groups = _two_level_groups(200)
    coefs, offsets, loadings = _cross_fitted_regression(scores, target, groups)
    for g in range(5):
        inside = groups == g
        for k in (1, 3, 6):
            design = np.column_stack([np.ones((~inside).sum()), scores[~inside, :k]])
            beta = np.linalg.lstsq(design, target[~inside], rcond=None)[0]
            expected = np.column_stack([np.ones(inside.sum()), scores[inside, :k]]) @ beta
            got = offsets[g] + coefs[inside, :k] @ loadings[g][:k]
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_cross_fitted_regression_falls_back_to_qr(monkeypatch):
    from sc_noise2self.denoisers import pca

    rng = np.random.default_rng(1)
    scores, target, groups = rng.normal(size=(100, 4)), rng.normal(size=(100, 3)), _two_level_groups(100)
    cholesky = pca._cross_fitted_regression(scores, target, groups)

    def refuse(*args, **kwargs):
        raise pca.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(pca.linalg, "cholesky", refuse)
    qr = pca._cross_fitted_regression(scores, target, groups)
    for g in range(5):  # R differs in sign between the two factorisations; the predictions do not
        inside = groups == g
        np.testing.assert_allclose(
            qr[1][g] + qr[0][inside] @ qr[2][g], cholesky[1][g] + cholesky[0][inside] @ cholesky[2][g], atol=1e-10
        )


def test_gene_groups_share_one_gram_matrix_and_a_change_in_place_refreshes_it(simulation, monkeypatch):
    from sc_noise2self.denoisers import pca

    calls = []
    real = pca.gram_stats
    monkeypatch.setattr(pca, "gram_stats", lambda X: calls.append(X.shape) or real(X))
    n2s.tl.calibrate(simulation.counts, calibration="genes", n_groups=4, grid=[1, 2, 5], progress=False)
    assert calls == [simulation.counts.shape]  # once for all four gene groups
    X = transformed(simulation.counts, "sqrt", None).toarray()
    genes, cells = random_groups(X.shape[1], 4, 0, 3) == 0, _two_level_groups(X.shape[0])
    denoiser, grid = PCA(), np.array([2, 5])
    first = _predictions(denoiser.held_out_genes(X, genes, cells, grid), X.shape[0])
    X[:, ~genes] *= 2.0  # the same array, other values: the cached Gram matrix must not be reused
    second = _predictions(denoiser.held_out_genes(X, genes, cells, grid), X.shape[0])
    fresh = _predictions(PCA().held_out_genes(X.copy(), genes, cells, grid), X.shape[0])
    for value in first:
        np.testing.assert_array_equal(second[value], fresh[value])


def test_fused_gene_partition_errors_equal_the_block_sweep(simulation):
    X = sparse.csr_matrix(transformed(simulation.counts, "log1p", 1e4))
    genes, cells = random_groups(X.shape[1], 10, 0, 3) == 0, _two_level_groups(X.shape[0])
    sweep = PCA().held_out_genes(X, genes, cells, np.array([1, 4, 9]))
    rows = slice(100, 400)
    target = X[rows][:, genes].toarray()
    assert sweep.fuses("data") and not sweep.fuses("held_out")
    fused = {}
    for lower in (-np.inf, 0.0):  # as written for any data, and for data without negative values
        preds = [np.maximum(pred, lower) for _, pred in sweep.predictions(_cells(rows))]
        unfused = np.stack([np.sum((pred - target) ** 2, axis=1) for pred in preds], axis=1)
        fused[lower] = sweep.losses(_cells(rows), DataScorer(target, lower))
        np.testing.assert_allclose(fused[lower], unfused, rtol=1e-10)
    # the projection onto ≥ 0 never raises a cell's error against non-negative data, and here lowers some
    assert np.all(fused[0.0] <= fused[-np.inf] + 1e-12) and np.any(fused[0.0] < fused[-np.inf] - 1e-9)


def test_a_pca_used_for_gene_groups_still_pickles(simulation):
    import pickle

    X = transformed(simulation.counts, "sqrt", None)
    denoiser = PCA()
    denoiser.held_out_genes(X, random_groups(X.shape[1], 4, 0, 3) == 0, _two_level_groups(X.shape[0]), np.array([2]))
    copy = pickle.loads(pickle.dumps(denoiser))
    assert repr(copy) == repr(denoiser) and getattr(copy, "_gram_cache", None) is None


@pytest.mark.parametrize(
    ("method", "grid"), [("pca", [1, 2, 4, 6]), ("diffusion", [0, 1, 2, 4]), ("knn", [2, 5, 10])], ids=str
)
def test_the_gene_partition_out_of_core_gives_the_in_memory_result(simulation, method, grid, tmp_path):
    """Dask (two chunkings), backed and lazily read counts: the same curve and choice, and for PCA and diffusion
    the same layer from pp.denoise."""
    pytest.importorskip("dask.array")
    settings = {"method": method, "calibration": "genes", "grid": grid, "progress": False}
    counts = ad.AnnData(simulation.counts.astype(np.float32))
    memory = counts.copy()
    expected = n2s.tl.calibrate(memory, **settings)
    if method != "knn":
        n2s.pp.denoise(memory, max_dense_bytes=1, **settings)
    for kind, other in out_of_core(counts, tmp_path):
        got = n2s.tl.calibrate(other, **settings)
        assert got.best == expected.best, kind
        np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-9, err_msg=kind)
        if method != "knn":
            n2s.pp.denoise(other, **settings)
            assert_same_layer(other, memory, kind)
