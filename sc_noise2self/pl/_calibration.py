"""``pl.calibration``: the held-out loss against the grid, with the chosen value marked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._numerics.checks import check_flag
from ..denoisers._registry import registered

if TYPE_CHECKING:
    from typing import Any

    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["calibration"]

_SWEPT = ("t", "epochs", "n_comps", "n_pcs")  # drawn along x; the other axis of a 2-D grid gets one curve per value


def _check_arguments(key: object, ax: object, show: object) -> None:
    """Refuse a bad ``key``, ``ax`` or ``show`` before anything is drawn."""
    from matplotlib.axes import Axes as MplAxes

    if not isinstance(key, str):
        msg = f"key must be the string passed as key_added (default 'denoised'), got {key!r}."
        raise ValueError(msg)
    if ax is not None and not isinstance(ax, MplAxes):
        msg = f"ax must be a matplotlib Axes (e.g. from plt.subplots()) or None, got {ax!r}."
        raise ValueError(msg)
    if show is not None:
        check_flag(show, "show")


def calibration(
    adata: AnnData,
    *,
    key: str = "denoised",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
) -> Axes | None:
    """Plot the held-out loss against the grid: each split, their mean with its uncertainty, and no denoising.

    With several splits (or gene groups) each value carries a band of ± one standard error of
    its difference to the minimum, paired by split: the values whose band reaches the
    minimum's loss are those the data cannot tell apart from it (``select="1se"`` takes the
    simplest of them).

    Parameters
    ----------
    adata
        AnnData after :func:`sc_noise2self.pp.denoise`.
    key
        The ``key_added`` used there; for :func:`sc_noise2self.pp.pca` and
        :func:`sc_noise2self.pp.neighbors`, their ``uns`` key (``"pca"``, ``"neighbors"``).
    ax
        Draw into this Axes; a new figure otherwise.
    show
        Show the figure; default: when no ``ax`` is given and matplotlib is interactive.
    save
        As in scanpy: ``True`` saves to ``sc.settings.figdir / "calibration.<format>"``
        (``sc.settings.file_format_figs``), a string without a folder is a suffix
        (``save="_pca.png"`` → ``figdir / "calibration_pca.png"``); a path with a folder,
        or a :class:`~pathlib.Path`, is used as it is.

    Returns
    -------
    The Axes, unless ``show`` is True.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    _check_arguments(key, ax, show)
    info, where = _calibration_record(adata, key)
    grid = np.asarray(info["grid"])
    loss = np.atleast_2d(np.asarray(info["loss"]))
    mean = loss.mean(axis=0)
    best = np.atleast_1d(np.asarray(info["best"]))
    names = [str(n) for n in info.get("grid_names", ["grid value"])]
    params = info.get("params", {})
    calibration = info.get("calibration", "mcv")

    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")  # labels inside even with a plain savefig
    se = np.asarray(info["difference_se"]) if "difference_se" in info else np.zeros_like(mean)
    x, along = _draw_curves(ax, grid, loss, se, names, calibration)
    if "loss_no_denoising" in info:  # MCV: the same loss for the training part itself
        ax.axhline(float(info["loss_no_denoising"]), color="0.4", ls=":", lw=1, label="no denoising")
    ibest = int(np.flatnonzero((grid.reshape(len(mean), -1) == best).all(axis=1))[0])
    ax.axvline(x[ibest], color="C3", ls="--", lw=1)  # (for a 2-D grid, on the chosen curve)
    chosen = ", ".join(str(int(v)) for v in best)
    rule = " (1-SE rule)" if info.get("select") == "1se" else ""
    ax.plot([x[ibest]], [mean[ibest]], marker="*", ms=12, color="C3", ls="none", label=f"chosen{rule}: {chosen}")
    if rule and "best_min" in info:
        minimum = np.atleast_1d(np.asarray(info["best_min"]))
        imin = int(np.flatnonzero((grid.reshape(len(mean), -1) == minimum).all(axis=1))[0])
        if imin != ibest:
            ax.plot([x[imin]], [mean[imin]], marker="o", ms=9, mfc="none", color="C3", ls="none", label="minimum")
    if x.min() > 0 and x.max() / x.min() >= 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 1, 10, 100
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # grid values are whole numbers
    ax.set_xlabel(_axis_label(str(info.get("method", "")), names[along]))
    transform = params.get("transform", "")
    loss_name = params.get("loss", "mse")
    scale = f"{transform} scale" if loss_name == "mse" else "count scale"
    what = "held-out" if calibration == "mcv" else "Noise2Self"
    ax.set_ylabel(f"{what} {loss_name} ({scale})")
    kind = "Molecular cross-validation" if calibration == "mcv" else "Noise2Self gene partition"
    ax.set_title(f"{kind}\n{info.get('method', '')}, {where}", fontsize="medium")
    ax.legend(frameon=False)
    path = _save_path(save)
    if path is not None:
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    if show is None:
        show = own_figure and plt.isinteractive()
    if show:
        plt.show()
        return None
    return ax


def _axis_label(method: str, axis: str) -> str:
    """Return what a grid axis means, as the method registered under ``method`` says (else the axis's name)."""
    labels = getattr(registered().get(method), "axis_labels", {})
    return labels.get(axis, axis)


def _calibration_record(adata: AnnData, key: str) -> tuple[Mapping[str, Any], str]:
    """Return the calibration in ``uns[key]`` (``pp.denoise``) or ``uns[key]["calibration"]`` (pca, neighbors)."""
    record = adata.uns.get(key)
    if isinstance(record, Mapping) and "loss" in record:
        return record, f"adata.uns[{key!r}]"
    nested = record.get("calibration") if isinstance(record, Mapping) else None
    if isinstance(nested, Mapping) and "loss" in nested:
        return nested, f"adata.uns[{key!r}]['calibration']"
    msg = (
        f"adata.uns[{key!r}] has no calibration; run sc_noise2self.pp.denoise(adata, key_added={key!r}), or "
        "sc_noise2self.pp.pca / pp.neighbors (then key='pca' or 'neighbors'), first."
    )
    raise ValueError(msg)


def _draw_curves(
    ax: Axes, grid: np.ndarray, loss: np.ndarray, se: np.ndarray, names: list[str], calibration: str
) -> tuple[np.ndarray, int]:
    """Draw the loss curves, each with a band of ± ``se``; return the x values and which grid axis they come from.

    ``se``: the standard error of each value's difference to the minimum (paired by split or
    gene group), so the values whose band reaches the minimum's loss are those the data
    cannot tell apart from it (the 1-SE rule's candidates).
    """
    mean = loss.mean(axis=0)
    along = next((names.index(n) for n in _SWEPT if n in names), 0) if grid.ndim == 2 else 0
    across = 1 - along
    x = grid if grid.ndim == 1 else grid[:, along]
    if grid.ndim == 1:
        if loss.shape[0] > 1:
            part = "single split" if calibration == "mcv" else "single gene group"
            for i, row in enumerate(loss):
                ax.plot(x, row, color="0.7", lw=0.8, label=part if i == 0 else None)
        label = (
            ("mean over splits" if calibration == "mcv" else "mean over gene groups") if loss.shape[0] > 1 else "loss"
        )
        ax.plot(x, mean, marker="o", ms=3, color="C0", lw=1.5, label=label)
        if se.any():
            label = "± 1 SE of the difference to the minimum"
            ax.fill_between(x, mean - se, mean + se, color="C0", alpha=0.2, lw=0, label=label)
    else:  # one curve per value of the other axis (neighbours, bottleneck width)
        for i, other in enumerate(np.unique(grid[:, across])):
            on = grid[:, across] == other
            ax.plot(x[on], mean[on], marker="o", ms=3, lw=1.5, color=f"C{i % 10}", label=f"{names[across]} = {other}")
            if se.any():
                ax.fill_between(x[on], (mean - se)[on], (mean + se)[on], color=f"C{i % 10}", alpha=0.15, lw=0)
    return x, along


def _save_path(save: bool | str | os.PathLike | None) -> Path | None:
    """Where to save the figure, by scanpy's convention for ``save=`` (see :func:`calibration`)."""
    if save is None or save is False:
        return None
    if not isinstance(save, bool | str | os.PathLike):
        msg = f"save must be True, a file name suffix or a path, got {save!r}."
        raise ValueError(msg)
    if isinstance(save, os.PathLike) or (isinstance(save, str) and os.sep in save):
        return Path(save)
    from scanpy import settings

    suffix = "" if save is True else str(save)
    if not Path(suffix).suffix:
        suffix += f".{settings.file_format_figs}"
    folder = Path(settings.figdir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"calibration{suffix}"
