"""The autoencoder's calibrations against the truth: Noise2Self masked training and count likelihoods.

Run: ``.venv/bin/python benchmarks/autoencoder_calibration.py`` (not CI; ~15 min on 2 cores).

Seeded low-rank Poisson simulator (``tests/conftest.py``: 400 cells × 120 genes, 6 programs,
~500 counts per cell), seeds 0, 1, 2; a small network (hidden 64, batches of 64, learning
rate 3e-3) over bottleneck {2, 6, 24} × epochs 1..40. For every setting the network's output
(each setting's network trained on all counts, as the refit is) is scored against the truth,
``E[T(s X)]`` under the true rates; regret = truth error of the calibration's choice over the
best setting's. Printed:

1. ``calibration="genes"`` (masked training, J-invariant output) with each ``mask_fill``;
   its calibration and its output are the same function, so one run gives both.
2. ``calibration="mcv"`` with ``likelihood`` normal / poisson / negative_binomial, scored
   with ``loss="mse"`` and ``loss="poisson"``.
3. ``calibration="mcv"``, squared-error network, ``depth="held_out"`` (the default until
   2026-11-26) against ``depth="output"`` (the error at the output's depth, issue 15; the default since).
4. The regret of what is written: the refit is the mean of ``n_fits=3`` networks, so each
   setting's output is that mean (its members trained as the refit trains them).

``--only N`` runs one part; ``--likelihoods ...`` limits parts 2 and 4 to those likelihoods.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
from _fitted import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sc_noise2self as n2s
from sc_noise2self._numerics.transform import cell_scales, expected_transform, transformed
from sc_noise2self.denoisers import ArrayData, Autoencoder
from tests.conftest import regret, simulate_low_rank_poisson

SMALL = {"hidden": (64,), "batch_size": 64, "learning_rate": 3e-3, "device": "cpu"}
GRID = n2s.tl.grid(bottleneck=[2, 6, 24], epochs=range(1, 41))
SEEDS = (0, 1, 2)
SCALES = {"sqrt": None, "log1p": 1e4}
LIKELIHOODS = ("normal", "poisson", "negative_binomial")
if "--likelihoods" in sys.argv:
    _after = sys.argv[sys.argv.index("--likelihoods") + 1 :]
    LIKELIHOODS = tuple(itertools.takewhile(lambda arg: not arg.startswith("--"), _after))


def simulation(seed: int, transform: str) -> tuple:
    sim = simulate_low_rank_poisson(400, 120, 6, mean_depth=500.0, seed=seed)
    scales = cell_scales(np.asarray(sim.counts.sum(axis=1)).ravel(), SCALES[transform])
    truth = np.stack([expected_transform(r, [s], transform)[0] for r, s in zip(sim.rates, scales, strict=True)])
    return sim.counts, transformed(sim.counts, transform, SCALES[transform]), scales, truth


def sweep_errors(model: Autoencoder, data: ArrayData, truth: np.ndarray) -> dict:
    """Truth error of the network fitted on ``data`` at every grid value."""
    return {step.value: float(np.mean((step.predict(data.block()) - truth) ** 2)) for step in model.values()}


def choose(counts: object, transform: str, method: Autoencoder, **settings: object) -> tuple[object, tuple, float]:
    """Calibrate ``method`` on ``counts``; return the result, its choice and the seconds it took."""
    start = time.perf_counter()
    result = n2s.tl.calibrate(
        counts, method=method, grid=GRID, transform=transform, target_sum=SCALES[transform], progress=False, **settings
    )
    return result, tuple(int(v) for v in result.best), time.perf_counter() - start


def masked(transform: str) -> None:
    print(f"\n### Noise2Self masked training, {transform}\n")
    print("| mask_fill | seed | chosen | best on the grid | regret | truth error at the choice | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for fill in ("zero", "mean", "donor"):
        for seed in SEEDS:
            counts, values, _, truth = simulation(seed, transform)
            result, best, seconds = choose(counts, transform, Autoencoder(**SMALL, mask_fill=fill), calibration="genes")
            data = ArrayData(values)
            errors = sweep_errors(
                Autoencoder(**SMALL, mask_fill=fill).fit_masked(data, result.gene_groups, GRID), data, truth
            )
            print(
                f"| {fill} | {seed} | {best} | {min(errors, key=errors.get)} | {regret(errors, best):.3f} | "
                f"{errors[best]:.4f} | {seconds:.0f} |",
                flush=True,
            )


def likelihoods(transform: str) -> None:
    print(f"\n### MCV, count likelihoods, {transform}\n")
    print("| likelihood | loss | seed | chosen | best on the grid | regret | truth error: choice / best | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for likelihood in LIKELIHOODS:
        for seed in SEEDS:
            counts, values, scales, truth = simulation(seed, transform)
            model = Autoencoder(**SMALL, likelihood=likelihood)
            errors = sweep_errors(*fit(model, values, GRID, counts, scales=scales, transform=transform), truth)
            for loss in ("mse", "poisson"):
                _, best, seconds = choose(counts, transform, Autoencoder(**SMALL, likelihood=likelihood), loss=loss)
                print(
                    f"| {likelihood} | {loss} | {seed} | {best} | {min(errors, key=errors.get)} | "
                    f"{regret(errors, best):.3f} | {errors[best]:.4f} / {min(errors.values()):.4f} | {seconds:.0f} |",
                    flush=True,
                )


def depths(transform: str) -> None:
    print(f"\n### MCV, squared-error network, the depth of the error, {transform}\n")
    print("| depth | seed | chosen | best on the grid | regret | time (s) |")
    print("|---|---|---|---|---|---|")
    for seed in SEEDS:
        counts, values, _, truth = simulation(seed, transform)
        errors = sweep_errors(*fit(Autoencoder(**SMALL), values, GRID), truth)
        for depth in ("held_out", "output"):
            _, best, seconds = choose(counts, transform, Autoencoder(**SMALL), depth=depth)
            print(
                f"| {depth} | {seed} | {best} | {min(errors, key=errors.get)} | {regret(errors, best):.3f} | "
                f"{seconds:.0f} |",
                flush=True,
            )


def ensemble_errors(model: Autoencoder, truth: np.ndarray) -> dict:
    """Truth error of the mean of the ``n_fits`` networks at every grid value (the written output's)."""
    total: dict = {}
    for member in range(model.n_fits):
        for width, epochs in model._plan(model.grid_).items():  # the refit's members, as `output` trains them
            for epoch, module in model._training(width, epochs, member):
                out = model._infer(module, slice(None)).astype(np.float64)
                key = (int(width), int(epoch))
                total[key] = total.get(key, 0.0) + out
    return {key: float(np.mean((out / model.n_fits - truth) ** 2)) for key, out in total.items()}


def outputs(transform: str) -> None:
    print(f"\n### MCV, the written output (mean of n_fits=3 networks), {transform}\n")
    print("| likelihood | seed | chosen | best on the grid | regret | truth error: choice / best | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for likelihood in LIKELIHOODS:
        for seed in SEEDS:
            counts, values, scales, truth = simulation(seed, transform)
            model = Autoencoder(**SMALL, likelihood=likelihood, n_fits=3)
            fit(model, values, GRID, counts, scales=scales, transform=transform)
            errors = ensemble_errors(model, truth)
            _, best, seconds = choose(counts, transform, Autoencoder(**SMALL, likelihood=likelihood))
            print(
                f"| {likelihood} | {seed} | {best} | {min(errors, key=errors.get)} | {regret(errors, best):.3f} | "
                f"{errors[best]:.4f} / {min(errors.values()):.4f} | {seconds:.0f} |",
                flush=True,
            )


def main() -> None:
    parts = {1: masked, 2: likelihoods, 3: depths, 4: outputs}
    only = int(sys.argv[sys.argv.index("--only") + 1]) if "--only" in sys.argv else None
    for number, part in parts.items():
        if only in (None, number):
            for transform in SCALES:
                part(transform)


if __name__ == "__main__":
    sys.exit(main())
