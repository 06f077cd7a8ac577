"""The calibration on CUDA against the CPU, side by side in one run (needs a CUDA device).

Run: ``.venv/bin/python benchmarks/gpu.py [--cells 100000 1000000] [--threads 2]`` (not CI).

Data: seeded synthetic counts (``growth.simulate_chunked``: 10 gene programs, log-normal gene
abundances), 2,000 genes, ``--depth`` UMIs per cell (default 1,500), in memory. Each run is a
process of its own, alternately, the same call but for ``device``:
``tl.calibrate(counts, method=PCA(device=...))`` (default grid: ranks 1..100, MCV, the default
number of splits and scored cells) and, up to 100,000 cells, ``Diffusion(device=...)`` over
``t = 0..8``. The CPU runs on ``--threads`` threads (numba, BLAS), as on a 2-core machine; the
GPU run keeps every core. Printed: seconds of each, their ratio, and each choice (they must be
the same). Without a CUDA device it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from scipy import sparse

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
ROOT = HERE.parent

_CHILD = """
import json, sys, time
import numpy as np
from scipy import sparse
import sc_noise2self as n2s

path, method, device = sys.argv[1:4]
counts = sparse.load_npz(path)
cls = n2s.denoisers.registered()[method]
grid = list(range(9)) if method == "diffusion" else None
n2s.tl.calibrate(counts[:2000], method=cls(device=device), grid=grid, progress=False)  # compile, warm up
start = time.perf_counter()
result = n2s.tl.calibrate(counts, method=cls(device=device), grid=grid, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "best": np.asarray(result.best).tolist()}))
"""


def counts_file(n_cells: int, depth: float) -> Path:
    """The seeded counts as an ``.npz`` under ``benchmarks/.data/``, made once."""
    path = DATA / f"gpu_{n_cells}x2000_{int(depth)}.npz"
    if not path.exists():
        sys.path.insert(0, str(HERE))
        from growth import simulate_chunked

        DATA.mkdir(exist_ok=True)
        sparse.save_npz(path, simulate_chunked(n_cells, 2000, depth))
    return path


def run(path: Path, method: str, device: str, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env |= {name: str(threads) for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), method, device],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--depth", type=float, default=1500.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("No CUDA device: nothing to compare.")
        return
    print(f"GPU: {torch.cuda.get_device_name()}; CPU runs on {args.threads} threads of {os.cpu_count()} cores\n")
    print("| cells | method | CPU | CUDA | ratio | choice (CPU / CUDA) |")
    print("|---|---|---|---|---|---|")
    for n_cells in args.cells:
        path = counts_file(n_cells, args.depth)
        for method in ("pca", "diffusion") if n_cells <= 100_000 else ("pca",):
            cpu, cuda = run(path, method, "cpu", args.threads), run(path, method, "cuda", None)
            print(
                f"| {n_cells:,} | {method} | {cpu['seconds']:.1f} s | {cuda['seconds']:.1f} s | "
                f"{cpu['seconds'] / cuda['seconds']:.1f} | {cpu['best']} / {cuda['best']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
