"""``tl.denoised_genes``: some genes' denoised values for every cell, cheaply, from either kind of output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._engine import finish
from .._numerics.rows import low_rank_rows

if TYPE_CHECKING:
    from anndata import AnnData

    from .._types import ArrayLike

__all__ = ["denoised_genes"]


def denoised_genes(adata: AnnData, *, genes: ArrayLike, key: str = "denoised") -> np.ndarray:
    """Dense denoised values of some genes for all cells, cheaply, from either kind of output.

    Parameters
    ----------
    adata
        AnnData after :func:`sc_noise2self.pp.denoise`.
    genes
        Gene names, integer positions or a boolean mask.
    key
        The ``key_added`` used there.

    Returns
    -------
    cells × genes float32 array. For factored output only the needed loadings are used:
    cost cells × rank × genes.
    """
    if not isinstance(key, str) or key not in adata.uns or key not in adata.layers:
        msg = f"No denoised output under {key!r}; run sc_noise2self.pp.denoise(adata, key_added={key!r}) first."
        raise ValueError(msg)
    columns = _gene_positions(adata, genes)
    if adata.uns[key].get("output") != "factored" or adata.uns[key].get("scale") == "counts":
        layer = adata.layers[key][:, columns]  # counts are not low-rank: the lazy layer's columns
        return np.asarray(layer.compute() if hasattr(layer, "compute") else layer, dtype=np.float32)
    scores = adata.obsm[f"{key}_scores"]
    loadings = adata.varm[f"{key}_loadings"][columns]
    offset = adata.var[f"{key}_offset"].to_numpy()[columns]
    kept = adata.obs[f"{key}_kept"].to_numpy() if f"{key}_kept" in adata.obs else np.ones(adata.n_obs, dtype=bool)
    values = finish(
        low_rank_rows(offset, scores, loadings.T), None, None, non_negative=adata.uns[key].get("non_negative", False)
    )
    return np.where(kept[:, None], values, np.float32(0))  # as the layer is written


def _gene_positions(adata: AnnData, genes: object) -> np.ndarray:
    """Column positions of gene names, integer positions or a boolean mask, each checked."""
    if genes is None:
        msg = "genes must be gene names, integer positions or a boolean mask over adata.var_names, got None."
        raise ValueError(msg)
    if isinstance(genes, str | int | np.integer) and not isinstance(genes, bool):
        genes = [genes]  # one gene: a column of its own
    values = np.asarray(list(genes) if not isinstance(genes, np.ndarray) else genes)
    if values.ndim != 1:
        msg = f"genes must be 1-D, got shape {values.shape}."
        raise ValueError(msg)
    if values.size == 0:
        return np.empty(0, dtype=np.int64)
    if values.dtype == bool:
        if values.size != adata.n_vars:
            msg = f"A boolean mask of genes needs one entry per gene ({adata.n_vars}), got {values.size}."
            raise ValueError(msg)
        return np.flatnonzero(values)
    if values.dtype.kind in "OUS":
        names = values.astype(str)
        var_names = adata.var_names
        missing = [str(n) for n in names if n not in var_names]
        if missing:
            msg = (
                f"Genes not in adata.var_names: {missing[:5]}; pass names from adata.var_names, integer positions "
                "or a boolean mask over the genes."
            )
            raise ValueError(msg)
        if not var_names.is_unique:
            counts = var_names.value_counts()
            repeated = [str(n) for n in names if counts[n] > 1]
            if repeated:
                msg = (
                    f"Gene names {repeated[:5]} occur more than once in adata.var_names; call "
                    "`adata.var_names_make_unique()` first, or pass integer positions."
                )
                raise ValueError(msg)
            return np.array([var_names.get_loc(n) for n in names], dtype=np.int64)
        return var_names.get_indexer(names).astype(np.int64)
    if values.dtype.kind not in "iu":
        msg = f"genes must be gene names, integer positions or a boolean mask, got {values.dtype} values {genes!r}."
        raise ValueError(msg)
    if values.min() < -adata.n_vars or values.max() >= adata.n_vars:
        msg = f"Gene positions must lie in -{adata.n_vars}..{adata.n_vars - 1}, got {values.min()}..{values.max()}."
        raise ValueError(msg)
    return values.astype(np.int64) % adata.n_vars
