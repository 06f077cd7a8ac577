"""PCA and diffusion calibration on a busy machine: 1 and 2 threads, alone and beside a competitor.

Run: ``.venv/bin/python benchmarks/contention.py`` (not CI). Users run calibrations on shared
nodes and laptops with other work going on; this measures what that does to us, side by side
in one run. Each timed calibration runs in a fresh process with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` set to the thread count; the kernels are
compiled on a small matrix first, outside the timing. "Loaded" starts a competitor before the
timing and stops it after: ``--competitor same`` (default) another process running the same
calibration in a loop (a second user of this package); ``--competitor blas`` a process
multiplying matrices with BLAS (another program). The competitor has the same threads in every
configuration (``--competitor-threads``, by default one per core), so that the 1- and 2-thread
runs meet the same load. ``--adapt`` sets ``sc_noise2self.settings.adapt_threads = True`` in
every process (measured and competitor; trees without the setting ignore it). ``--repeats N``
times each configuration N times (the competitor kept running) and reports the median.
``--baseline PATH`` also times the package found at PATH (a checkout of an older commit, put
first on ``PYTHONPATH``) in every configuration, right after this tree.

Data: ``pca_sweep.simulate`` (20,000 × 2,000 by default, ~1,500 UMIs per cell, sparse), ``sqrt``
of raw counts; PCA over ranks 1..100, diffusion over t = 0..20; ``--methods autoencoder``: the
autoencoder on CPU (its default network) over bottleneck {8, 32} × epochs 1..3, its torch
threads set by ``OMP_NUM_THREADS`` like the others (use fewer ``--cells``). Prints a Markdown
table and the ratios loaded / alone and 2 threads / 1 thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _competitor import BLAS_LOOP  # noqa: E402

_WORKER = """
import os, sys, time
sys.path.insert(0, {here!r})
import numpy as np
from _synthetic import simulate
import sc_noise2self as n2s
if os.environ.get("CONTENTION_ADAPT") == "1" and hasattr(n2s, "settings"):  # trees before it have no setting
    n2s.settings.adapt_threads = True
name, cells, genes, loop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "loop"
scale = {{"transform": "sqrt", "target_sum": None}}
if name == "autoencoder":  # the default network on CPU, two widths, a few epochs
    from sc_noise2self.denoisers import Autoencoder
    method = Autoencoder(device="cpu", random_state=0)
    grid, warm = n2s.tl.grid(bottleneck=[8, 32], epochs=[1, 2, 3]), [[8, 1]]
else:
    method = name
    grid = np.arange(1, 101) if name == "pca" else np.arange(21)
    warm = grid[:3]
n2s.tl.calibrate(simulate(300, 100, 500.0), method=method, grid=warm, progress=False, **scale)  # compile
counts = simulate(cells, genes, 1500.0)
while True:
    start = time.perf_counter()
    n2s.tl.calibrate(counts, method=method, grid=grid, progress=False, **scale)
    if not loop:
        print(f"{{time.perf_counter() - start:.3f}}")
        break
"""


def _env(threads: int, tree: str | None, *, adapt: bool) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "NUMBA_NUM_THREADS": str(threads),
        "CONTENTION_ADAPT": "1" if adapt else "0",
    }
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _timed(method: str, threads: int, cells: int, genes: int, tree: str | None, *, adapt: bool) -> float:
    code = _WORKER.format(here=str(HERE))
    done = subprocess.run(
        [sys.executable, "-c", code, method, str(cells), str(genes), "once"],
        env=_env(threads, tree, adapt=adapt),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def _configuration(args: argparse.Namespace, method: str, threads: int, *, loaded: bool) -> dict[str | None, float]:
    """Median time of each tree (this one: None; ``--baseline``) in one configuration.

    Loaded, each tree runs beside its own competitor: with ``--competitor same`` a copy of that
    tree's calibration, so that a tree that adapts to a busy machine meets itself.
    """
    medians = {}
    for tree in [None, *([args.baseline] if args.baseline else [])]:
        competitor = None
        if loaded:
            code = BLAS_LOOP if args.competitor == "blas" else _WORKER.format(here=str(HERE))
            competitor = subprocess.Popen(
                [sys.executable, "-c", code, method, str(args.cells), str(args.genes), "loop"],
                env=_env(args.competitor_threads, tree, adapt=args.adapt),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(15)  # let it get past its compile and data and into its work
        try:
            times = [
                _timed(method, threads, args.cells, args.genes, tree, adapt=args.adapt) for _ in range(args.repeats)
            ]
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        medians[tree] = statistics.median(times)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--methods", nargs="+", default=["pca", "diffusion"])
    parser.add_argument("--competitor", choices=["same", "blas"], default="same")
    parser.add_argument("--competitor-threads", type=int, default=os.cpu_count(), help="the same in all runs")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--adapt", action="store_true", help="settings.adapt_threads = True (competitor too)")
    parser.add_argument("--baseline", default=None, help="a checkout of another commit, timed beside this tree")
    args = parser.parse_args()
    print(
        f"{args.cells:,} cells x {args.genes:,} genes, {os.cpu_count()} cores, competitor: {args.competitor} "
        f"({args.competitor_threads} threads), median of {args.repeats}, adapt_threads={args.adapt}\n"
    )
    trees = {None: "this tree", **({args.baseline: "baseline"} if args.baseline else {})}
    print("| tree | method | threads | alone (s) | loaded (s) | loaded / alone |")
    print("|---|---|---|---|---|---|")
    times: dict[tuple[str | None, str, int, bool], float] = {}
    for method in args.methods:
        for threads in (1, 2):
            for loaded in (False, True):
                for tree, seconds in _configuration(args, method, threads, loaded=loaded).items():
                    times[tree, method, threads, loaded] = seconds
            for tree, name in trees.items():
                alone, busy = times[tree, method, threads, False], times[tree, method, threads, True]
                print(f"| {name} | {method} | {threads} | {alone:.1f} | {busy:.1f} | {busy / alone:.2f} |", flush=True)
    print()
    for tree, name in trees.items():
        for method in args.methods:
            for loaded in (False, True):
                ratio = times[tree, method, 2, loaded] / times[tree, method, 1, loaded]
                print(f"{name}, {method}, {'loaded' if loaded else 'alone'}: 2 threads / 1 thread = {ratio:.2f}")


if __name__ == "__main__":
    main()
