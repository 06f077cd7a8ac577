"""Seeded synthetic counts shared by the timing benchmarks, and their timer; imports nothing of the package."""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse


def simulate(n_cells: int, n_genes: int, depth: float, seed: int = 0) -> sparse.csr_matrix:
    """Cells mix 10 gene programs; gene abundances spread log-normally (σ = 2), as in 10x data."""
    return simulate_with_rates(n_cells, n_genes, depth, seed)[0]


def simulate_with_rates(
    n_cells: int, n_genes: int, depth: float, seed: int = 0
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """:func:`simulate`'s counts and their Poisson rates (the truth), genes never seen dropped from both."""
    rng = np.random.default_rng(seed)
    baseline = rng.lognormal(0.0, 2.0, n_genes)
    programs = rng.gamma(0.4, 1.0, size=(10, n_genes)) * np.geomspace(3, 0.3, 10)[:, None] * baseline
    profile = baseline + rng.dirichlet(np.full(10, 0.3), size=n_cells) @ programs
    profile /= profile.sum(axis=1, keepdims=True)
    rates = depth * rng.lognormal(0, 0.4, (n_cells, 1)) * profile
    counts = sparse.csr_matrix(rng.poisson(rates), dtype=np.int32)
    keep = np.asarray(counts.sum(axis=0)).ravel() > 0
    return counts[:, keep], rates[:, keep]


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)
