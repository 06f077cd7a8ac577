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
from ._validate import check_flag

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

    from ._transform import ToCounts
    from ._types import ArrayLike

__all__ = [
    "check_key",
    "check_targets",
    "commit",
    "default_max_dense_bytes",
    "denoised_genes",
    "embed",
    "factored_outputs",
    "lazy_low_rank",
    "require_dask",
    "writable",
]

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


def lazy_low_rank(
    offset: np.ndarray,
    scores: np.ndarray,
    loadings: np.ndarray,
    cells: np.ndarray,
    counts: ToCounts | None = None,
) -> Any:
    """Dask array ``cells * (offset + scores @ loadings)``, float32, in blocks of cells.

    ``cells`` is 1 for kept cells and 0 for dropped ones (their output is 0, as in the
    dense layer). With ``counts``, each block is mapped to expected counts.
    """
    import dask.array as da

    n_cells, n_genes = scores.shape[0], loadings.shape[1]
    rows = max(1, min(n_cells, _BLOCK_BYTES // (4 * n_genes)))
    block_scores = da.from_array(scores, chunks=(rows, scores.shape[1]))
    block_cells = da.from_array(cells[:, None].astype(np.float32), chunks=(rows, 1))
    block_rows = da.arange(n_cells, chunks=rows)[:, None]

    def block(s: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
        values = low_rank_rows(offset, s, loadings)
        if counts is not None:
            values = counts(values, r[:, 0])
        return np.where(c > 0, values, np.float32(0))

    return da.map_blocks(
        block, block_scores, block_cells, block_rows, chunks=(block_scores.chunks[0], (n_genes,)), dtype=np.float32
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
    return np.where(kept[:, None], low_rank_rows(offset, scores, loadings.T), np.float32(0))


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
            msg = f"Genes not in adata.var_names: {missing[:5]}."
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


def factored_outputs(
    key: str,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray],
    cells: np.ndarray | None,
    genes: np.ndarray | None,
    n_cells: int,
    counts: ToCounts | None = None,
) -> dict[str, dict[str, Any]]:
    """Low-rank output as factors plus a lazy dask layer, kept cells and genes placed, per AnnData slot.

    The factors are on the transformed scale; with ``counts`` the layer holds expected counts.
    """
    offset, scores, loadings = factors
    full_offset = embed(offset.astype(np.float32)[:, None], genes)[:, 0]
    full_loadings = embed(np.ascontiguousarray(loadings.T, dtype=np.float32), genes)
    full_scores = embed(scores.astype(np.float32), cells)
    kept = np.ones(n_cells, dtype=bool) if cells is None else cells
    outputs: dict[str, dict[str, Any]] = {
        "layers": {key: lazy_low_rank(full_offset, full_scores, full_loadings.T, kept, counts)},
        "obsm": {f"{key}_scores": full_scores},
        "varm": {f"{key}_loadings": full_loadings},
        "var": {f"{key}_offset": full_offset},
    }
    if cells is not None:
        outputs["obs"] = {f"{key}_kept": kept}
    return outputs


def require_dask(why: str) -> None:
    """Raise an ``ImportError`` that says how to install dask when it is missing."""
    try:
        import dask.array  # noqa: F401
    except ImportError:
        msg = (
            f"{why} needs dask, which is not installed: install the package's dask extra "
            "(`pip install '.[dask]'` from a clone) or dask itself (`pip install 'dask[array]'`)."
        )
        raise ImportError(msg) from None


# -- Writing to a user's AnnData: checked before any work, then all at once or nothing. ---------

_MISSING = object()


def writable(adata: AnnData, copy: bool) -> AnnData:
    """Return the AnnData to write to: a copy, or the object itself made actual if it is a view (as scanpy does)."""
    adata = adata.copy() if copy else adata
    if adata.is_view:
        adata._init_as_actual(adata.copy())
    return adata


def check_key(key: object, name: str = "key_added") -> str:
    """Return ``key`` if anndata can write it to h5ad and read it back; raise otherwise."""
    if not isinstance(key, str) or key in ("", ".") or "/" in key:
        msg = (
            f"{name} must be a non-empty string without '/' (h5ad stores keys as paths), got {key!r}; "
            "e.g. key_added='denoised'."
        )
        raise ValueError(msg)
    return key


def _container(adata: AnnData, slot: str) -> Any:
    return getattr(adata, slot)


def _names(adata: AnnData, slot: str) -> set[str]:
    container = _container(adata, slot)
    return set(container.columns if slot in ("obs", "var") else container.keys())


def previous_outputs(adata: AnnData, key: str, function: str) -> dict[str, list[str]] | None:
    """Return what ``function`` of this package wrote under ``key``, per slot (None: not its record)."""
    from collections.abc import Mapping

    record = adata.uns.get(key)
    if not isinstance(record, Mapping) or "version" not in record:
        return None
    if "outputs" in record:
        if record.get("function") != function:
            return None
        return {slot: [str(n) for n in names] for slot, names in record["outputs"].items()}
    if function == "denoise" and {"method", "calibration", "loss", "best"} <= set(record):  # written before the list
        if record.get("output") == "factored":
            return {
                "layers": [key],
                "obsm": [f"{key}_scores"],
                "varm": [f"{key}_loadings"],
                "var": [f"{key}_offset"],
                "obs": [f"{key}_kept"],
            }
        return {"layers": [key]}
    return None


def check_targets(
    adata: AnnData,
    key: str,
    targets: dict[str, list[str]],
    *,
    function: str,
    read_layer: str | None,
    overwrite: bool,
) -> None:
    """Refuse, before any work, to write over the layer being read or over anything this package did not write.

    ``targets`` lists the names ``function`` may write per slot (``uns[key]`` is always
    written). With ``overwrite=True`` names written by something else may be replaced, the
    layer being read never.
    """
    overwrite = check_flag(overwrite, "overwrite")
    if read_layer is not None and read_layer in targets.get("layers", []):
        msg = (
            f"key_added={key!r} would write over adata.layers[{read_layer!r}], the layer being read; "
            "pass another key_added, e.g. key_added='denoised'."
        )
        raise ValueError(msg)
    if overwrite:
        return
    ours = previous_outputs(adata, key, function)
    if key in adata.uns and ours is None:
        msg = (
            f"adata.uns[{key!r}] exists and was not written by sc_noise2self.pp.{function}; pass another "
            "key_added, or overwrite=True to replace it."
        )
        raise ValueError(msg)
    ours = ours or {}
    for slot, names in targets.items():
        taken = sorted((set(names) & _names(adata, slot)) - set(ours.get(slot, [])))
        if taken:
            where = ", ".join(f"adata.{slot}[{n!r}]" for n in taken)
            msg = (
                f"{where} exists and was not written by sc_noise2self.pp.{function} under key_added={key!r}; "
                "pass another key_added, or overwrite=True to replace it."
            )
            raise ValueError(msg)


def _assign(adata: AnnData, slot: str, name: str, value: Any) -> Callable[[], None]:
    """Set one entry; return what puts the previous state back."""
    container = _container(adata, slot)
    if slot in ("obs", "var"):
        columns = list(container.columns)
        old = container[name].copy() if name in columns else None
        position = columns.index(name) if name in columns else None
        container[name] = value

        def undo_column() -> None:
            del container[name]
            if old is not None:
                container.insert(position, name, old)

        return undo_column
    old = container[name] if name in container else _MISSING  # a stored None is put back as None
    container[name] = value

    def undo() -> None:
        if old is _MISSING:
            del container[name]
        else:
            container[name] = old

    return undo


def _remove(adata: AnnData, slot: str, name: str) -> Callable[[], None]:
    container = _container(adata, slot)
    if slot in ("obs", "var"):
        position, old = list(container.columns).index(name), container[name].copy()
        del container[name]
        return lambda: container.insert(position, name, old)
    old = container[name]
    del container[name]
    return lambda: container.__setitem__(name, old)


def commit(
    adata: AnnData, key: str, outputs: dict[str, dict[str, Any]], record: dict[str, Any], *, function: str
) -> None:
    """Write every output and ``uns[key] = record`` together, or nothing.

    The package's own previous outputs under ``key`` that this call does not write again
    (e.g. factors of an earlier factored run) are removed. Any exception while writing,
    an interruption included, puts every entry back as it was.
    """
    previous = previous_outputs(adata, key, function) or {}
    record = {**record, "function": function, "outputs": {s: sorted(n) for s, n in outputs.items() if n}}
    undo: list[Callable[[], None]] = []
    try:
        for slot, names in previous.items():
            for name in names:
                if name not in outputs.get(slot, {}) and name in _names(adata, slot):
                    undo.append(_remove(adata, slot, name))
        for slot, values in outputs.items():
            for name, value in values.items():
                undo.append(_assign(adata, slot, name, value))
        undo.append(_assign(adata, "uns", key, record))
    except BaseException:
        for step in reversed(undo):
            step()
        raise
