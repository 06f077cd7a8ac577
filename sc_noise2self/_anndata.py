"""Reading counts from an AnnData, and writing every output to it at once, or nothing.

A user's data is never overwritten by something the package did not write itself: every name an
output would take is checked before any work (:func:`check_targets`), against the record the
package keeps of what it wrote under ``uns[key]``, and everything is then assigned together
(:func:`commit`); an error or an interruption puts every entry back.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._numerics.checks import check_flag

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

    from ._engine import Output
    from ._types import ArrayLike

__all__ = [
    "MASK_DEFAULT",
    "check_key",
    "check_targets",
    "commit",
    "counts_of",
    "describe_outputs",
    "get_counts",
    "output_names",
    "output_slots",
    "resolve_mask_var",
    "writable",
]

MASK_DEFAULT = "highly_variable"


def get_counts(adata: AnnData, layer: str | None) -> ArrayLike:
    """Return ``adata.X`` or ``adata.layers[layer]``, failing clearly when absent."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty; pass the layer that holds raw counts, e.g. `layer='counts'`."
            raise ValueError(msg)
        return adata.X
    if not isinstance(layer, str) or layer not in adata.layers:
        available = ", ".join(repr(k) for k in adata.layers) or "none"
        msg = f"Layer {layer!r} not found in adata.layers (available: {available}); pass one of them, or None (X)."
        if adata.raw is not None:
            msg += (
                " adata.raw holds a matrix, which is not a layer: if the raw counts are there, denoise "
                "`adata.raw.to_adata()`, or copy them into a layer when adata.raw has the same genes "
                "(`adata.layers['counts'] = adata.raw.X`) and pass layer='counts'."
            )
        raise ValueError(msg)
    return adata.layers[layer]


def counts_of(data: AnnData | ArrayLike, layer: str | None) -> tuple[ArrayLike, str]:
    """Return the matrix to calibrate (X or a layer of an AnnData, or the matrix itself) and its name in messages."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        return get_counts(data, layer), "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if layer is not None:
        msg = "layer is only meaningful for AnnData input."
        raise ValueError(msg)
    return data, "The count matrix"


def resolve_mask_var(adata: AnnData, mask_var: object) -> tuple[np.ndarray, str] | None:
    """Return the genes to fit on and what ``uns`` calls them (the column, or ``"array"``); None for every gene.

    ``mask_var``: a boolean ``var`` column's name, a boolean array over genes, None (all
    genes), or ``"highly_variable"`` by default, used only when that column exists.
    """
    if mask_var is None:
        return None
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            if mask_var == MASK_DEFAULT:
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
    return mask, name


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


_SLOTS = ("layers", "obsm", "varm", "obsp", "obs", "var")


def _container(adata: AnnData, slot: str) -> Any:
    return getattr(adata, slot)


def _get(adata: AnnData, slot: str, name: str) -> Any:
    return _container(adata, slot)[name]


def _names(adata: AnnData, slot: str) -> set[str]:
    container = _container(adata, slot)
    return set(container.columns if slot in ("obs", "var") else container.keys())


def fingerprint(value: Any) -> str:
    """Return an entry's shape and a checksum of a few of its rows: what tells the package's own output apart.

    It survives ``write_h5ad``/``read_h5ad`` (a lazy layer is read back computed, to the same values).
    """
    shape = tuple(int(n) for n in np.shape(value))
    rows = sorted({0, shape[0] // 2, shape[0] - 1}) if shape and shape[0] else []
    sample = value.iloc[rows] if hasattr(value, "iloc") else value[rows]
    sample = sample.compute() if hasattr(sample, "compute") else sample
    sample = sample.toarray() if hasattr(sample, "toarray") else sample
    return f"{shape}:{zlib.crc32(np.asarray(sample, dtype=np.float64).tobytes()):08x}"


def previous_outputs(adata: AnnData, key: str, function: str) -> dict[str, list[str]] | None:
    """Return what ``function`` of this package wrote under ``key`` and still stands as written, per slot.

    None when ``uns[key]`` is not such a record. An entry the record lists counts as the package's
    own only while its fingerprint matches: a record copied, edited or forged claims nothing.
    """
    record = adata.uns.get(key)
    if not isinstance(record, Mapping) or record.get("function") != function:
        return None
    prints, outputs = record.get("fingerprints"), record.get("outputs")
    if not isinstance(prints, Mapping) or not isinstance(outputs, Mapping):
        return None
    ours: dict[str, list[str]] = {}
    for slot, names in outputs.items():
        written = prints.get(slot)
        if slot not in _SLOTS or not isinstance(written, Mapping):
            continue
        for name in map(str, np.atleast_1d(names)):
            if name in _names(adata, slot) and written.get(name) == fingerprint(_get(adata, slot, name)):
                ours.setdefault(slot, []).append(name)
    return ours


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
    if adata.is_view and adata.isbacked:
        msg = (
            f"This AnnData is a view of a backed (on-disk) AnnData, which sc_noise2self.pp.{function} cannot write "
            "to; load those cells first (`adata = adata.to_memory()`), or pass the backed AnnData itself."
        )
        raise ValueError(msg)
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
                f"{where} exists and is not what sc_noise2self.pp.{function} wrote under key_added={key!r} "
                "(written by something else, or changed since); pass another key_added, or overwrite=True to "
                "replace it."
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
    prints = {slot: {name: fingerprint(value) for name, value in values.items()} for slot, values in outputs.items()}
    record = {
        **record,
        "function": function,
        "outputs": {s: sorted(n) for s, n in outputs.items() if n},
        "fingerprints": prints,
    }
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


_OUTPUT_NAMES = {
    "layers": ("{key}", "denoised expression"),
    "obsm": ("{key}_scores", "scores of the factored output"),
    "varm": ("{key}_loadings", "loadings of the factored output"),
    "var": ("{key}_offset", "offset of the factored output"),
    "obs": ("{key}_kept", "cells kept by the calibration"),
}


def output_names(key: str, kind: str, *, drop: bool) -> dict[str, list[str]]:
    """Return the names ``pp.denoise`` may write for this kind of output, per slot (``drop``: empty cells left out)."""
    slots = {"dense": ["layers"], "lazy": ["layers", "obs"], "factored": list(_OUTPUT_NAMES)}[kind]
    return {slot: [_OUTPUT_NAMES[slot][0].format(key=key)] for slot in slots if drop or slot != "obs"}


def output_slots(key: str, output: Output) -> dict[str, dict[str, Any]]:
    """Return the refit's output under its names, per AnnData slot."""
    slots: dict[str, dict[str, Any]] = {"layers": {key: output.layer}}
    if output.factors is not None:
        offset, scores, loadings = output.factors
        slots |= {
            "obsm": {f"{key}_scores": scores},
            "varm": {f"{key}_loadings": loadings},
            "var": {f"{key}_offset": offset},
        }
    if output.kept is not None:
        slots["obs"] = {f"{key}_kept": output.kept}
    return slots


def describe_outputs(slots: dict[str, dict[str, Any]]) -> str:
    """One line per output written, as scanpy's log lists them."""
    return "".join(
        f"    {name!r}, {_OUTPUT_NAMES[slot][1]} (adata.{slot})\n" for slot, names in slots.items() for name in names
    )
