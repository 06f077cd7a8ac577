"""The autoencoder's default grid, and where sweeping on past its edge takes the choice.

Run: ``.venv/bin/python benchmarks/autoencoder_edge.py [--seeds 0 1] [--data sim bundled mouse10k pbmc8k]``
(not CI; about 40 minutes for everything on 2 cores).

``n2s.pp.denoise(method="autoencoder")`` at its defaults (bottleneck 4..128 × epochs 1..20, MCV,
log1p). Where the default grid's last epoch is chosen the chosen width trains on to epoch 40;
where its widest width (128) is chosen a network twice as wide is trained over the same epochs.

- ``sim``: the seeded low-rank Poisson simulator (``tests/conftest.py``: 2,000 cells × 200
  genes, 8 programs, ~2,000 counts per cell), once with sweeping on switched off
  (``SWEEPS_ON = 0``) and once as it is; the truth error of each written layer (mean squared
  error against ``E[log1p(s X)]`` under the true rates, ``s`` each cell's scale).
- ``bundled`` (PBMC 2k × 1,000 genes), ``mouse10k`` (10,000 cells, the 475 genes seen in ≥ 20
  cells, a shallow 10x set), ``pbmc8k`` (its 2,000 most detected genes): one run as it is; the
  choice on the default grid alone is read off the same curve (the added values are calibrated
  on the same splits, so the default grid's losses are the ones a run without them gives).

Printed per run: the choice, whether it sits on the swept grid's edge (``uns["grid_edge"]``),
the best loss of each width, and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _real_data import mouse10k, pbmc8k

import sc_noise2self as n2s
from sc_noise2self import _engine
from sc_noise2self._numerics.transform import cell_scales, expected_transform
from tests.conftest import simulate_low_rank_poisson


def _simulated(seed: int) -> tuple[ad.AnnData, np.ndarray]:
    sim = simulate_low_rank_poisson(2000, 200, 8, mean_depth=2000.0, seed=seed)
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), 1e4)
    truth = np.stack([expected_transform(r, [s], "log1p")[0] for r, s in zip(sim.rates, scales, strict=True)])
    return ad.AnnData(sim.counts.copy()), truth


def _denoise(adata: ad.AnnData, seed: int, sweeps_on: int) -> tuple[dict, float]:
    default, _engine.SWEEPS_ON = _engine.SWEEPS_ON, sweeps_on
    try:
        start = time.perf_counter()
        n2s.pp.denoise(adata, method=n2s.denoisers.Autoencoder(device="cpu"), random_state=seed, progress=False)
        return adata.uns["denoised"], time.perf_counter() - start
    finally:
        _engine.SWEEPS_ON = default


def _row(data: str, shape: tuple[int, int], record: dict, seconds: float, error: str) -> str:
    grid, loss = np.asarray(record["grid"]), np.asarray(record["loss_mean"])
    defaults = set(map(tuple, n2s.denoisers.Autoencoder().default_grid(shape).tolist()))
    default = np.array([tuple(row) in defaults for row in grid.tolist()])
    first = tuple(grid[default][np.argmin(loss[default])].tolist())
    widths = ", ".join(f"{w}: {loss[grid[:, 0] == w].min():.5f}" for w in np.unique(grid[:, 0]))
    edge = ", ".join(np.atleast_1d(record["grid_edge"]).tolist()) or "inside"
    best = tuple(np.asarray(record["best"]).tolist())
    return f"| {data} | {first} | {best} | {edge} | {widths} | {error} | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data", nargs="+", default=["sim", "bundled", "mouse10k", "pbmc8k"])
    args = parser.parse_args()
    warm = ad.AnnData(simulate_low_rank_poisson(300, 50, 3, mean_depth=2000.0, seed=9).counts)
    n2s.pp.denoise(warm, method=n2s.denoisers.Autoencoder(device="cpu"), grid=[[4, 1]], progress=False)  # compiles
    print(
        "| data | choice on the default grid | choice, sweeping on | on the edge | best loss per width "
        "| truth error of the layer | wall time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for data in args.data:
        if data == "sim":
            for seed in args.seeds:
                for label, sweeps_on in (("default grid only", 0), ("sweeping on", _engine.SWEEPS_ON)):
                    adata, truth = _simulated(seed)
                    record, seconds = _denoise(adata, seed, sweeps_on)
                    error = np.mean((np.asarray(adata.layers["denoised"], dtype=np.float64) - truth) ** 2)
                    row = _row(f"simulator, seed {seed}, {label}", adata.shape, record, seconds, f"{error:.5f}")
                    print(row, flush=True)
            continue
        adata = {"bundled": n2s.datasets.pbmc2k, "mouse10k": mouse10k, "pbmc8k": pbmc8k}[data]()
        record, seconds = _denoise(adata, 0, _engine.SWEEPS_ON)
        print(_row(f"{data} ({adata.n_obs:,} × {adata.n_vars:,})", adata.shape, record, seconds, "–"), flush=True)


if __name__ == "__main__":
    main()
