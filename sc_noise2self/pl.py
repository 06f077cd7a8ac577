"""Plotting: the calibration curve with the chosen value marked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["calibration"]

_GRID_LABELS = {"n_comps": "number of principal components"}


def calibration(
    adata: AnnData,
    *,
    key: str = "denoised",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Plot the held-out loss against the grid, one thin line per split and their mean.

    Parameters
    ----------
    adata
        AnnData after :func:`sc_noise2self.pp.denoise`.
    key
        The ``key_added`` used there.
    ax
        Draw into this Axes; a new figure otherwise.
    show
        Show the figure; default: when no ``ax`` is given and matplotlib is interactive.
    save
        Path to save the figure to.

    Returns
    -------
    The Axes, unless ``show`` is True.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    if key not in adata.uns or "loss" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] has no calibration; run sc_noise2self.pp.denoise(adata, key_added={key!r}) first."
        raise ValueError(msg)
    info = adata.uns[key]
    grid = np.asarray(info["grid"])
    loss = np.atleast_2d(np.asarray(info["loss"]))
    mean = loss.mean(axis=0)
    best = int(info["best"])
    params = info.get("params", {})

    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(figsize=(5, 3.5))
    if loss.shape[0] > 1:
        for i, row in enumerate(loss):
            ax.plot(grid, row, color="0.7", lw=0.8, label="single split" if i == 0 else None)
    ax.plot(
        grid,
        mean,
        marker="o",
        ms=3,
        color="C0",
        lw=1.5,
        label="mean over splits" if loss.shape[0] > 1 else "held-out loss",
    )
    ibest = int(np.flatnonzero(grid == best)[0])
    ax.axvline(best, color="C3", ls="--", lw=1)
    ax.plot([best], [mean[ibest]], marker="*", ms=12, color="C3", ls="none", label=f"chosen: {best}")
    if grid.max() / max(grid.min(), 1) >= 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(_GRID_LABELS.get(str(info.get("grid_name")), str(info.get("grid_name", "grid value"))))
    transform = params.get("transform", "")
    loss_name = params.get("loss", "mse")
    scale = f"{transform} scale" if loss_name == "mse" else "count scale"
    ax.set_ylabel(f"held-out {loss_name} ({scale})")
    ax.set_title(f"Molecular cross-validation: {info.get('method', '')}")
    ax.legend(frameon=False)
    if save is not None:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = own_figure and plt.isinteractive()
    if show:
        plt.show()
        return None
    return ax
