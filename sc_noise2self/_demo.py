"""``make demo``: denoise the bundled real PBMC data and show the calibration.

Run as ``python -m sc_noise2self._demo --out demo_output``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import sc_noise2self as n2s


def main(argv: list[str] | None = None) -> None:
    """Denoise :func:`sc_noise2self.datasets.pbmc2k`, print the choice, write an h5ad and a PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for the h5ad and PNG")
    parser.add_argument("--n-splits", type=int, default=3, help="random molecular splits to average")
    args = parser.parse_args(argv)

    import matplotlib as mpl

    mpl.use("Agg")

    adata = n2s.datasets.pbmc2k()
    print(f"Data: {adata.n_obs} cells x {adata.n_vars} genes, raw UMI counts (10x PBMC, bundled)")
    start = time.perf_counter()
    n2s.pp.denoise(adata, n_splits=args.n_splits, random_state=0)
    elapsed = time.perf_counter() - start
    info = adata.uns["denoised"]
    best, grid, loss = info["best"], info["grid"], info["loss_mean"]
    print(f"Molecular cross-validation over {grid.size} ranks ({grid[0]}..{grid[-1]}), {args.n_splits} splits:")
    print(f"  chosen number of principal components: {best}")
    depth = "the data's full depth" if info["params"]["depth"] == "output" else "the held-out part's depth"
    print(f"  held-out MSE (log1p of counts per 10,000, scanpy's scale; at {depth}) at the minimum: {loss.min():.6f}")
    print(f"  (rank {grid[0]}: {loss[0]:.6f}, rank {grid[-1]}: {loss[-1]:.6f})")
    print(f"  time: {elapsed:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(args.out / "pbmc2k_denoised.h5ad", compression="gzip")
    n2s.pl.calibration(adata, show=False, save=args.out / "calibration.png")
    print(f"Wrote {args.out / 'pbmc2k_denoised.h5ad'} (layers['denoised']) and {args.out / 'calibration.png'}")


if __name__ == "__main__":
    main()
