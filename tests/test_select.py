"""Uncertainty of the choice: standard errors, the 1-SE rule, and choices at the grid's edge."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from sc_noise2self import pl, pp, tl
from sc_noise2self._engine.result import CalibrationResult, simplicity_rank

from .conftest import simulate_low_rank_poisson
from .test_calibrate import _truth_errors


def _result(loss, grid, names=("n_comps",), select="min") -> CalibrationResult:
    return CalibrationResult("pca", "mcv", names, np.asarray(grid), np.asarray(loss, dtype=float), select=select)


def test_standard_errors_are_paired_by_split():
    # Split 2 sits higher everywhere: a level shared by every grid value, not uncertainty of the comparison.
    loss = [[3.0, 2.0, 2.1, 2.5], [3.2, 2.1, 2.2, 2.4], [5.0, 4.0, 4.05, 4.6]]
    result = _result(loss, [1, 2, 3, 4])
    np.testing.assert_allclose(result.loss_se, np.std(loss, axis=0, ddof=1) / np.sqrt(3))
    differences = np.asarray(loss) - np.asarray(loss)[:, [1]]
    np.testing.assert_allclose(result.difference_se, np.std(differences, axis=0, ddof=1) / np.sqrt(3))
    assert result.difference_se[1] == 0 and result.difference_se[2] < 0.1 < result.loss_se[2]
    assert _result(loss[:1], [1, 2, 3, 4]).loss_se.tolist() == [0, 0, 0, 0]


def test_one_se_rule_takes_the_simplest_value_within_one_error():
    loss = [[3.0, 2.02, 2.0, 2.01], [3.1, 2.06, 2.1, 2.12], [2.9, 1.98, 1.9, 1.89]]
    assert _result(loss, [1, 2, 3, 4]).best == 3  # the minimum of the mean
    within = _result(loss, [1, 2, 3, 4], select="1se")
    assert within.best == 2 and within.best_index == 1  # 2.02 is within one paired error of 2.0
    far = _result([[3.0, 2.5, 2.0], [3.1, 2.6, 2.1]], [1, 2, 3], select="1se")
    assert far.best == 3  # nothing simpler is within reach: the minimum itself


def test_simplicity_is_ascending_axis_by_axis():
    grid = np.array([[0, 30], [1, 5], [0, 5], [2, 15]])  # (t, n_neighbors)
    assert simplicity_rank(grid).tolist() == [1, 2, 0, 3]
    assert simplicity_rank(np.array([5, 1, 3])).tolist() == [2, 0, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_se_choice_stays_near_the_oracle(seed):
    sim = simulate_low_rank_poisson(seed=seed)
    grid = np.arange(1, 31)
    result = tl.calibrate(sim.counts, grid=grid, n_splits=3, select="1se", random_state=seed, progress=False)
    errors = _truth_errors(sim, grid, "log1p", 1e4)
    assert result.best <= grid[np.argmin(result.loss_mean)]  # never more components than the minimum's
    assert errors[result.best - 1] <= 1.10 * errors.min(), (result.best, grid[np.argmin(errors)])


def test_noise2self_errors_come_from_gene_groups(simulation):
    result = tl.calibrate(
        simulation.counts, calibration="genes", grid=[1, 3, 6, 10], n_groups=5, select="1se", progress=False
    )
    assert result.loss.shape == (5, 4) and (result.difference_se >= 0).all()
    assert result.best in (1, 3, 6, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"select": "1se", "n_splits": 1}, "n_splits=3", id="one split"),
        pytest.param({"select": "max"}, "select", id="unknown"),
        pytest.param({"select": None}, "select", id="None"),
    ],
)
def test_bad_select_is_refused_before_any_work(simulation, kwargs, match):
    a = ad.AnnData(simulation.counts.copy())
    with pytest.raises(ValueError, match=match):
        pp.denoise(a, grid=[1, 2], progress=False, **kwargs)
    assert not a.uns and not a.layers


def test_default_splits_follow_the_held_out_depth_and_the_rule():
    """n_splits=None: three splits for a shallow held-out part or the 1-SE rule, one otherwise."""
    deep = simulate_low_rank_poisson(seed=0).counts  # 600 counts per cell: 60 held out
    shallow = simulate_low_rank_poisson(mean_depth=300.0, seed=0).counts  # 30 held out
    assert tl.calibrate(deep, grid=[1, 2], progress=False).loss.shape[0] == 1
    assert tl.calibrate(deep, grid=[1, 2], select="1se", progress=False).loss.shape[0] == 3
    assert tl.calibrate(shallow, grid=[1, 2], progress=False).params["n_splits"] == 3
    assert tl.calibrate(shallow, grid=[1, 2], n_splits=2, progress=False).params["n_splits"] == 2
    assert tl.calibrate(shallow, grid=[1, 2], split_fraction=0.5, progress=False).params["n_splits"] == 1
    with pytest.raises(ValueError, match="n_splits must be a positive integer"):
        tl.calibrate(deep, grid=[1, 2], n_splits=0, progress=False)


def test_uns_records_the_rule_the_errors_and_the_edge(simulation, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection

    a = ad.AnnData(simulation.counts.copy())
    pp.denoise(a, grid=[1, 2, 3], n_splits=3, select="1se", progress=False)  # the loss still falls at 3
    record = a.uns["denoised"]
    assert record["select"] == "1se" and record["grid_edge"] in ("n_comps", "")
    assert record["best_min"] == 3 and record["grid_edge"] == ("n_comps" if record["best"] == 3 else "")
    a.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["denoised"]
    for key in ("loss_se", "difference_se"):
        np.testing.assert_array_equal(back[key], record[key])
    ax = pl.calibration(ad.read_h5ad(tmp_path / "a.h5ad"), show=False)
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the ± 1 SE band
    assert "1-SE" in " ".join(t.get_text() for t in ax.get_legend().get_texts())


def test_a_choice_inside_the_grid_is_not_at_its_edge(simulation):
    result = tl.calibrate(simulation.counts, grid=np.arange(1, 31), progress=False)
    assert result.grid_edge == []
    edge = tl.calibrate(simulation.counts, grid=[1, 2], progress=False)
    assert edge.grid_edge == ["n_comps"]


def test_cell_groups_add_up_to_the_loss_and_give_an_error_with_one_split(simulation):
    result = tl.calibrate(simulation.counts, grid=np.arange(1, 16), n_splits=1, progress=False)
    groups = result.cell_group_loss
    assert groups.shape == (1, -(-simulation.counts.shape[0] // 256), 15)
    np.testing.assert_allclose(groups.sum(axis=1), result.loss, rtol=1e-12)
    assert result.difference_se.tolist() == [0] * 15  # one split: no error across splits
    se = result.cell_difference_se
    assert se[result.best_index] == 0 and (np.delete(se, result.best_index) > 0).all()


def test_the_error_across_cells_is_that_of_the_summed_differences():
    # Two cell groups, one split: the differences to the minimum (value 2) are 0.1 and 0.3 at value 1,
    # 0.05 and 0 at value 3; the error of a sum over two groups is √2 times their spread.
    groups = np.array([[[1.1, 1.0, 1.05], [2.3, 2.0, 2.0]]])
    result = CalibrationResult(
        "pca", "mcv", ("n_comps",), np.array([1, 2, 3]), groups.sum(axis=1), cell_group_loss=groups, n_cells=512
    )
    assert result.best == 2
    np.testing.assert_allclose(result.cell_difference_se, [0.2, 0, 0.05])
    np.testing.assert_array_equal(result.within_one_se, [1, 2])  # value 1 is 0.4 above (error 0.2); 3 is 0.05


def test_a_smaller_last_group_of_cells_is_not_taken_for_noise():
    # 300 cells: groups of 256 and 44. Every cell's difference is the same, so there is no noise.
    per_cell = np.array([0.002, 0.0, 0.001])
    groups = np.stack([256 * per_cell, 44 * per_cell])[None]
    result = CalibrationResult(
        "pca", "mcv", ("n_comps",), np.array([1, 2, 3]), groups.sum(axis=1), cell_group_loss=groups, n_cells=300
    )
    np.testing.assert_allclose(result.cell_difference_se, 0, atol=1e-15)
    np.testing.assert_array_equal(result.within_one_se, [1])


def test_a_flat_curve_is_reported_in_uns(simulation):
    import scanpy as sc

    a = ad.AnnData(simulation.counts.copy())  # rank-5 truth: the curve is flat well beyond it
    verbosity = sc.settings.verbosity
    try:
        sc.settings.verbosity = "info"
        pp.denoise(a, grid=[1, 3, 5, 8, 12, 20, 30], n_splits=1, progress=False)
    finally:
        sc.settings.verbosity = verbosity
    record = a.uns["denoised"]
    within = record["within_1se"]
    assert record["best"] in within and len(within) >= 2 and 1 not in within and 3 not in within
    assert record["difference_se_cells"].shape == (7,)


def test_an_edge_choice_on_a_flat_curve_is_said_to_be_flat(capsys):
    import sys

    import scanpy as sc

    from sc_noise2self._engine.result import warn_about_choice

    loss = [[3.0, 2.0, 1.91, 1.90, 1.89], [3.2, 2.2, 1.98, 2.01, 2.0], [2.8, 1.8, 1.75, 1.73, 1.74]]
    flat, steep = _result(loss, [10, 20, 30, 40, 50]), _result([[3.0, 2.0, 1.0]] * 3, [10, 20, 50])
    logfile = sc.settings.logfile
    try:
        sc.settings.logfile = sys.stderr
        warn_about_choice(flat)
        said_flat = capsys.readouterr().err
        warn_about_choice(steep)
        said_steep = capsys.readouterr().err
    finally:
        sc.settings.logfile = logfile
    assert flat.best == 50 and "on a flat curve (n_comps 30–50: 3 of 5 settings within one" in said_flat
    assert steep.best == 50 and "flat" not in said_steep and "largest value swept" in said_steep
