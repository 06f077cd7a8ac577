"""The package before and after a change, side by side: the headline timings of three benchmarks.

Run: ``.venv/bin/python benchmarks/redesign.py [--old afeeee6] [--repeats 3] [--loaded] [--quick]``

The ``--old`` revision's ``sc_noise2self/`` is extracted (``git archive``) into a temporary folder
and each measurement runs in a fresh process with that tree first on ``PYTHONPATH``, or with this
checkout's, old and new alternately (``--repeats`` processes each, the best kept), after a warm-up
in the same process (numba's caches built by a first, untimed run). The cases are the figures the
benchmarks report, through the public API that both versions share:

- ``pca_sweep``: ``tl.calibrate`` over k = 1..100 on 20,000 × 2,000 synthetic counts
  (``pca_sweep.py``: ``sqrt`` scale, one split);
- ``pca_defaults``: the same data at the package's defaults;
- ``diffusion_sweep``: ``tl.calibrate(method="diffusion")`` over t = 1..20 on the same data
  (``diffusion_sweep.py``);
- ``all_genes``: ``tl.calibrate`` on every gene of PBMC 8k at the defaults (``all_genes.py``).

Each prints the best of ``--repeats`` seconds per version and the ratio new / old; ``--loaded``
runs a CPU-bound competitor (BLAS products at their default threads) throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = ("pca_sweep", "pca_defaults", "diffusion_sweep", "all_genes")
SQRT = {"transform": "sqrt", "target_sum": None, "n_splits": 1}


def _data(case: str, quick: bool):
    if case == "all_genes":
        from _real_data import pbmc8k

        adata = pbmc8k(n_genes=18340)
        return adata[:2000].copy() if quick else adata
    from _synthetic import simulate

    return simulate(4_000, 500, 1_500.0) if quick else simulate(20_000, 2_000, 1_500.0)


def _call(case: str):
    import numpy as np

    from sc_noise2self import tl

    calls = {
        "pca_sweep": lambda X: tl.calibrate(X, grid=np.arange(1, 101), progress=False, **SQRT),
        "pca_defaults": lambda X: tl.calibrate(X, progress=False),
        "diffusion_sweep": lambda X: tl.calibrate(X, method="diffusion", grid=np.arange(1, 21), progress=False, **SQRT),
        "all_genes": lambda X: tl.calibrate(X, progress=False),
    }
    return calls[case]


def worker(case: str, repeats: int, quick: bool) -> None:
    """Time one case in this process (the package from ``PYTHONPATH``); print JSON."""
    from _synthetic import best_of

    import sc_noise2self

    data = _data(case, quick)
    call = _call(case)
    call(data[:300] if case != "all_genes" else data[:300].copy())  # compile (or load) the kernels first
    seconds = best_of(repeats, lambda: call(data))
    best = call(data).best
    print(json.dumps({"where": sc_noise2self.__file__, "seconds": seconds, "best": str(best)}))


def _run(tree: Path, case: str, repeats: int, quick: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}"}
    command = [sys.executable, __file__, "--worker", case, "--repeats", str(repeats)] + (["--quick"] if quick else [])
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=HERE)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["where"].startswith(str(tree)):
        msg = f"{tree} was not the package imported: {result['where']}"
        raise RuntimeError(msg)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", default="afeeee6")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--loaded", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats, args.quick)
        return
    from _competitor import competing

    with tempfile.TemporaryDirectory() as old, competing(args.loaded):
        archive = subprocess.run(
            ["git", "archive", args.old, "sc_noise2self"], cwd=ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        trees = {"old": Path(old), "new": ROOT}
        print(f"old: {args.old}   new: this checkout   loaded: {args.loaded}   repeats: {args.repeats}")
        print(f"{'case':16s} {'old s':>8s} {'new s':>8s} {'new/old':>8s}  choice (old, new)")
        for case in args.cases:
            _run(trees["old"], case, 1, True)  # the old tree's kernels compiled into its cache, untimed
            runs = {name: [] for name in trees}
            for _ in range(args.repeats):  # a process each, old and new alternately
                for name, tree in trees.items():
                    runs[name].append(_run(tree, case, 1, args.quick))
            results = {name: min(r, key=lambda x: x["seconds"]) for name, r in runs.items()}
            ratio = results["new"]["seconds"] / results["old"]["seconds"]
            print(
                f"{case:16s} {results['old']['seconds']:8.2f} {results['new']['seconds']:8.2f} {ratio:8.3f}  "
                f"({results['old']['best']}, {results['new']['best']})",
                flush=True,
            )
            time.sleep(1)


if __name__ == "__main__":
    main()
