"""The one progress bar of a call: whole steps (each fit, each block or grid value scored, the refit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _logging as logg
from .._numerics.checks import check_flag

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["add_steps", "bar_label", "progress_bar"]


def bar_label(method: str, calibration: str) -> str:
    """Return what the bar says it runs, e.g. ``"MCV pca"``."""
    return f"{'Noise2Self' if calibration == 'genes' else 'MCV'} {method}"


def progress_bar(desc: str, *, progress: bool | None) -> tqdm:
    """Return the bar (``progress=None``: shown when scanpy's verbosity is info).

    Each stage adds its steps with :func:`add_steps` once it knows them. ``tqdm.auto`` draws a
    widget in Jupyter, but warns when ipywidgets is missing: then the plain text bar is used.
    """
    progress = logg.verbose() if progress is None else check_flag(progress, "progress")
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm as bar_class
    else:
        from tqdm.auto import tqdm as bar_class
    return bar_class(
        total=0, desc=desc, disable=not progress, bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}{postfix}]"
    )


def add_steps(bar: tqdm, n: int) -> None:
    """Add ``n`` steps to the bar's total."""
    bar.total += n
    bar.refresh()
