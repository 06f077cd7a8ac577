"""The first ``pp.denoise`` of a fresh process against a second call in the same process.

Run: ``.venv/bin/python benchmarks/first_call.py [--repeats 5]`` (not CI; about a minute).

Each repeat is a fresh Python process that imports scanpy first (as a notebook does), loads the
bundled PBMC 2k, and times ``n2s.pp.denoise`` at its defaults twice on copies of the data. The
numba kernels are compiled once beforehand, so this measures what a user's second and later
sessions pay: loading the cached kernels and the modules the call imports on first use. Printed:
each ratio first/second, and their median, idle and beside a CPU-bound competitor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ONE_PROCESS = """
import json, time
import scanpy as sc
import sc_noise2self as n2s
adata = n2s.datasets.pbmc2k()
times = []
for data in (adata.copy(), adata.copy()):
    start = time.perf_counter()
    n2s.pp.denoise(data, progress=False)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def _run(repeats: int) -> list[tuple[float, float]]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", ONE_PROCESS], capture_output=True, text=True, check=True)
        first, second = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append((first, second))
    return runs


def main() -> None:
    from _competitor import competing

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    _run(1)  # compiles the kernels into numba's cache if they are not there yet
    print("| condition | first call (s) | second call (s) | first / second, each run | median ratio |")
    print("|---|---|---|---|---|")
    for loaded in (False, True):
        with competing(loaded):
            runs = _run(args.repeats)
        ratios = [first / second for first, second in runs]
        print(
            f"| {'beside a competitor' if loaded else 'idle'} "
            f"| {statistics.median(f for f, _ in runs):.2f} | {statistics.median(s for _, s in runs):.2f} "
            f"| {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |"
        )


if __name__ == "__main__":
    main()
