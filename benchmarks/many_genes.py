"""PCA of many genes: the randomised Gram iteration (block by block), the covariance route, the whole-matrix SVD.

Run: ``.venv/bin/python benchmarks/many_genes.py [--genes 4096 8192 18340] [--loaded]`` (not CI).

Data: PBMC 8k (``../shared/data``), its 4,096 / 8,192 most detected genes or all 18,340,
``log1p`` of counts per 10,000, k = 100 components. Each route runs in a process of its own
(Linux): ``extra`` is its peak RSS above the RSS after loading the data (the peak is reset there):

- ``covariance``: the genes × genes centred Gram matrix, one eigenproblem (exact; the route up
  to 4,096 genes; skipped above 8,192 genes, where it holds more than 0.5 GiB and its
  eigenproblem takes minutes);
- ``gram-iteration``: :func:`gram_randomized_svd`, the route above 4,096 genes, in memory
  (one block) and over blocks of 1,000 cells, as from a dask array (``blocks``);
- ``whole-svd``: :func:`centered_truncated_svd`, the randomised SVD of the whole matrix the
  package used in memory before.

Both randomised routes run with the package defaults (20 oversamples, 7 iterations). Accuracy
against the exact components, where the covariance route ran: the largest relative error of
the top 20 and of all 100 singular values, and the overlap of the top-k subspaces
(``|V_k W_kᵀ|²_F / k``, 1 = the same subspace) for k = 20 and 100. ``--loaded`` runs a
CPU-bound competitor (BLAS products) beside every route.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
K = 100
ROUTES = ("covariance", "gram-iteration", "gram-iteration-blocks", "whole-svd")


def _values(n_genes: int):
    from _real_data import pbmc8k

    from sc_noise2self._numerics.transform import transformed

    return transformed(pbmc8k(n_genes=n_genes).X, "log1p", 1e4)


def run_route(route: str, n_genes: int) -> dict:
    """One route on one gene count, in this process: seconds, extra peak memory, the components."""
    from sc_noise2self._numerics import linalg

    values = _values(n_genes)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS starts again from the current RSS
    before = _status("VmRSS")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    if route == "covariance":
        s, vt = linalg.covariance_svd(linalg.gram_stats(values), K)
    elif route == "whole-svd":
        _, _, s, vt = linalg.centered_truncated_svd(values, K, rng=rng)
    else:
        step = 1_000 if route.endswith("blocks") else values.shape[0]
        blocks = [values[i : i + step] for i in range(0, values.shape[0], step)]

        def reduce(fn, merge):
            total = None
            for block in blocks:
                total = fn(block) if total is None else merge(total, fn(block))
            return total

        _, s, vt = linalg.gram_randomized_svd(reduce, values.shape, K, n_oversamples=20, n_iter=7, rng=rng)
    seconds = time.perf_counter() - start
    extra = (_status("VmHWM") - before) / 2**20  # KiB -> GiB
    return {"seconds": seconds, "extra_gib": extra, "s": s.tolist(), "vt": vt.tolist()}


def _status(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``: resident now; ``VmHWM``: its peak)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _in_process(route: str, n_genes: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--route", route, "--genes", str(n_genes)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _accuracy(exact: dict, got: dict) -> str:
    s_exact, s = np.asarray(exact["s"]), np.asarray(got["s"])
    v_exact, v = np.asarray(exact["vt"]), np.asarray(got["vt"])
    errors = np.abs(s / s_exact - 1)
    overlaps = [np.sum((v_exact[:k] @ v[:k].T) ** 2) / k for k in (20, K)]
    return f"{errors[:20].max():.1e} | {errors.max():.1e} | {overlaps[0]:.4f} | {overlaps[1]:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--genes", type=int, nargs="+", default=[4096, 8192, 18340])
    parser.add_argument("--route", choices=ROUTES)
    parser.add_argument("--loaded", action="store_true")
    args = parser.parse_args()
    if args.route:  # a child: one route
        result = run_route(args.route, args.genes[0])
        print(json.dumps(result))
        return
    from _competitor import competing

    columns = ("genes", "route", "time", "extra peak memory", "s error, top 20", "s error, 100", "overlap 20", "100")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with competing(args.loaded):
        for n_genes in args.genes:
            results = {r: _in_process(r, n_genes) for r in ROUTES if r != "covariance" or n_genes <= 8192}
            exact = results.get("covariance")
            for route, got in results.items():
                accuracy = _accuracy(exact, got) if exact else "– | – | – | –"
                print(
                    f"| {n_genes:,} | {route} | {got['seconds']:.1f} s | {got['extra_gib']:.2f} GiB | {accuracy} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
