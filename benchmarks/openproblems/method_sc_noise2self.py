"""Our denoiser as an OpenProblems denoising-task method: raw counts in, denoised counts out.

    python method_sc_noise2self.py --input_train train.h5ad --output denoised.h5ad --method pca

Reads ``layers["counts"]`` of the training AnnData, calibrates the method by molecular
cross-validation on scanpy's scale (the package default: ``log1p`` of counts per 10,000),
and writes ``layers["denoised"]`` as counts: the denoised expected count of each gene in each
cell at that cell's depth (``scale="counts"``), as the task expects; ``--counts expm1`` maps
the log1p output back with ``expm1`` instead (biased low, for comparison). Prints the setting chosen.
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np

import sc_noise2self as n2s

METHODS = {
    "pca": {"method": "pca"},
    "diffusion": {"method": "diffusion", "grid": n2s.tl.grid(t=range(9), n_neighbors=[5, 15, 30])},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_train", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--method", choices=[*METHODS, "autoencoder"], default="pca")
    parser.add_argument(
        "--counts",
        choices=["exact", "expm1"],
        default="exact",
        help="exact: the package's inversion (scale='counts'); expm1: the usual biased back-transform, for comparison",
    )
    args = parser.parse_args()

    train = ad.read_h5ad(args.input_train)
    adata = ad.AnnData(obs=train.obs[[]], var=train.var[[]], layers={"counts": train.layers["counts"]})
    if args.method == "autoencoder":
        from sc_noise2self.denoisers import Autoencoder

        settings = {
            "method": Autoencoder(hidden=(128,), batch_size=128),
            "grid": n2s.tl.grid(bottleneck=[8, 32, 64], epochs=range(1, 11)),
        }
    else:
        settings = METHODS[args.method]
    scale = "counts" if args.counts == "exact" else "transformed"
    n2s.pp.denoise(adata, layer="counts", key_added="denoised", scale=scale, progress=False, **settings)
    denoised = adata.layers["denoised"]
    if args.counts == "expm1":  # log1p of counts per 10,000 back to each cell's depth
        totals = np.asarray(adata.layers["counts"].sum(axis=1), dtype=np.float64).ravel()
        denoised = np.maximum(np.expm1(denoised.astype(np.float64)), 0.0) * (totals[:, None] / 1e4)
    out = ad.AnnData(obs=train.obs[[]], var=train.var[[]], layers={"denoised": denoised})
    out.uns["dataset_id"] = train.uns.get("dataset_id", "unknown")
    out.uns["method_id"] = f"sc_noise2self_{args.method}"
    out.write_h5ad(args.output, compression="gzip")
    print(list(map(int, np.atleast_1d(adata.uns["denoised"]["best"]))))


if __name__ == "__main__":
    main()
