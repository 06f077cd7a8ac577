"""The denoised layer projected onto values ≥ 0: its error against the truth, and the choices, before and after.

Run: ``.venv/bin/python benchmarks/non_negative.py [--before REV] [--quick]`` (not CI; ~25 min on
2 cores).

On counts the truth on the transformed scale is ≥ 0, so ``max(ŷ, 0)`` is never further from it
than the output ``ŷ`` itself, entry by entry; the package writes that projection and scores it.
Two tables:

1. **Truth error**, on the package's default scale (``log1p`` of counts per 10,000), of the
   fitted output ``ŷ`` and of its projection, for PCA (ranks 1..60) and diffusion (t 0..8 ×
   n_neighbors 5, 15, 30): at the best value of the grid (oracle) and at each calibration's
   choice (MCV at the package defaults; the Noise2Self gene partition), with the share of
   negative entries in ``ŷ`` there. Data: the seeded simulator (low-rank Poisson, 2,000 cells ×
   1,000 genes, ~1,500 UMIs per cell; truth ``E[log1p(s X)]`` exact per entry, ``s`` each cell's
   scale) and PBMC 8k deep truth (``deep_truth.py``: its 2,000 most detected genes dealt into a
   shallow share q = 0.1 and two deep parts, seed 0).
2. **Choices before and after** on every dataset: PCA and diffusion at the package defaults, MCV
   and gene partition, by the revision ``--before`` (extracted with ``git archive``, run in its
   own process) and by this checkout. MCV scored the projection already (the depth conversion
   maps a negative prediction as 0), so its choices do not move; the gene partition scored
   ``ŷ`` itself before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_SUM = 1e4
GRIDS = {"pca": list(range(1, 61)), "diffusion": None}  # diffusion: deep_truth.py's grid
CALIBRATIONS = {"MCV": {}, "gene partition": {"calibration": "genes"}}


def datasets(quick: bool) -> dict:
    """Name -> counts (CSR) of every dataset compared; the truth-bearing ones first."""
    from _real_data import mouse10k, pbmc8k
    from _synthetic import simulate_with_rates
    from deep_truth import deal
    from scipy import sparse

    import sc_noise2self as n2s

    sim, _ = simulate_with_rates(500 if quick else 2_000, 300 if quick else 1_000, 1_500.0, seed=3)
    pbmc = sparse.csr_matrix(pbmc8k().X)
    shallow = deal(pbmc[:1500] if quick else pbmc, 0.1, 0)[0]
    out = {"simulator": sim, "PBMC 8k, q = 0.1": shallow[np.asarray(shallow.sum(axis=1)).ravel() > 0]}
    if not quick:
        out |= {
            "PBMC 2k (bundled)": sparse.csr_matrix(n2s.datasets.pbmc2k().X),
            "PBMC 8k, 2,000 genes": pbmc,
            "mouse 10k": sparse.csr_matrix(mouse10k().X),
        }
    return out


def grid(method: str):
    import sc_noise2self as n2s

    return GRIDS[method] if GRIDS[method] is not None else n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])


def choices(quick: bool) -> None:
    """Print, as JSON, each dataset's choices by this process's package (the worker of table 2)."""
    import sc_noise2self as n2s

    where = n2s.__file__
    out = {}
    for name, counts in datasets(quick).items():
        for method in GRIDS:
            for calibration, kwargs in CALIBRATIONS.items():
                result = n2s.tl.calibrate(counts, method=method, grid=grid(method), progress=False, **kwargs)
                out[f"{name}|{method}|{calibration}"] = np.asarray(result.best).tolist()
    print(json.dumps({"where": where, "choices": out}))


def _choices_in(tree: Path, quick: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}"}
    command = [sys.executable, __file__, "--worker"] + (["--quick"] if quick else [])
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=HERE)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if not result["where"].startswith(str(tree)):
        msg = f"{tree} was not the package imported: {result['where']}"
        raise RuntimeError(msg)
    return {tuple(key.split("|")): value for key, value in result["choices"].items()}


def truths(quick: bool) -> dict:
    """Name -> (counts, function of an output giving its truth error), for the two truth-bearing datasets."""
    from _real_data import pbmc8k
    from _synthetic import simulate_with_rates
    from deep_truth import deal, truth_estimate
    from scipy import sparse

    from sc_noise2self._numerics.transform import cell_scales, expected_transform

    counts, rates = simulate_with_rates(500 if quick else 2_000, 300 if quick else 1_000, 1_500.0, seed=3)
    scales = cell_scales(np.asarray(counts.sum(axis=1)).ravel(), TARGET_SUM)
    truth = np.stack([expected_transform(rates[c], scales[c], "log1p")[0] for c in range(counts.shape[0])])
    out = {"simulator": (counts, lambda y, t=truth: float(np.mean((y - t) ** 2)))}

    pbmc = sparse.csr_matrix(pbmc8k().X)
    shallow, deep1, deep2 = deal(pbmc[:1500] if quick else pbmc, 0.1, 0)
    keep = np.asarray(shallow.sum(axis=1)).ravel() > 0
    shallow, deep1, deep2 = shallow[keep], deep1[keep], deep2[keep]
    scales = cell_scales(np.asarray(shallow.sum(axis=1)).ravel(), TARGET_SUM)
    r = 0.1 / 0.45
    e1, e2 = truth_estimate(deep1, scales, r), truth_estimate(deep2, scales, r)
    out["PBMC 8k, q = 0.1"] = (shallow, lambda y, e1=e1, e2=e2: float(np.mean((y - e1) * (y - e2))))
    return out


def outputs(counts, method: str):
    """``(value, ŷ)`` at every grid value, fitted on all of ``counts`` (as the refit is)."""
    from _fitted import fit

    from sc_noise2self._numerics.transform import transformed
    from sc_noise2self.denoisers import PCA, Diffusion

    values = transformed(counts, "log1p", TARGET_SUM)
    if method == "pca":
        model, data = fit(PCA(random_state=0), values, grid(method))
        for value, pred in model.predictions(data.block()):
            yield value, pred.copy()
        return
    model, data = fit(Diffusion(random_state=0), values, Diffusion().check_grid(grid(method), values.shape))
    for step in model.values():
        yield tuple(step.value), step.predict(data.block())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="e049990", help="the revision before the projection")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        choices(args.quick)
        return
    with tempfile.TemporaryDirectory() as old:
        command = ["git", "archive", args.before, "sc_noise2self"]
        archive = subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        before, after = _choices_in(Path(old), args.quick), _choices_in(ROOT, args.quick)

    print("## Truth error of the output as fitted (ŷ) and projected (max(ŷ, 0))\n")
    print("| data | method | choice | value | ŷ < 0 | error of ŷ | error of max(ŷ, 0) | change |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (counts, error) in truths(args.quick).items():
        for method in GRIDS:
            raw, projected, negative = {}, {}, {}
            for value, pred in outputs(counts, method):
                raw[value], projected[value] = error(pred), error(np.maximum(pred, 0))
                negative[value] = float(np.mean(pred < 0))
            rows = {"oracle of ŷ": min(raw, key=raw.get), "oracle of max(ŷ, 0)": min(projected, key=projected.get)}
            for calibration in CALIBRATIONS:
                for label, table in (("before", before), ("after", after)):
                    chosen = table[(name, method, calibration)]
                    rows[f"{calibration}, {label}"] = tuple(chosen) if isinstance(chosen, list) else chosen
            for label, value in rows.items():
                change = projected[value] / raw[value] - 1
                print(
                    f"| {name} | {method} | {label} | {value} | {negative[value]:.1%} | {raw[value]:.5f} | "
                    f"{projected[value]:.5f} | {change:+.1%} |",
                    flush=True,
                )

    print(f"\n## Choices before ({args.before}) and after\n")
    print("| data | method | calibration | before | after |")
    print("|---|---|---|---|---|")
    for key in before:
        print(f"| {' | '.join(key)} | {before[key]} | {after[key]} |")


if __name__ == "__main__":
    sys.exit(main())
