"""Cost of the diffusion-time sweep relative to one graph build plus one product, and peak memory.

Run: ``.venv/bin/python benchmarks/diffusion_sweep.py [--cells 20000 --genes 2000]``

Same seeded low-rank Poisson data as ``pca_sweep.py``. Measured in one run:

- ``embedding``: the PCA the graph is built on (100 components), by the exact covariance
  route (``Diffusion``'s default up to 4,096 genes) and by the randomised SVD it used before;
- ``neighbours``: the kNN search on the first 30 components, exact (scikit-learn) and
  approximate (pynndescent, after a warm-up call that compiles it), and the share of exact
  neighbours the approximate search finds;
- ``graph``: ``Diffusion.fit`` at one value — the embedding, exact kNN on the first 30
  components (scikit-learn), the transition matrix;
- ``product``: one step, transition matrix × components;
- ``sweep``: fit plus t = 1..20, each value mapped back to genes for every block of cells
  (what the calibration scores);
- ``calibrate``: ``tl.calibrate(method="diffusion", grid=1..20)`` end to end (split,
  transform, sweep, exact depth conversion and scoring of every entry at every t);
- peak resident memory of the process, next to the input's size and to cells².
"""

from __future__ import annotations

import argparse
import resource

import numpy as np
from _synthetic import best_of, simulate

from sc_noise2self import tl
from sc_noise2self._engine.blocks import chunk_rows
from sc_noise2self._numerics.transform import transformed
from sc_noise2self.denoisers import PCA, ArrayData, Diffusion
from sc_noise2self.denoisers._search import knn_graph

SQRT = {"transform": "sqrt", "target_sum": None}  # the scale these figures were measured on


def sweep_seconds(model: Diffusion, data: ArrayData, times: np.ndarray, repeats: int) -> float:
    """Best time of fitting ``model`` at ``times`` and predicting every block of cells at every time."""
    blocks = [data.block(rows) for rows in chunk_rows(*data.shape, None)]  # made outside the timing

    def sweep() -> None:
        for step in model.fit(data, times).values():
            for block in blocks:
                step.predict(block)

    return best_of(repeats, sweep)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--depth", type=float, default=1_500.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    counts = simulate(args.cells, args.genes, args.depth)
    n, g = counts.shape
    print(f"data: {n} x {g} CSR, {counts.nnz:,} nonzeros ({counts.nnz / n / g:.1%})")
    X = transformed(counts, "sqrt", None)
    model = Diffusion(random_state=0)
    times = np.arange(1, 21)

    t_exact = best_of(args.repeats, lambda: PCA(solver="covariance").embed(X, model.n_comps))
    t_random = best_of(args.repeats, lambda: PCA(solver="randomized", random_state=0).embed(X, model.n_comps))
    print(
        f"embedding, {model.n_comps} components: exact covariance route {t_exact:.2f} s, "
        f"randomised SVD {t_random:.2f} s, ratio {t_random / t_exact:.2f}"
    )
    embedding = PCA(solver="covariance").embed(X, model.n_pcs)[1]
    t_exact_nn = best_of(args.repeats, lambda: knn_graph(embedding, model.n_neighbors))
    knn_graph(embedding[:2000], model.n_neighbors, method="approximate")  # compile pynndescent
    t_approx_nn = best_of(args.repeats, lambda: knn_graph(embedding, model.n_neighbors, method="approximate"))
    exact_nn, approx_nn = (
        knn_graph(embedding, model.n_neighbors)[1],
        knn_graph(embedding, model.n_neighbors, method="approximate")[1],
    )
    found = np.mean([len(set(a) & set(b)) for a, b in zip(exact_nn, approx_nn, strict=True)]) / model.n_neighbors
    print(
        f"neighbours (k={model.n_neighbors}, {model.n_pcs} components): exact {t_exact_nn:.2f} s, "
        f"approximate {t_approx_nn:.2f} s, ratio {t_exact_nn / t_approx_nn:.1f}; approximate finds {found:.1%} "
        "of the exact neighbours"
    )
    data = ArrayData(X)
    t_graph = best_of(args.repeats, lambda: model.fit(data, np.array([0])))
    P, z = model.operators_[model.n_neighbors], model.scores_
    t_product = best_of(max(args.repeats, 5), lambda: P @ z)
    print(f"graph build (PCA {model.n_comps} comps + kNN k={model.n_neighbors} + operator): {t_graph:.2f} s")
    print(f"one product (operator, {P.nnz:,} nonzeros, x {z.shape[1]} components): {t_product * 1e3:.1f} ms")

    t_sweep = sweep_seconds(model, data, times, args.repeats)
    print(f"sweep t=1..20, every block predicted: {t_sweep:.2f} s")
    print(f"ratio sweep / (graph + one product): {t_sweep / (t_graph + t_product):.2f}  (goal <= 2)")
    t_cal = best_of(args.repeats, lambda: tl.calibrate(counts, method="diffusion", grid=times, progress=False, **SQRT))
    ratio = t_cal / (t_graph + t_product)
    print(f"calibrate t=1..20 end to end (split, sweep, scoring): {t_cal:.2f} s, ratio {ratio:.2f}")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"peak RSS {peak / 2**30:.2f} GiB; input CSR {(counts.data.nbytes + counts.indices.nbytes) / 2**30:.2f} GiB; "
        f"a cells x cells float64 array would be {n * n * 8 / 2**30:.1f} GiB"
    )


if __name__ == "__main__":
    main()
