"""Gene masks (``mask_var``, as ``sc.pp.pca`` has): fit and calibrate on some genes, denoise every gene.

Denoising all 18,000 genes of a dataset costs several times a PCA of them, and most carry
little but noise. With a mask (by default ``var["highly_variable"]`` when it exists) the
denoiser is calibrated and fitted on the masked genes only, and every other gene is
denoised through the fitted low-rank output: it is regressed on the output's scores
(cells × k), which never saw it, and its denoised values are its fit on them. So a marker
gene outside the mask comes out denoised, not missing.

Depth normalisation divides by each cell's total over *all* genes, as scanpy's
``normalize_total`` does before genes are selected, so the layer is on the scale of the
usual log-normalised ``X`` for masked and other genes alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import linalg, sparse

from ._validate import as_canonical_csr, check_count_values, get_counts

if TYPE_CHECKING:
    from anndata import AnnData

    from ._types import TransformName

__all__ = ["GeneMask", "extend_factors", "resolve_mask_var"]

DEFAULT = "highly_variable"


class GeneMask(NamedTuple):
    """The genes a denoiser is fitted on, and what the others need to be denoised too."""

    mask: np.ndarray
    """Boolean over all genes: fitted on (True) or denoised through the fit (False)."""
    name: str
    """What ``uns`` records: the ``var`` column, or ``"array"``."""
    counts: sparse.csr_matrix
    """All genes' counts, canonical CSR."""
    totals: np.ndarray
    """Each cell's total count over all genes."""

    def kept_totals(self, cells: np.ndarray | None) -> np.ndarray:
        """Totals of the cells kept by the calibration (``cells``: their mask; None: all)."""
        return self.totals if cells is None else self.totals[cells]


def resolve_mask_var(adata: AnnData, mask_var: object, layer: str | None, *, counts: bool) -> GeneMask | None:
    """Return the gene mask to fit on, or None to fit on every gene.

    ``mask_var``: a boolean ``var`` column's name, a boolean array over genes, None (all
    genes), or ``"highly_variable"`` by default, used only when that column exists.
    """
    if mask_var is None:
        return None
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            if mask_var == DEFAULT:
                return None  # the default, where no genes were selected: all genes
            msg = f"mask_var={mask_var!r} is not a column of adata.var; pass a column of booleans, an array, or None."
            raise ValueError(msg)
        mask, name = np.asarray(adata.var[mask_var]), mask_var
    else:
        mask, name = np.asarray(mask_var), "array"
    if mask.dtype != bool or mask.shape != (adata.n_vars,):
        msg = (
            f"mask_var must select genes with one boolean per gene ({adata.n_vars}), got dtype {mask.dtype} and "
            f"shape {mask.shape}."
        )
        raise ValueError(msg)
    if mask.all():
        return None
    if mask.sum() < 2:
        msg = f"mask_var selects {int(mask.sum())} gene(s); a denoiser needs at least 2 to fit on."
        raise ValueError(msg)
    matrix = as_canonical_csr(get_counts(adata, layer))
    check_count_values(matrix, what="adata.X" if layer is None else f"adata.layers[{layer!r}]", counts=counts)
    return GeneMask(mask, name, matrix, np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel())


def extend_factors(
    factors: tuple[np.ndarray, np.ndarray, np.ndarray],
    genes: GeneMask,
    fitted_genes: np.ndarray | None,
    cells: np.ndarray | None,
    *,
    transform: TransformName,
    target_sum: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors over every gene from the factors of the masked genes.

    ``factors`` = ``(offset, scores, loadings)`` of the masked genes kept by the calibration
    (``fitted_genes``: which of the masked genes; None: all) for the kept ``cells``. Each
    other gene's offset and loadings are its least-squares fit on the scores with an
    intercept; masked genes left out (no counts) get zeros.
    """
    from ._transform import transformed

    offset, scores, loadings = factors
    n_genes = genes.mask.size
    full_offset, full_loadings = np.zeros(n_genes), np.zeros((scores.shape[1], n_genes))
    masked = np.flatnonzero(genes.mask)
    masked = masked if fitted_genes is None else masked[fitted_genes]
    full_offset[masked], full_loadings[:, masked] = offset, loadings
    others = np.flatnonzero(~genes.mask)
    rows = slice(None) if cells is None else cells
    values = transformed(genes.counts[rows][:, others], transform, target_sum, totals=genes.kept_totals(cells))
    z_mean, y_mean = scores.mean(axis=0), np.asarray(values.mean(axis=0)).ravel()
    centred = scores - z_mean
    gram = centred.T @ centred
    cross = np.asarray(values.T @ centred).T - np.outer(centred.sum(axis=0), y_mean)
    coefs = linalg.lstsq(gram, cross, cond=1e-10, lapack_driver="gelsy")[0]  # k × other genes; rank-safe
    full_loadings[:, others] = coefs
    full_offset[others] = y_mean - z_mean @ coefs
    return full_offset, scores, full_loadings
