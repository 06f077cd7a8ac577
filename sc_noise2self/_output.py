"""Writing denoised values: dense when they fit in memory, otherwise low-rank factors and a lazy layer.

A dense float32 denoised layer of 1M cells × 20k genes is 80 GB. Low-rank denoisers (PCA,
diffusion in principal components) are ``offset + scores @ loadings``, so they can be
kept as factors (``obsm``/``varm``/``var``) with a dask array in ``layers`` that computes
blocks of cells on demand — and block by block when the AnnData is written to h5ad/zarr.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ._rows import low_rank_rows

if TYPE_CHECKING:
    from anndata import AnnData

    from ._types import ArrayLike

__all__ = ["default_max_dense_bytes", "denoised_genes", "embed", "lazy_low_rank", "write_factored"]

_BLOCK_BYTES = 64 * 2**20


def default_max_dense_bytes() -> int:
    """Return a quarter of this machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 * 2**30


def embed(values: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | None = None) -> np.ndarray:
    """Place 2-D values computed for kept rows/columns (boolean masks; None: all) into zeros of full size."""
    if rows is None and columns is None:
        return values
    row_index = np.arange(values.shape[0]) if rows is None else np.flatnonzero(rows)
    column_index = np.arange(values.shape[1]) if columns is None else np.flatnonzero(columns)
    shape = (values.shape[0] if rows is None else rows.size, values.shape[1] if columns is None else columns.size)
    out = np.zeros(shape, dtype=values.dtype)
    out[np.ix_(row_index, column_index)] = values
    return out


def lazy_low_rank(offset: np.ndarray, scores: np.ndarray, loadings: np.ndarray, cells: np.ndarray) -> Any:
    """Dask array ``cells * (offset + scores @ loadings)``, float32, in blocks of cells.

    ``cells`` is 1 for kept cells and 0 for dropped ones (their output is 0, as in the
    dense layer).
    """
    import dask.array as da

    n_cells, n_genes = scores.shape[0], loadings.shape[1]
    rows = max(1, min(n_cells, _BLOCK_BYTES // (4 * n_genes)))
    chunks = (rows, scores.shape[1])
    block_scores = da.from_array(scores, chunks=chunks)
    block_cells = da.from_array(cells[:, None].astype(np.float32), chunks=(rows, 1))

    def block(s: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.where(c > 0, low_rank_rows(offset, s, loadings), np.float32(0))

    return da.map_blocks(
        block, block_scores, block_cells, chunks=(block_scores.chunks[0], (n_genes,)), dtype=np.float32
    )


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
    if key not in adata.uns or key not in adata.layers:
        msg = f"No denoised output under {key!r}; run sc_noise2self.pp.denoise(adata, key_added={key!r}) first."
        raise ValueError(msg)
    columns = adata.var_names.get_indexer(genes) if np.asarray(genes).dtype.kind in "OUS" else np.asarray(genes)
    if np.asarray(columns).dtype == bool:
        columns = np.flatnonzero(columns)
    if (np.asarray(columns) < 0).any():
        missing = np.asarray(genes)[np.asarray(columns) < 0]
        msg = f"Genes not in adata.var_names: {list(missing)[:5]}."
        raise ValueError(msg)
    if adata.uns[key].get("output") != "factored":
        return np.asarray(adata.layers[key][:, columns], dtype=np.float32)
    scores = adata.obsm[f"{key}_scores"]
    loadings = adata.varm[f"{key}_loadings"][columns]
    offset = adata.var[f"{key}_offset"].to_numpy()[columns]
    kept = adata.obs[f"{key}_kept"].to_numpy() if f"{key}_kept" in adata.obs else np.ones(adata.n_obs, dtype=bool)
    return np.where(kept[:, None], low_rank_rows(offset, scores, loadings.T), np.float32(0))


def write_factored(
    adata: AnnData,
    key: str,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray],
    cells: np.ndarray | None,
    genes: np.ndarray | None,
) -> None:
    """Store low-rank output as factors plus a lazy dask layer, placing kept cells and genes."""
    offset, scores, loadings = factors
    full_offset = embed(offset.astype(np.float32)[:, None], genes)[:, 0]
    full_loadings = embed(np.ascontiguousarray(loadings.T, dtype=np.float32), genes)
    full_scores = embed(scores.astype(np.float32), cells)
    kept = np.ones(adata.n_obs, dtype=bool) if cells is None else cells
    adata.obsm[f"{key}_scores"] = full_scores
    adata.varm[f"{key}_loadings"] = full_loadings
    adata.var[f"{key}_offset"] = full_offset
    if cells is not None:
        adata.obs[f"{key}_kept"] = kept
    adata.layers[key] = lazy_low_rank(full_offset, full_scores, full_loadings.T, kept)
