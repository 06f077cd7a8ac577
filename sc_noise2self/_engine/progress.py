"""The one progress bar of a call: whole steps (each fit, each block or grid value scored, the refit)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import _logging as logg
from .._numerics.checks import check_flag
from .._numerics.compiled import kernels_compiled

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["add_steps", "bar_label", "progress_bar"]

DELAY = 1.0  # seconds before a default bar is drawn: a quick call prints nothing
COMPILING = "compiling numerical kernels on this first use (once: they are cached for later sessions)"


def bar_label(method: str, calibration: str) -> str:
    """Return what the bar says it runs, e.g. ``"MCV pca"``."""
    return f"{'Noise2Self' if calibration == 'genes' else 'MCV'} {method}"


def progress_bar(desc: str, *, progress: bool | None) -> tqdm:
    """Return the bar (``progress=None``: drawn after :data:`DELAY` seconds unless scanpy is set to errors only).

    Each stage adds its steps with :func:`add_steps` before its first step is done, so the bar
    is drawn with its whole total. In a Jupyter kernel ``tqdm.auto`` draws a widget, but warns
    when ipywidgets is missing: then, and outside Jupyter, the plain text bar is used.
    """
    shown = logg.verbosity() >= logg.WARNING if progress is None else check_flag(progress, "progress")
    from tqdm.std import tqdm as bar_class

    if shown and "ipykernel" in sys.modules:  # a Jupyter kernel: a widget where ipywidgets is there
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            pass
        else:
            from tqdm.auto import tqdm as bar_class
    bar = bar_class(
        total=0,
        desc=desc,
        disable=not shown,
        delay=DELAY if progress is None else 1e-9,  # drawn at the first step, never with the total 0
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}{postfix}]",
    )
    if shown and not kernels_compiled():
        bar.write(COMPILING)
    return bar


def add_steps(bar: tqdm, n: int) -> None:
    """Add ``n`` steps to the bar's total (before the first of them is done)."""
    bar.total += n
