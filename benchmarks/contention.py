"""PCA and diffusion calibration on a busy machine: 1 and 2 threads, alone and beside a competitor.

Run: ``.venv/bin/python benchmarks/contention.py`` (not CI). Users run calibrations on shared
nodes and laptops with other work going on; this measures what that does to us, side by side
in one run. Each configuration runs in a fresh process with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` set to the thread count; the kernels are
compiled on a small matrix first, outside the timing. "Loaded" starts a competitor before the
timing — another process running the same calibration in a loop with the same thread count
(CPU-bound, as a second user's job would be) — and stops it after.

Data: ``pca_sweep.simulate`` (20,000 × 2,000 by default, ~1,500 UMIs per cell, sparse), ``sqrt``
of raw counts; PCA over ranks 1..100, diffusion over t = 0..20. Prints a Markdown table and the
ratios loaded / alone and 2 threads / 1 thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_WORKER = """
import sys, time
sys.path.insert(0, {here!r})
import numpy as np
from pca_sweep import simulate
import sc_noise2self as n2s
method, cells, genes, loop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "loop"
grid = np.arange(1, 101) if method == "pca" else np.arange(21)
scale = {{"transform": "sqrt", "target_sum": None}}
n2s.tl.calibrate(simulate(300, 100, 500.0), method=method, grid=grid[:3], progress=False, **scale)  # compile
counts = simulate(cells, genes, 1500.0)
while True:
    start = time.perf_counter()
    n2s.tl.calibrate(counts, method=method, grid=grid, progress=False, **scale)
    if not loop:
        print(f"{{time.perf_counter() - start:.3f}}")
        break
"""


def _run(method: str, threads: int, cells: int, genes: int, *, loaded: bool) -> float:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "NUMBA_NUM_THREADS": str(threads),
    }
    code = _WORKER.format(here=str(HERE))
    competitor = None
    if loaded:
        competitor = subprocess.Popen(
            [sys.executable, "-c", code, method, str(cells), str(genes), "loop"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(15)  # let it get past its compile and data and into the calibration
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, method, str(cells), str(genes), "once"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--methods", nargs="+", default=["pca", "diffusion"])
    args = parser.parse_args()
    print(f"{args.cells:,} cells x {args.genes:,} genes, {os.cpu_count()} cores\n")
    print("| method | threads | alone (s) | loaded (s) | loaded / alone |")
    print("|---|---|---|---|---|")
    times: dict[tuple[str, int, bool], float] = {}
    for method in args.methods:
        for threads in (1, 2):
            for loaded in (False, True):
                times[method, threads, loaded] = _run(method, threads, args.cells, args.genes, loaded=loaded)
            alone, busy = times[method, threads, False], times[method, threads, True]
            print(f"| {method} | {threads} | {alone:.1f} | {busy:.1f} | {busy / alone:.2f} |", flush=True)
    print()
    for method in args.methods:
        for loaded in (False, True):
            ratio = times[method, 2, loaded] / times[method, 1, loaded]
            print(f"{method}, {'loaded' if loaded else 'alone'}: 2 threads / 1 thread = {ratio:.2f}")


if __name__ == "__main__":
    main()
