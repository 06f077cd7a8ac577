"""The exact neighbour search against scikit-learn's brute force, on the embeddings the calibrations search.

Run: ``.venv/bin/python benchmarks/neighbour_search.py [--loaded] [--repeats 3]`` (not CI).
For each case both searches run on the same embedding in one process, alternately, best of
``--repeats``, at the default threads; kernels are compiled on a small embedding first.
Prints both times, the ratio scikit-learn / ours and the share of identical neighbour
indices. ``--loaded`` starts a CPU-bound competitor (BLAS matrix products at its default
threads) first.

Cases: the diffusion graph (30 components of log-normalised counts, 15 neighbours) of
mouse 10k, PBMC 8k (2,000 most detected genes) and ``pca_sweep.simulate`` at
20,000 × 2,000; and ``pp.pca``'s graph objective on PBMC 8k (n_pcs 3..50, 99 neighbours
each: scikit-learn searches every n_pcs on its own, ours seeds each search with the
previous n_pcs' neighbours).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

N_PCS = (3, 5, 7, 10, 15, 20, 30, 40, 50)  # pp.pca's default n_pcs axis


def _embedding(counts, n_comps: int) -> np.ndarray:
    from sc_noise2self._numerics.transform import transformed
    from sc_noise2self.denoisers import PCA

    return PCA(random_state=0).embed(transformed(counts, "log1p", 1e4), n_comps)[1]


def _sklearn(embedding: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(embedding).kneighbors()[1]


def _ours(embedding: np.ndarray, k: int, seeds=None) -> np.ndarray:
    from sc_noise2self.denoisers._search import exact_neighbours

    return exact_neighbours(embedding, k, seeds=seeds)[1]


def _sweep_sklearn(embedding: np.ndarray) -> list[np.ndarray]:
    return [_sklearn(embedding[:, :p], 99) for p in N_PCS]


def _sweep_ours(embedding: np.ndarray) -> list[np.ndarray]:
    found, seeds = [], None
    for p in N_PCS:
        seeds = _ours(embedding[:, :p], 99, seeds)
        found.append(seeds)
    return found


def _best(repeats: int, run) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loaded", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from _competitor import competing
    from _real_data import mouse10k, pbmc8k
    from _synthetic import simulate

    warm = np.random.default_rng(0).normal(size=(300, 50))
    _ours(warm, 15)
    _sweep_ours(warm)
    pbmc = _embedding(pbmc8k(2000).X, 50)
    cases = {
        "mouse 10k, 30 PCs, k=15": (_embedding(mouse10k().X, 30), 15),
        "PBMC 8k, 30 PCs, k=15": (pbmc[:, :30], 15),
        "simulated 20,000 x 2,000, 30 PCs, k=15": (_embedding(simulate(20_000, 2_000, 1_500.0), 30), 15),
    }
    with competing(args.loaded):
        print(f"| case | scikit-learn | ours | ratio | same indices |{' (loaded)' if args.loaded else ''}")
        print("|---|---|---|---|---|")
        for name, (embedding, k) in cases.items():
            t_sk, want = _best(args.repeats, lambda e=embedding, k=k: _sklearn(e, k))
            t_us, got = _best(args.repeats, lambda e=embedding, k=k: _ours(e, k))
            same = float(np.mean(want == got))
            print(f"| {name} | {t_sk:.3f} s | {t_us:.3f} s | {t_sk / t_us:.2f} | {same:.6f} |", flush=True)
        t_sk, want = _best(args.repeats, lambda: _sweep_sklearn(pbmc))
        t_us, got = _best(args.repeats, lambda: _sweep_ours(pbmc))
        same = float(np.mean([np.mean(a == b) for a, b in zip(want, got, strict=True)]))
        name = f"PBMC 8k, n_pcs {N_PCS[0]}..{N_PCS[-1]} (9 searches), k=99"
        print(f"| {name} | {t_sk:.3f} s | {t_us:.3f} s | {t_sk / t_us:.2f} | {same:.6f} |", flush=True)


if __name__ == "__main__":
    main()
