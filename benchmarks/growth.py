"""The default ``pp.denoise`` against one ``sc.pp.pca(n_comps=100)``, from 10k cells up, shallow and deep.

Run: ``.venv/bin/python benchmarks/growth.py [--cells 10000 30000 ...] [--depths 250 3000] [--loaded]``
(not CI; the default sizes take ~25 min on 2 cores, idle).

Data: the seeded simulator of ``_synthetic.py`` (cells mix 10 gene programs, 2,000 genes,
log-normal gene abundances), drawn 50,000 cells at a time so that a million cells fit in
memory, at a median of ~250 (shallow: three MCV splits by default) or ~3,000 UMIs per cell
(deep: one split). Each point is timed in two fresh processes, one after the other, both
loading the same counts from a temporary ``.npz`` and compiling or importing on a small set
first, outside the timing:

- ``sc.pp.pca(adata, n_comps=100)`` on ``sc.pp.normalize_total`` + ``sc.pp.log1p`` of the
  counts (the normalisation is not timed);
- ``sc_noise2self.pp.denoise(adata, progress=False)`` on the raw counts, package defaults
  (PCA, ``log1p`` of counts per 10,000, its default grid, calibration and refit, the layer
  written; dense up to a quarter of the machine's memory, factored above).

Prints the seconds of each, their ratio and each process's peak RSS (counts included).
``--loaded`` runs a process multiplying matrices with BLAS beside both timings (``_competitor.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _competitor import competing
from scipy import sparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHUNK = 50_000

_CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
import anndata as ad, numpy as np
from scipy import sparse
from _synthetic import simulate
kind, path = sys.argv[1], sys.argv[2]
counts = sparse.load_npz(path).tocsr()
small = ad.AnnData(simulate(500, 300, 500.0).astype(np.float32))
if kind == "pca":
    import scanpy as sc
    def prepare(adata):
        sc.pp.normalize_total(adata)
        sc.pp.log1p(adata)
    prepare(small)
    sc.pp.pca(small, n_comps=50)
    adata = ad.AnnData(counts.astype(np.float32))
    prepare(adata)
    start = time.perf_counter()
    sc.pp.pca(adata, n_comps=100)
    extra = {{}}
else:
    import sc_noise2self as n2s
    n2s.pp.denoise(small, progress=False)
    adata = ad.AnnData(counts.astype(np.float32))
    start = time.perf_counter()
    n2s.pp.denoise(adata, progress=False)
    uns = adata.uns["denoised"]
    extra = {{"best": int(uns["best"]), "n_splits": int(uns["params"]["n_splits"]),
              "scored": int(uns["params"]["scored_cells"])}}
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
status = open("/proc/self/status").read().split("VmHWM:")[1]
rss = int(status.split()[0]) / 2**20
print(json.dumps({{"seconds": seconds, "rss_gib": rss, **extra}}))
"""


def simulate_chunked(n_cells: int, n_genes: int, depth: float, seed: int = 0) -> sparse.csr_matrix:
    """``_synthetic.simulate``'s model, its cells drawn ``CHUNK`` at a time (each chunk its own seed)."""
    rng = np.random.default_rng(seed)
    baseline = rng.lognormal(0.0, 2.0, n_genes)
    programs = rng.gamma(0.4, 1.0, size=(10, n_genes)) * np.geomspace(3, 0.3, 10)[:, None] * baseline
    blocks = []
    for i, start in enumerate(range(0, n_cells, CHUNK)):
        cells = np.random.default_rng([seed, i]).dirichlet(np.full(10, 0.3), size=min(CHUNK, n_cells - start))
        chunk_rng = np.random.default_rng([seed, i, 1])
        profile = baseline + cells @ programs
        profile /= profile.sum(axis=1, keepdims=True)
        rates = depth * chunk_rng.lognormal(0, 0.4, (len(cells), 1)) * profile
        blocks.append(sparse.csr_matrix(chunk_rng.poisson(rates).astype(np.int32)))
    counts = sparse.vstack(blocks, format="csr")
    return counts[:, np.asarray(counts.sum(axis=0)).ravel() > 0]


def _time(kind: str, path: Path) -> dict:
    script = _CHILD.format(here=str(HERE))
    done = subprocess.run(
        [sys.executable, "-c", script, kind, str(path)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", nargs="+", type=int, default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--depths", nargs="+", type=float, default=[250.0, 3000.0])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--loaded", action="store_true")
    args = parser.parse_args()
    print(f"{'loaded (BLAS competitor)' if args.loaded else 'idle'}; {args.genes:,} genes")
    print(
        "| cells | median UMIs | splits | scored cells | choice | sc.pp.pca (s) | pp.denoise (s) | ratio "
        "| peak RSS pca / denoise (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            for n_cells in args.cells:
                counts = simulate_chunked(n_cells, args.genes, depth)
                median = float(np.median(np.asarray(counts.sum(axis=1)).ravel()))
                path = Path(tmp) / "counts.npz"
                sparse.save_npz(path, counts, compressed=False)
                del counts
                with competing(args.loaded):
                    pca = _time("pca", path)
                    ours = _time("denoise", path)
                print(
                    f"| {n_cells:,} | {median:.0f} | {ours['n_splits']} | {ours['scored']:,} | {ours['best']} "
                    f"| {pca['seconds']:.1f} | {ours['seconds']:.1f} | {ours['seconds'] / pca['seconds']:.2f} "
                    f"| {pca['rss_gib']:.2f} / {ours['rss_gib']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    sys.exit(main())
