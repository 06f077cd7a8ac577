"""How calibrated denoising scales with cells: in memory, from disk via dask, and on a local dask cluster.

Run: ``.venv/bin/python benchmarks/scale.py`` (not CI; writes ~4.5 GB of h5ad under
``benchmarks/.data/`` the first time, which takes a few minutes). Options:
``--cells 100000 1000000``, ``--genes 2000``, ``--depth 1500``, ``--method pca|diffusion|autoencoder``,
``--format h5ad zarr`` (the input of the lazy runs), ``--cluster``. The cluster runs, e.g.::

    .venv/bin/python benchmarks/scale.py --cluster --cells 250000 500000 1000000 --format h5ad zarr

Data: seeded sparse Poisson counts from 10 gene programs with log-normal gene abundances
(the generator of ``pca_sweep.py``), ~1,500 UMIs per cell, generated and appended to an
on-disk CSR in blocks of 20,000 cells, so the full matrix is never in memory. Each block has
its own seed, so a file of N cells holds the first N cells of any larger one. ``--format zarr``
converts the h5ad once, block by block, to a zarr store (v2, CSR arrays in chunks of about
one block's nonzeros).

Each run is its own process, so its peak RSS (``ru_maxrss``) is its own:

- ``memory``: ``anndata.read_h5ad`` loads the CSR, then ``pp.denoise(adata)``;
- ``disk``: ``anndata.experimental.read_elem_lazy`` gives a dask array of CSR chunks of
  20,000 cells; ``pp.denoise(adata)`` calibrates block by block (dask's threads) and writes
  factors with a lazy layer (PCA, diffusion), or, for the autoencoder, trains by streaming
  minibatches from the blocks (each read once per epoch) and writes a lazy layer that runs
  the networks block by block; the run then computes that layer once, block by block, as
  writing it to disk would (``layer_s``);
- ``cluster`` (``--cluster``, instead of the two above): as ``disk``, but the tasks run on a
  ``distributed.LocalCluster`` of 2 worker processes of 1 thread and a 4 GiB memory limit
  each, and the lazy layer is always computed once, block by block. Besides the client's
  (this process's, which also runs the scheduler) peak RSS, it reports the workers' peak
  memory: the largest RSS polled every 0.5 s (``client.run``), while denoising and while
  computing the layer, and each worker's own ``ru_maxrss``, each the maximum over the workers.
  A run that fails (a worker killed for memory, say) prints the workers' peaks until then.

Same call otherwise: the method's default grid (PCA: ranks 1..100; diffusion: t = 0..20;
the autoencoder: ``--grid`` epochs at bottleneck 32) unless ``--grid`` is given, one split, seed 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

SQRT = {"transform": "sqrt", "target_sum": None}  # the scale these figures were measured on

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
BLOCK = 20_000
WORKERS = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "memory_limit": "4GiB"}
POLL_S = 0.5


def write_blocks(group: Any, blocks: Iterable[sparse.csr_matrix], n_genes: int, **dataset_kwargs: Any) -> None:
    """Write an AnnData of CSR ``blocks`` of cells into an open h5py or zarr group, appending one at a time."""
    import anndata as ad
    import pandas as pd

    group.attrs["encoding-type"], group.attrs["encoding-version"] = "anndata", "0.1.0"
    matrix = None
    for block in blocks:
        if matrix is None:
            ad.io.write_elem(group, "X", block, dataset_kwargs=dataset_kwargs)
            matrix = ad.io.sparse_dataset(group["X"])
        else:
            matrix.append(block)
    n_cells = matrix.shape[0]
    ad.io.write_elem(group, "obs", pd.DataFrame(index=pd.RangeIndex(n_cells).astype(str)))
    ad.io.write_elem(group, "var", pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
    for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
        ad.io.write_elem(group, key, {})


def simulate(n_cells: int, n_genes: int, depth: float, seed: int = 0) -> Iterator[sparse.csr_matrix]:
    """Seeded low-rank Poisson counts, block by block (block ``i`` depends only on ``seed`` and ``i``)."""
    rng = np.random.default_rng(seed)
    baseline = rng.lognormal(0.0, 2.0, n_genes)
    programs = rng.gamma(0.4, 1.0, size=(10, n_genes)) * np.geomspace(3, 0.3, 10)[:, None] * baseline
    for i, start in enumerate(range(0, n_cells, BLOCK)):
        block_rng = np.random.default_rng([seed, i])
        n = min(BLOCK, n_cells - start)
        profile = baseline + block_rng.dirichlet(np.full(10, 0.3), size=n) @ programs
        profile /= profile.sum(axis=1, keepdims=True)
        rates = depth * block_rng.lognormal(0, 0.4, (n, 1)) * profile
        yield sparse.csr_matrix(block_rng.poisson(rates).astype(np.float32))


def generate(path: Path, n_cells: int, n_genes: int, depth: float, seed: int = 0) -> None:
    """Write seeded low-rank Poisson counts to an h5ad, block by block (never whole in memory)."""
    import h5py

    tmp = path.with_suffix(".part")
    with h5py.File(tmp, "w") as f:
        write_blocks(f, simulate(n_cells, n_genes, depth, seed), n_genes)
    tmp.rename(path)


def to_zarr(h5ad: Path, store: Path) -> None:
    """Copy an h5ad's counts to a zarr store, block by block; CSR arrays in chunks of about one block's nonzeros."""
    import anndata as ad
    import h5py
    import zarr

    tmp = store.with_name(store.name + ".part")
    with h5py.File(h5ad, "r") as f:
        counts = ad.io.sparse_dataset(f["X"])
        n_cells, n_genes = counts.shape
        first = counts[:BLOCK]
        rest = (counts[start : start + BLOCK] for start in range(BLOCK, n_cells, BLOCK))
        group = zarr.open_group(tmp, mode="w", zarr_format=2)
        write_blocks(group, itertools.chain([first], rest), n_genes, chunks=(first.nnz,))
    tmp.rename(store)


def read_lazy(path: Path) -> Any:
    """The counts of an h5ad or zarr store as a dask array of CSR chunks of ``BLOCK`` cells."""
    import anndata as ad
    import h5py
    import zarr

    group = h5py.File(path, "r") if path.suffix == ".h5ad" else zarr.open_group(path, mode="r")
    return ad.experimental.read_elem_lazy(group["X"], chunks=(BLOCK, group["X"].attrs["shape"][1]))


class WorkerPeaks:
    """Each worker's largest RSS, polled every ``POLL_S`` seconds in a thread while the ``with`` block runs."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.peaks: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        import psutil

        while not self.done.wait(POLL_S):
            rss_now = self.client.run(lambda: psutil.Process().memory_info().rss, on_error="ignore")
            for worker, rss in rss_now.items():
                self.peaks[worker] = max(rss, self.peaks.get(worker, 0))

    @property
    def gib(self) -> float:
        """The largest peak over the workers, GiB."""
        return max(self.peaks.values()) / 2**30

    def __enter__(self) -> WorkerPeaks:
        self.thread.start()
        return self

    def __exit__(self, error: type[BaseException] | None, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        if error is not None:
            peaks = {worker: round(rss / 2**30, 2) for worker, rss in self.peaks.items()}
            print(f"workers' peak RSS (GiB) until the {error.__name__}: {peaks}", file=sys.stderr, flush=True)


def run(mode: str, path: Path, method: str, grid: list[int] | None) -> dict:
    """One measured run, in this process (called as a child)."""
    if mode == "cluster":
        return run_cluster(path, method, grid)
    import anndata as ad

    import sc_noise2self as n2s

    start = time.perf_counter()
    adata = ad.read_h5ad(path) if mode == "memory" else ad.AnnData(read_lazy(path))
    loaded = time.perf_counter() - start
    n2s.pp.denoise(adata, method=method, grid=grid, empty="drop", progress=False, **SQRT)
    wall = time.perf_counter() - start
    layer_s = compute_layer(adata) if mode == "disk" and method == "autoencoder" else 0.0
    return summary(mode, path, method, adata, loaded, wall, layer_s)


def run_cluster(path: Path, method: str, grid: list[int] | None) -> dict:
    """The ``disk`` run on a local cluster (dask uses the active client), with the workers' peak memory."""
    import anndata as ad
    from distributed import Client, LocalCluster

    import sc_noise2self as n2s

    with LocalCluster(**WORKERS, dashboard_address=":0") as cluster, Client(cluster) as client:
        workers = client.scheduler_info()["workers"]
        with WorkerPeaks(client) as calibrating:
            start = time.perf_counter()
            adata = ad.AnnData(read_lazy(path))
            loaded = time.perf_counter() - start
            n2s.pp.denoise(adata, method=method, grid=grid, empty="drop", progress=False, **SQRT)
            wall = time.perf_counter() - start
        with WorkerPeaks(client) as computing:
            layer_s = compute_layer(adata)
        maxrss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return {
            **summary("cluster", path, method, adata, loaded, wall, layer_s),
            "worker_limit_gib": [w["memory_limit"] / 2**30 for w in workers.values()],
            "worker_peak_gib": calibrating.gib,
            "worker_peak_layer_gib": computing.gib,
            "worker_maxrss_gib": max(maxrss.values()) / 2**20,
            "workers_replaced": sorted(set(workers) ^ set(maxrss)),
        }


def compute_layer(adata: Any) -> float:
    """Compute the lazy layer once, block by block, each block dropped (as writing it would); return seconds."""
    start = time.perf_counter()
    layer = adata.layers["denoised"]
    for rows in range(0, adata.n_obs, BLOCK):
        np.asarray(layer[rows : rows + BLOCK].compute())
    return time.perf_counter() - start


def summary(mode: str, path: Path, method: str, adata: Any, loaded: float, wall: float, layer_s: float) -> dict:
    """What every run reports."""
    return {
        "mode": mode,
        "format": "h5ad" if path.suffix == ".h5ad" else "zarr",
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


def prepare(n_cells: int, n_genes: int, depth: float, fmt: str) -> Path:
    """The data of a size in a format (the h5ad, or a zarr store copied from it), written the first time."""
    h5ad = DATA / f"scale_{n_cells}x{n_genes}.h5ad"
    if not h5ad.exists():
        timed_write(h5ad, lambda: generate(h5ad, n_cells, n_genes, depth))
    if fmt == "h5ad":
        return h5ad
    store = h5ad.with_suffix(".zarr")
    if not store.exists():
        timed_write(store, lambda: to_zarr(h5ad, store))
    return store


def timed_write(path: Path, write: Callable[[], None]) -> None:
    """Write a file or a store, and say how long it took and how large it is."""
    start = time.perf_counter()
    write()
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    size = sum(f.stat().st_size for f in files) / 2**30
    print(f"wrote {path.name} in {time.perf_counter() - start:.0f} s ({size:.2f} GiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--depth", type=float, default=1500.0)
    parser.add_argument("--memory-max", type=int, default=100_000, help="largest size also run in memory")
    parser.add_argument("--method", choices=["pca", "diffusion", "autoencoder"], default="pca")
    parser.add_argument("--grid", type=int, nargs="+", help="values to sweep (default: the method's grid)")
    parser.add_argument("--format", choices=["h5ad", "zarr"], nargs="+", default=["h5ad"], help="lazy runs' input")
    parser.add_argument("--cluster", action="store_true", help="run on a local dask cluster instead")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], Path(args.child[1]), args.method, args.grid)))
        return

    DATA.mkdir(exist_ok=True)
    results = []
    for fmt in args.format:
        for n_cells in args.cells:
            path = prepare(n_cells, args.genes, args.depth, fmt)
            if args.cluster:
                modes = ["cluster"]
            else:
                modes = ["memory", "disk"] if n_cells <= args.memory_max and fmt == "h5ad" else ["disk"]
            for mode in modes:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, str(path), "--method", args.method]
                    + ([] if args.grid is None else ["--grid", *map(str, args.grid)]),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                if out.returncode:
                    print(f"{mode} run of {path.name} failed (exit {out.returncode}; its stderr is above)", flush=True)
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(result)
                print(json.dumps(result), flush=True)

    if args.cluster:
        print_cluster(results, args.method)
    else:
        print_local(results, args.method)


def print_local(results: list[dict], method: str) -> None:
    """The in-memory and threaded disk runs' table, and how time grows with cells."""
    print(
        f"\n| cells | input | {method} setting | output | wall time (s) | µs per cell | layer computed (s) "
        "| peak RSS (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        per_cell = 1e6 * r["wall_s"] / r["cells"]
        source = r["mode"] if r["format"] == "h5ad" else f"{r['mode']} ({r['format']})"
        print(
            f"| {r['cells']:,} | {source} | {r['best']} | {r['output']} | {r['wall_s']:.1f} | "
            f"{per_cell:.0f} | {r['layer_s']:.1f} | {r['peak_rss_gib']:.2f} |"
        )
    disk = {r["cells"]: r for r in results if r["mode"] == "disk" and r["format"] == "h5ad"}
    if len(disk) > 1:
        small, large = min(disk), max(disk)
        growth = disk[large]["wall_s"] / disk[small]["wall_s"]
        print(f"\nfrom disk: {large / small:.0f}x the cells took {growth:.2f}x the time (linear = {large / small:.0f})")
    memory = {r["cells"]: r for r in results if r["mode"] == "memory"}
    for n in sorted(set(memory) & set(disk)):
        print(f"{n:,} cells: disk / memory wall time = {disk[n]['wall_s'] / memory[n]['wall_s']:.2f}")


def print_cluster(results: list[dict], method: str) -> None:
    """The cluster runs' table: time, and the workers' (maximum over them) and the client's peak memory."""
    print(
        "\n| format | cells | wall time (s) | µs per cell | layer computed (s) | peak worker memory: denoise (GiB) "
        f"| layer (GiB) | worker ru_maxrss (GiB) | client peak RSS (GiB) | {method} setting |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        per_cell = 1e6 * r["wall_s"] / r["cells"]
        memory = [r[key] for key in ("worker_peak_gib", "worker_peak_layer_gib", "worker_maxrss_gib", "peak_rss_gib")]
        print(
            f"| {r['format']} | {r['cells']:,} | {r['wall_s']:.1f} | {per_cell:.0f} | {r['layer_s']:.1f} | "
            + " | ".join(f"{gib:.2f}" for gib in memory)
            + f" | {r['best']} |"
        )
        if r["workers_replaced"]:
            print(f"(workers replaced during this run: {', '.join(r['workers_replaced'])})")
    threads, limit = WORKERS["threads_per_worker"], WORKERS["memory_limit"]
    print(f"\nworkers: {WORKERS['n_workers']} processes × {threads} thread, memory limit {limit} each")


if __name__ == "__main__":
    main()
