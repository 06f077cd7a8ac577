"""Shared fixtures: a seeded low-rank Poisson simulator with known truth, and real data."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker starts on one thread (numba, BLAS, torch), so workers share the cores.

    The notebooks' kernels, started by a worker, inherit one BLAS and torch thread. A test that needs more
    threads sets them itself (``numba.set_num_threads(2)``); results do not depend on the thread
    count, so only the time changes.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import numba  # first: its pool keeps every core for the tests that ask for them
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    config._thread_limits = threadpool_limits(1)  # held for the session
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(1)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # not numba's: it rereads it
        os.environ[name] = "1"  # for the processes this worker starts (the notebooks' kernels)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


_THREAD_SETTINGS = re.compile(r"^(OMP|MKL|OPENBLAS|NUMBA|NUMEXPR)_(NUM|MAX)_THREADS$|^VECLIB_MAXIMUM_THREADS$")


@pytest.fixture(autouse=True, scope="module")
def _thread_settings_left_as_found():
    """Every test module leaves the environment's thread counts as it found them.

    Processes started later inherit them: an ``OMP_NUM_THREADS=1`` left behind (as dask's
    ``LocalCluster`` leaves it) runs the notebooks' kernels, and torch in them, on one thread.
    (Libraries set other variables of their own when first loaded; those are not checked.)
    """

    def settings() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if _THREAD_SETTINGS.match(k)}

    before = settings()
    yield
    after = settings()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"this test module changed the thread counts of later processes: {changed}"


@dataclass
class Simulation:
    counts: sparse.csr_matrix
    """Observed UMI counts, cells × genes (int32 CSR)."""
    rates: np.ndarray
    """True Poisson rates λ, cells × genes."""


def simulate_low_rank_poisson(
    n_cells: int = 600,
    n_genes: int = 300,
    n_programs: int = 8,
    *,
    mean_depth: float = 600.0,
    seed: int = 0,
) -> Simulation:
    """Counts ~ Poisson(λ) with λ = depth_c · (memberships @ programs), exactly low rank.

    Cells mix ``n_programs`` gene programs with Dirichlet weights; programs have
    decreasing strength, so the best denoising rank is data-dependent rather than
    simply ``n_programs``. Depth varies log-normally between cells.
    """
    rng = np.random.default_rng(seed)
    baseline = rng.gamma(0.6, 1.0, size=n_genes)
    programs = rng.gamma(0.5, 1.0, size=(n_programs, n_genes)) * np.geomspace(3.0, 0.3, n_programs)[:, None]
    memberships = rng.dirichlet(np.full(n_programs, 0.3), size=n_cells)
    return Simulation(*_sample(rng, baseline + memberships @ programs, mean_depth))


def _sample(rng: np.random.Generator, profile: np.ndarray, mean_depth: float) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Counts ~ Poisson(depth_c · profile_c / sum), depth log-normal per cell; genes never seen dropped."""
    profile = profile / profile.sum(axis=1, keepdims=True)
    rates = mean_depth * rng.lognormal(0.0, 0.4, size=len(profile))[:, None] * profile
    counts = rng.poisson(rates)
    keep = counts.sum(axis=0) > 0
    return sparse.csr_matrix(counts[:, keep], dtype=np.int32), rates[:, keep]


def _log_series_parameter(mean_reads: float) -> float:
    """``q`` of the logarithmic distribution with this mean, ``-q / ((1 - q) log(1 - q))`` (bisection)."""
    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(100):
        q = (lo + hi) / 2
        lo, hi = (q, hi) if -q / ((1 - q) * np.log1p(-q)) < mean_reads else (lo, q)
    return (lo + hi) / 2


def amplify(rng: np.random.Generator, molecules: np.ndarray, mean_reads: float, law: str = "geometric") -> np.ndarray:
    """Reads from molecule counts: each molecule gives ``mean_reads`` reads on average.

    ``law="geometric"``: ``1 + Geometric`` reads per molecule, so ``φ = 2 mean_reads - 1``.
    ``law="logarithmic"``: logarithmic-series reads per molecule, ``φ = 1 / (1 - q)``; Poisson
    molecules amplified so are exactly negative binomial with size proportional to the rate.
    """
    if law == "logarithmic":
        draws = rng.logseries(_log_series_parameter(mean_reads), size=int(molecules.sum()))
        entry = np.repeat(np.arange(molecules.size), molecules.ravel().astype(np.int64))
        return np.bincount(entry, weights=draws, minlength=molecules.size).astype(np.int64).reshape(molecules.shape)
    reads = molecules.copy()
    some = molecules > 0
    reads[some] += rng.negative_binomial(molecules[some], 1.0 / mean_reads)
    return reads


def read_dispersion(mean_reads: float, law: str = "geometric") -> float:
    """``φ = E[A²] / E[A]`` of the reads per molecule ``A`` under :func:`amplify`."""
    return 2 * mean_reads - 1 if law == "geometric" else 1 / (1 - _log_series_parameter(mean_reads))


def simulate_reads(
    n_cells: int = 600,
    n_genes: int = 300,
    *,
    mean_depth: float = 200.0,
    mean_reads: float = 8.0,
    law: str = "geometric",
    seed: int = 0,
) -> Simulation:
    """Read counts without UMIs (Smart-seq2-like) from :func:`simulate_low_rank_poisson`'s molecules.

    True molecule rates λ from the low-rank model, molecules ~ Poisson(λ), each molecule
    amplified into reads by :func:`amplify` (``law``, ``mean_reads`` on average): the reads
    have variance ``φ μ`` given the cell (:func:`read_dispersion`). ``rates`` are the molecule
    rates; draw more reads from them with :func:`amplify` for a ground truth.
    """
    molecules = simulate_low_rank_poisson(n_cells, n_genes, mean_depth=mean_depth, seed=seed)
    rng = np.random.default_rng([seed, 1])
    reads = amplify(rng, molecules.counts.toarray(), mean_reads, law)
    keep = reads.sum(axis=0) > 0
    return Simulation(sparse.csr_matrix(reads[:, keep], dtype=np.int32), molecules.rates[:, keep])


def grid_errors(values: sparse.csr_matrix, truth: np.ndarray, method: str, grid: np.ndarray) -> dict:
    """Mean squared error against ``truth`` of the denoiser fitted on ``values``, at every grid value.

    ``method``: ``"pca"`` (ranks; keys are ints) or ``"diffusion"`` (``(t, n_neighbors)`` rows; keys
    are tuples), as ``result.best`` reads through :func:`regret`.
    """
    from sc_noise2self.denoisers import PCA, Diffusion

    from ._helpers import fit, predictions

    if method == "pca":
        model, data = fit(PCA(random_state=0), values, grid)
        return {int(k): float(np.mean((pred - truth) ** 2)) for k, pred in predictions(model, data).items()}
    model, data = fit(Diffusion(random_state=0), values, Diffusion().check_grid(grid, values.shape))
    return {tuple(v): float(np.mean((pred - truth) ** 2)) for v, pred in predictions(model, data).items()}


def regret(errors: dict, best: object) -> float:
    """Error at the chosen grid value over the best on the grid (:func:`grid_errors`)."""
    return errors[best if np.ndim(best) == 0 else tuple(np.asarray(best).tolist())] / min(errors.values())


@dataclass
class ClusterSimulation(Simulation):
    labels: np.ndarray
    """True cell type of each cell."""


CLUSTER_SHARES = (0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02)


def simulate_clusters(
    n_cells: int = 2000,
    n_genes: int = 1000,
    *,
    mean_depth: float = 1000.0,
    spread: float = 0.5,
    gradient: float = 1.0,
    seed: int = 0,
) -> ClusterSimulation:
    """Counts ~ Poisson(λ) from eight cell types, with a cell-state gradient inside each.

    Four lineages, each split into two close subtypes (a third of the lineage
    difference); types hold 30 % down to 2 % of the cells (a rare one); within its type
    each cell sits at a uniform position along the type's own gradient of expression
    (an activation state), so neighbours far along it differ. Depth varies
    log-normally between cells.
    """
    rng = np.random.default_rng(seed)
    n_types = len(CLUSTER_SHARES)
    baseline = rng.gamma(0.6, 1.0, size=n_genes)
    lineages = np.repeat(rng.gamma(0.4, 1.0, size=(n_types // 2, n_genes)) * spread, 2, axis=0)
    centroids = lineages + rng.gamma(0.4, 1.0, size=(n_types, n_genes)) * spread * 0.35
    labels = rng.choice(n_types, size=n_cells, p=np.array(CLUSTER_SHARES))
    gradients = rng.gamma(0.4, 1.0, size=(n_types, n_genes)) * gradient
    profile = baseline + centroids[labels] + rng.uniform(size=n_cells)[:, None] * gradients[labels]
    return ClusterSimulation(*_sample(rng, profile, mean_depth), labels)


@pytest.fixture(scope="session")
def simulation() -> Simulation:
    return simulate_low_rank_poisson()


@pytest.fixture
def small_counts() -> sparse.csr_matrix:
    """A tiny count matrix (60 cells × 40 genes) for fast checks of every array type."""
    return simulate_low_rank_poisson(60, 40, 3, mean_depth=200.0, seed=1).counts


def read_shared(filename: str):
    """An AnnData from ../shared/data, or skip the test when the shared data is absent."""
    import anndata as ad

    path = SHARED_DATA / filename
    if not path.exists():
        pytest.skip(f"{path} not found (shared data sits beside the checkout)")
    return ad.read_h5ad(path)


@pytest.fixture(scope="session")
def pbmc8k():
    return read_shared("pbmc8k.h5ad")
