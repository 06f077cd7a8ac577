"""Our MCV rank sweep against the MCV paper's own code, run as a peer in its own venv.

Run: ``.venv/bin/python benchmarks/mcv_peer.py [--trials 1] [--loaded]`` (not CI; needs the
peer's venv, see ``benchmarks/README.md``). The peer is czbiohub-sf/molecular-cross-validation
(not on PyPI), installed from its public repository into ``benchmarks/venvs/mcv``; its per-trial
PCA loop runs in ``_mcv_runner.py`` as a subprocess (see there for the changes needed to
run it). Both sides at their default threads, on the same raw counts, same grid (ranks
1..100), same split fraction (0.9) and number of splits, on ``sqrt`` of raw counts (the
paper's scale; ours with ``target_sum=None``):

- ours: ``tl.calibrate(method="pca")`` end to end (split, transform, centred truncated SVD,
  depth conversion tables, scoring all ranks), compiled on a small matrix first, outside
  the timing;
- the peer: its loop from the split to the last MSE (dense, as the script is), timed inside
  the subprocess, after its imports and the densification of the input.

Data: PBMC 8k (``../shared/data``), its 2,000 most detected genes; and ``pca_sweep.simulate``
at 20,000 × 2,000 (~1,500 UMIs per cell). ``--loaded`` starts a CPU-bound competitor (a
process multiplying matrices with BLAS at its default threads) before the timing, as a
second user's job on a shared machine would be. Prints the times, the ratio peer / ours and
both chosen ranks (the peer's SVD is uncentred, ours centred: its rank k is our k - 1 plus
the mean).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse

import sc_noise2self as n2s

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEER_PYTHON = HERE / "venvs" / "mcv" / "bin" / "python"
SQRT = {"transform": "sqrt", "target_sum": None}


def datasets() -> dict[str, sparse.csr_matrix]:
    from _real_data import pbmc8k
    from _synthetic import simulate

    return {
        "PBMC 8k, 2,000 genes": sparse.csr_matrix(pbmc8k(2000).X, dtype=np.int32),
        "simulated 20,000 × 2,000": simulate(20_000, 2_000, 1_500.0),
    }


def run_peer(counts: sparse.csr_matrix, max_k: int, trials: int) -> tuple[float, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.npz", Path(tmp) / "out.npy"
        sparse.save_npz(source, counts)
        done = subprocess.run(
            [str(PEER_PYTHON), str(HERE / "_mcv_runner.py"), str(source), str(target), str(max_k), str(trials)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(done.stdout.strip().splitlines()[-1]), np.load(target)


def run_ours(counts: sparse.csr_matrix, max_k: int, trials: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = n2s.tl.calibrate(
        counts, method="pca", grid=np.arange(1, max_k + 1), n_splits=trials, random_state=0, progress=False, **SQRT
    )
    return time.perf_counter() - start, result.loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1, help="splits on each side")
    parser.add_argument("--max-k", type=int, default=100)
    parser.add_argument("--loaded", action="store_true")
    args = parser.parse_args()
    if not PEER_PYTHON.exists():
        sys.exit(f"the peer's venv is missing ({PEER_PYTHON}); see benchmarks/README.md")
    import scanpy as sc
    from _competitor import competing
    from _synthetic import simulate

    sc.settings.verbosity = 0  # the two-value compile run would warn that its choice is on the grid's edge
    n2s.tl.calibrate(simulate(300, 100, 500.0), method="pca", grid=[1, 2], progress=False, **SQRT)  # compile
    data = datasets()
    with competing(args.loaded):
        print(
            f"| data | the paper's code | ours | peer / ours | rank: paper, ours |{' (loaded)' if args.loaded else ''}"
        )
        print("|---|---|---|---|---|")
        for name, counts in data.items():
            peer_time, peer_loss = run_peer(counts, args.max_k, args.trials)
            our_time, our_loss = run_ours(counts, args.max_k, args.trials)
            peer_rank = int(np.argmin(peer_loss.mean(axis=0))) + 1
            our_rank = int(np.argmin(our_loss.mean(axis=0))) + 1
            ratio = peer_time / our_time
            print(
                f"| {name} | {peer_time:.2f} s | {our_time:.2f} s | {ratio:.1f} | {peer_rank}, {our_rank} |", flush=True
            )


if __name__ == "__main__":
    main()
