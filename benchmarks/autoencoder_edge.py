"""The autoencoder's default grid, with and without training the chosen width on past its last epoch.

Run: ``.venv/bin/python benchmarks/autoencoder_edge.py [--seeds 0 1]`` (not CI; minutes per seed on
2 cores).

Seeded low-rank Poisson simulator (``tests/conftest.py``: 2,000 cells × 200 genes, 8 programs,
~2,000 counts per cell). ``n2s.pp.denoise(method="autoencoder")`` at its defaults (bottleneck
4..128 × epochs 1..20, MCV, log1p), once as it is and once with sweeping on switched off
(``SWEEPS_ON = 0``), each in this process. Printed per seed: the choice, the truth error of the
written layer (mean squared error against ``E[log1p(s X)]`` under the true rates, ``s`` each
cell's scale) and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sc_noise2self as n2s
from sc_noise2self import _engine
from sc_noise2self._numerics.transform import cell_scales, expected_transform
from tests.conftest import simulate_low_rank_poisson


def run(seed: int, sweeps_on: int) -> tuple[object, float, float]:
    sim = simulate_low_rank_poisson(2000, 200, 8, mean_depth=2000.0, seed=seed)
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4)
    truth = np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])
    adata = ad.AnnData(sim.counts.copy())
    default, _engine.SWEEPS_ON = _engine.SWEEPS_ON, sweeps_on
    try:
        start = time.perf_counter()
        n2s.pp.denoise(adata, method=n2s.denoisers.Autoencoder(device="cpu"), random_state=seed, progress=False)
        seconds = time.perf_counter() - start
    finally:
        _engine.SWEEPS_ON = default
    error = float(np.mean((np.asarray(adata.layers["denoised"], dtype=np.float64) - truth) ** 2))
    return adata.uns["denoised"]["best"].tolist(), error, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    warm = ad.AnnData(simulate_low_rank_poisson(300, 50, 3, mean_depth=2000.0, seed=9).counts)
    n2s.pp.denoise(warm, method=n2s.denoisers.Autoencoder(device="cpu"), grid=[[4, 1]], progress=False)  # compiles
    print("| seed | sweep | choice (bottleneck, epochs) | truth error of the layer | wall time (s) |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        for label, sweeps_on in (("default grid only", 0), ("trains on past epoch 20", _engine.SWEEPS_ON)):
            best, error, seconds = run(seed, sweeps_on)
            print(f"| {seed} | {label} | {tuple(best)} | {error:.5f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
