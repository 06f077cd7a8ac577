"""How calibrated denoising scales with cells: 100k in memory, 100k and 1M from disk via dask.

Run: ``.venv/bin/python benchmarks/scale.py`` (not CI; writes ~4.5 GB of h5ad under
``benchmarks/.data/`` the first time, which takes a few minutes). Options:
``--cells 100000 1000000``, ``--genes 2000``, ``--depth 1500``, ``--method pca|diffusion|autoencoder``.

Data: seeded sparse Poisson counts from 10 gene programs with log-normal gene abundances
(the generator of ``pca_sweep.py``), ~1,500 UMIs per cell, generated and appended to an
on-disk CSR in blocks of 20,000 cells, so the full matrix is never in memory.

Each run is its own process, so its peak RSS (``ru_maxrss``) is its own:

- ``memory``: ``anndata.read_h5ad`` loads the CSR, then ``pp.denoise(adata)``;
- ``disk``: ``anndata.experimental.read_elem_lazy`` gives a dask array of CSR chunks of
  20,000 cells; ``pp.denoise(adata)`` calibrates block by block (dask's threads) and writes
  factors with a lazy layer (PCA, diffusion), or, for the autoencoder, trains by streaming
  minibatches from the blocks (each read once per epoch) and writes a lazy layer that runs
  the networks block by block; the run then computes that layer once, block by block, as
  writing it to disk would (``layer_s``).

Same call otherwise: the method's default grid (PCA: ranks 1..100; diffusion: t = 0..20;
the autoencoder: ``--grid`` epochs at bottleneck 32) unless ``--grid`` is given, one split, seed 0.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SQRT = {"transform": "sqrt", "target_sum": None}  # the scale these figures were measured on

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
BLOCK = 20_000


def generate(path: Path, n_cells: int, n_genes: int, depth: float, seed: int = 0) -> None:
    """Write seeded low-rank Poisson counts to an h5ad, block by block (never whole in memory)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    baseline = rng.lognormal(0.0, 2.0, n_genes)
    programs = rng.gamma(0.4, 1.0, size=(10, n_genes)) * np.geomspace(3, 0.3, 10)[:, None] * baseline
    tmp = path.with_suffix(".part")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        matrix = None
        for i, start in enumerate(range(0, n_cells, BLOCK)):
            block_rng = np.random.default_rng([seed, i])
            n = min(BLOCK, n_cells - start)
            profile = baseline + block_rng.dirichlet(np.full(10, 0.3), size=n) @ programs
            profile /= profile.sum(axis=1, keepdims=True)
            rates = depth * block_rng.lognormal(0, 0.4, (n, 1)) * profile
            block = sparse.csr_matrix(block_rng.poisson(rates).astype(np.float32))
            if matrix is None:
                ad.io.write_elem(f, "X", block)
                matrix = ad.io.sparse_dataset(f["X"])
            else:
                matrix.append(block)
        ad.io.write_elem(f, "obs", pd.DataFrame(index=pd.RangeIndex(n_cells).astype(str)))
        ad.io.write_elem(f, "var", pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            ad.io.write_elem(f, key, {})
    tmp.rename(path)


def run(mode: str, path: Path, method: str, grid: list[int] | None) -> dict:
    """One measured run, in this process (called as a child)."""
    import anndata as ad
    import h5py

    import sc_noise2self as n2s

    start = time.perf_counter()
    if mode == "memory":
        adata = ad.read_h5ad(path)
        loaded = time.perf_counter() - start
        n2s.pp.denoise(adata, method=method, grid=grid, empty="drop", progress=False, **SQRT)
    else:
        f = h5py.File(path, "r")
        x = ad.experimental.read_elem_lazy(f["X"], chunks=(BLOCK, f["X"].attrs["shape"][1]))
        adata = ad.AnnData(x)
        loaded = time.perf_counter() - start
        n2s.pp.denoise(adata, method=method, grid=grid, empty="drop", progress=False, **SQRT)
    wall = time.perf_counter() - start
    layer = adata.layers["denoised"]
    layer_start = time.perf_counter()
    if mode == "disk" and method == "autoencoder":  # the lazy layer, computed block by block and dropped
        for rows in range(0, adata.n_obs, BLOCK):
            np.asarray(layer[rows : rows + BLOCK].compute())
    layer_s = time.perf_counter() - layer_start
    return {
        "mode": mode,
        "method": method,
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "best": int(adata.uns["denoised"]["best"]),
        "output": adata.uns["denoised"]["output"],
        "load_s": loaded,
        "wall_s": wall,
        "layer_s": layer_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--depth", type=float, default=1500.0)
    parser.add_argument("--memory-max", type=int, default=100_000, help="largest size also run in memory")
    parser.add_argument("--method", choices=["pca", "diffusion", "autoencoder"], default="pca")
    parser.add_argument("--grid", type=int, nargs="+", help="values to sweep (default: the method's grid)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], Path(args.child[1]), args.method, args.grid)))
        return

    DATA.mkdir(exist_ok=True)
    results = []
    for n_cells in args.cells:
        path = DATA / f"scale_{n_cells}x{args.genes}.h5ad"
        if not path.exists():
            start = time.perf_counter()
            generate(path, n_cells, args.genes, args.depth)
            size = path.stat().st_size / 2**30
            print(f"generated {path.name} in {time.perf_counter() - start:.0f} s ({size:.2f} GiB)")
        modes = ["memory", "disk"] if n_cells <= args.memory_max else ["disk"]
        for mode in modes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(path), "--method", args.method]
                + ([] if args.grid is None else ["--grid", *map(str, args.grid)]),
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(json.dumps(result), flush=True)

    print(
        f"\n| cells | input | {args.method} setting | output | wall time (s) | µs per cell | layer computed (s) "
        "| peak RSS (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        per_cell = 1e6 * r["wall_s"] / r["cells"]
        print(
            f"| {r['cells']:,} | {r['mode']} | {r['best']} | {r['output']} | {r['wall_s']:.1f} | "
            f"{per_cell:.0f} | {r['layer_s']:.1f} | {r['peak_rss_gib']:.2f} |"
        )
    disk = {r["cells"]: r for r in results if r["mode"] == "disk"}
    if len(disk) > 1:
        small, large = min(disk), max(disk)
        growth = disk[large]["wall_s"] / disk[small]["wall_s"]
        print(f"\nfrom disk: {large / small:.0f}x the cells took {growth:.2f}x the time (linear = {large / small:.0f})")
    memory = {r["cells"]: r for r in results if r["mode"] == "memory"}
    for n in sorted(set(memory) & set(disk)):
        print(f"{n:,} cells: disk / memory wall time = {disk[n]['wall_s'] / memory[n]['wall_s']:.2f}")


if __name__ == "__main__":
    main()
