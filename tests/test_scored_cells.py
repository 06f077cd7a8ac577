"""Scoring a sample of the cells (``max_scored_cells``): which cells, the same bytes, the sums it gives."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pytest

from sc_noise2self import pp, tl
from sc_noise2self._engine.mcv import scored_cells
from sc_noise2self._numerics.rows import GROUP, CellSum, ScoredCells, partial_sum

from .conftest import simulate_low_rank_poisson

N_CELLS = 5 * GROUP + 40  # the last group is partial


@pytest.fixture(scope="module")
def counts():
    return simulate_low_rank_poisson(N_CELLS, 60, 3, mean_depth=300.0, seed=4).counts


def test_the_sample_is_whole_groups_drawn_by_seed():
    assert scored_cells(N_CELLS, None, 0).groups is None
    assert scored_cells(N_CELLS, N_CELLS, 0).groups is None  # no more cells than asked for
    sample = scored_cells(N_CELLS, 2 * GROUP + 100, 0)
    assert sample.groups.size == 2 and np.all(np.diff(sample.groups) > 0)
    assert scored_cells(N_CELLS, 2 * GROUP + 100, 0).groups.tolist() == sample.groups.tolist()
    draws = {tuple(scored_cells(N_CELLS, GROUP, seed).groups) for seed in range(20)}
    assert len(draws) > 1  # the seed decides
    assert scored_cells(N_CELLS, 1, 0).groups.size == 1  # fewer than a group: one group


def test_runs_and_counts_of_scored_cells():
    sample = ScoredCells(N_CELLS, np.array([1, 2, 5]))  # group 5 is the partial last one (40 cells)
    assert sample.n_scored == 2 * GROUP + 40
    assert sample.runs(slice(0, N_CELLS)) == [slice(GROUP, 3 * GROUP), slice(5 * GROUP, N_CELLS)]
    assert sample.runs(slice(GROUP + 10, 2 * GROUP + 3)) == [slice(GROUP + 10, 2 * GROUP + 3)]
    assert sample.runs(slice(3 * GROUP, 5 * GROUP)) == []
    assert sample.runs(slice(7, 7)) == []
    assert ScoredCells(N_CELLS).runs(slice(3, 9)) == [slice(3, 9)]
    assert ScoredCells(N_CELLS).n_scored == N_CELLS


def test_cell_sums_leave_out_whole_groups_only():
    values = np.random.default_rng(0).standard_normal((N_CELLS, 2))
    sample = ScoredCells(N_CELLS, np.array([0, 3, 5]))
    sums = set()
    for step in (N_CELLS, 37, GROUP):
        total = CellSum(2, sample)
        for a in range(0, N_CELLS, step):
            for run in sample.runs(slice(a, min(a + step, N_CELLS))):
                total.add_partial(partial_sum(run.start, values[run]))
        sums.add(total.group_sums().tobytes())
    assert len(sums) == 1
    want = [values[g * GROUP : (g + 1) * GROUP].sum(axis=0) for g in (0, 3, 5)]
    np.testing.assert_allclose(np.frombuffer(sums.pop()).reshape(-1, 2), want, rtol=1e-12)
    total = CellSum(1, sample)
    total.add(0, np.ones(10))
    with pytest.raises(RuntimeError, match="cell order"):  # a group left half-way
        total.add(GROUP, np.ones(3))
    total = CellSum(1, sample)
    total.add(0, np.ones(GROUP))
    with pytest.raises(RuntimeError, match="cell order"):  # group 3 is in the sample: it cannot be skipped
        total.add(4 * GROUP, np.ones(3))
    total = CellSum(1)
    total.add(0, np.ones(GROUP))
    with pytest.raises(RuntimeError, match="cell order"):  # without a sample nothing may be skipped
        total.add(2 * GROUP, np.ones(3))


def test_the_sample_gives_the_sums_of_its_groups_in_the_full_scoring(counts):
    full = tl.calibrate(counts, grid=[1, 2, 3, 5], n_splits=2, progress=False)
    part = tl.calibrate(counts, grid=[1, 2, 3, 5], n_splits=2, max_scored_cells=4 * GROUP, progress=False)
    groups = scored_cells(N_CELLS, 2 * GROUP, 0).groups  # the cells are shared among the splits: 2 groups each
    assert part.n_cells == 2 * GROUP and part.params["scored_cells"] == 2 * GROUP
    assert full.params["scored_cells"] == N_CELLS
    sums = full.cell_group_loss[:, groups].sum(axis=1) * full.n_cells / part.n_cells
    np.testing.assert_allclose(part.loss, sums, rtol=1e-12)
    np.testing.assert_allclose(part.cell_group_loss, full.cell_group_loss[:, groups] * full.n_cells / part.n_cells)
    assert part.baseline is not None and np.all(np.isfinite(part.difference_se))


def test_the_cells_to_score_are_shared_among_the_splits(counts):
    kwargs = {"grid": [1, 2], "max_scored_cells": 2 * GROUP, "progress": False}
    assert tl.calibrate(counts, n_splits=1, **kwargs).n_cells == 2 * GROUP
    assert tl.calibrate(counts, n_splits=2, **kwargs).n_cells == GROUP
    assert tl.calibrate(counts, n_splits=3, **kwargs).n_cells == GROUP  # one group at least


@pytest.mark.parametrize("method", ["pca", "diffusion"])
def test_the_sample_is_the_same_bytes_for_any_chunking_and_input_kind(counts, method):
    da = pytest.importorskip("dask.array")
    kwargs = {"method": method, "grid": [1, 2, 3], "max_scored_cells": 3 * GROUP, "progress": False}
    reference = tl.calibrate(counts, **kwargs)
    chunked = tl.calibrate(counts, chunk_size=37, **kwargs)
    assert chunked.loss.tobytes() == reference.loss.tobytes()
    for chunks in (100, 2 * GROUP):
        lazy = tl.calibrate(da.from_array(counts.toarray(), chunks=(chunks, -1)), **kwargs)
        assert lazy.best == reference.best
        np.testing.assert_allclose(lazy.loss, reference.loss, rtol=1e-9)


def test_denoise_records_and_logs_the_sample(counts, monkeypatch):
    adata = ad.AnnData(counts.astype(np.float32))
    said = []
    monkeypatch.setattr("sc_noise2self._engine.mcv.logg.info", lambda msg, **_: said.append(msg))
    pp.denoise(adata, grid=[1, 2, 3], max_scored_cells=GROUP, progress=False)
    assert f"    scoring {GROUP} of {N_CELLS:,} cells (a seeded sample; max_scored_cells)" in said
    params = adata.uns["denoised"]["params"]
    assert params["scored_cells"] == GROUP
    assert adata.layers["denoised"].shape == adata.shape  # every cell is still denoised
    assert np.isfinite(adata.uns["denoised"]["difference_se_cells"]).all()


def test_pipeline_drop_ins_take_the_setting(counts):
    adata = ad.AnnData(counts.astype(np.float32))
    pp.pca(adata, grid=[2, 3], max_scored_cells=GROUP, progress=False)
    assert adata.uns["pca"]["calibration"]["params"]["scored_cells"] == GROUP


def test_every_block_ordering_of_runs_is_covered():
    sample = ScoredCells(N_CELLS, np.array([0, 2, 4, 5]))
    cells = list(itertools.chain.from_iterable(range(r.start, r.stop) for r in sample.runs(slice(0, N_CELLS))))
    assert cells == [c for c in range(N_CELLS) if c // GROUP in (0, 2, 4, 5)]
