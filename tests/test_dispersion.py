"""The sampling-dispersion check: quiet on molecule counts, firing on read counts, whose MCV halves are dependent."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self import _dispersion, tl
from sc_noise2self._dispersion import DEPENDENT_HALVES, sample_cells, sampling_dispersion
from sc_noise2self._transform import cell_scales
from sc_noise2self.denoisers import PCA

from .conftest import amplify, read_shared, simulate_clusters, simulate_low_rank_poisson, simulate_reads

GRID = np.arange(1, 31)


def _dispersion_of(counts: sparse.csr_matrix) -> float | None:
    counts = sparse.csr_matrix(counts)
    return sampling_dispersion(counts, np.asarray(counts.sum(axis=1)).ravel(), 0)


def _read_truth_errors(sim, mean_reads: float, n_draws: int = 32) -> np.ndarray:
    """Ground-truth MSE of the full-data PCA at every rank against E[log1p(s x)] for reads x given λ.

    E over fresh molecules and amplification from the true rates (Monte Carlo, ``n_draws``);
    scales from the observed totals, as the denoiser's.
    """
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4)[:, None]
    rng = np.random.default_rng(123)
    truth = np.zeros(sim.rates.shape)
    for _ in range(n_draws):
        truth += np.log1p(scales * amplify(rng, rng.poisson(sim.rates), mean_reads))
    truth /= n_draws
    values = n2s._transform.transformed(sim.counts, "log1p", 1e4)
    pca = PCA(random_state=0).fit(values, GRID)
    return np.array([np.mean((pred - truth) ** 2) for _, pred in pca.sweep_blocks(slice(None))])


@pytest.mark.parametrize("seed", [0, 1])
def test_read_counts_fire_the_check_where_mcv_under_smooths(seed):
    sim = simulate_reads(mean_reads=8.0, seed=seed)
    errors = _read_truth_errors(sim, 8.0)
    mcv = tl.calibrate(sim.counts, grid=GRID, random_state=seed, progress=False)
    # The failure the check exists for: dependent halves reward keeping the noise.
    assert errors[mcv.best - 1] >= 1.2 * errors.min(), (mcv.best, GRID[np.argmin(errors)])
    assert mcv.dependent_halves
    assert mcv.dispersion > 5  # φ = 2 · 8 - 1 = 15 for these reads
    # What the warning advises works: the gene partition does not split molecules.
    genes = tl.calibrate(
        sim.counts, grid=GRID, calibration="genes", transform="log1p", target_sum=1e4, random_state=seed, progress=False
    )
    assert genes.dispersion is None
    assert errors[genes.best - 1] <= 1.10 * errors.min(), (genes.best, GRID[np.argmin(errors)])


@pytest.mark.parametrize(("mean_reads", "low", "high"), [(2.0, 2.0, 3.5), (8.0, 10.0, 16.0)])
def test_the_check_estimates_the_reads_per_molecule_dispersion(mean_reads, low, high):
    # Reads 1 + Geometric: φ = E[A²] / E[A] = 2 · mean_reads - 1 (3 and 15); the rank-10 fit's
    # own noise biases it slightly down.
    assert low < _dispersion_of(simulate_reads(mean_reads=mean_reads).counts) < high


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param(lambda: simulate_low_rank_poisson(seed=0).counts, id="low-rank-seed0"),
        pytest.param(lambda: simulate_low_rank_poisson(seed=1).counts, id="low-rank-seed1"),
        pytest.param(lambda: simulate_low_rank_poisson(1200, 400, mean_depth=3000.0, seed=2).counts, id="deep"),
        pytest.param(lambda: simulate_clusters(seed=0).counts, id="clusters-with-rare-types"),
        pytest.param(lambda: n2s.datasets.pbmc2k().X, id="pbmc2k-bundled"),
        pytest.param(lambda: read_shared("pbmc8k.h5ad").X, id="pbmc8k"),
        pytest.param(lambda: _mouse10k().X, id="mouse10k"),
    ],
)
def test_molecule_counts_stay_quiet(counts):
    dispersion = _dispersion_of(counts())
    assert 0.9 < dispersion < 1.2 < DEPENDENT_HALVES


def _mouse10k() -> ad.AnnData:
    mouse = read_shared("mouse10k_first1000genes.h5ad")
    keep = np.asarray((mouse.X > 0).sum(axis=0)).ravel() >= 20
    return mouse[:, keep]


def test_every_mcv_writer_records_and_warns_once(monkeypatch):
    import scanpy as sc

    sim = simulate_reads(seed=3)
    adata = ad.AnnData(sim.counts.astype(np.float32))
    quiet = ad.AnnData(simulate_low_rank_poisson().counts.astype(np.float32))
    warned = []
    monkeypatch.setattr("sc_noise2self._calibrate.logg.warning", warned.append)  # scanpy's logg.warning
    n2s.pp.denoise(adata, grid=GRID, progress=False)
    n2s.pp.denoise(quiet, grid=GRID, progress=False)
    said = [msg for msg in warned if "Poisson sampling of molecules" in msg]
    assert len(said) == 1 and "calibration='genes'" in said[0]
    record = adata.uns["denoised"]
    assert record["dependent_halves"] and record["sampling_dispersion"] > DEPENDENT_HALVES
    assert not quiet.uns["denoised"]["dependent_halves"]
    # pp.pca records it under its scanpy key
    scanpy_like = adata.copy()
    sc.pp.normalize_total(scanpy_like, target_sum=1e4)
    sc.pp.log1p(scanpy_like)
    scanpy_like.layers["counts"] = adata.X.copy()
    n2s.pp.pca(scanpy_like, layer="counts", objective="reconstruction", grid=GRID, progress=False)
    assert scanpy_like.uns["pca"]["calibration"]["dependent_halves"]


def test_the_record_survives_h5ad(tmp_path):
    adata = ad.AnnData(simulate_reads(seed=4).counts.astype(np.float32))
    n2s.pp.denoise(adata, grid=GRID[:10], progress=False)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["denoised"]
    assert back["sampling_dispersion"] == adata.uns["denoised"]["sampling_dispersion"]
    assert bool(back["dependent_halves"]) is True


def test_the_check_is_the_same_for_dask_any_chunking_and_seeded(monkeypatch):
    import dask.array as da

    monkeypatch.setattr(_dispersion, "MAX_CELLS", 250)  # so that the cells are sampled
    counts = simulate_reads(seed=5).counts
    memory = tl.calibrate(counts, grid=GRID[:5], random_state=7, progress=False).dispersion
    for chunks in (100, 333):
        lazy = tl.calibrate(da.from_array(counts, chunks=(chunks, -1)), grid=GRID[:5], random_state=7, progress=False)
        assert lazy.dispersion == memory
    assert tl.calibrate(counts, grid=GRID[:5], random_state=7, progress=False).dispersion == memory
    assert tl.calibrate(counts, grid=GRID[:5], random_state=8, progress=False).dispersion != memory
    keep = sample_cells(600, 7)
    assert keep.sum() == 250 and np.array_equal(keep, sample_cells(600, 7))


def test_too_little_data_records_nothing():
    tiny = simulate_low_rank_poisson(11, 40, seed=0).counts  # fewer cells than the fit's rank + 2
    result = tl.calibrate(tiny, grid=[1, 2], progress=False)
    assert result.dispersion is None and not result.dependent_halves
    assert "sampling_dispersion" not in result.to_uns()
    shallow = sparse.csr_matrix(np.eye(60, 30, dtype=np.int32) * 3)  # no gene reaches 20 expected counts
    assert _dispersion_of(shallow) is None
