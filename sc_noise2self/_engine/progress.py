"""The one progress bar of a call: whole steps (each fit, each block or grid value scored, the refit)."""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from .. import _logging as logg
from .._numerics.checks import check_flag

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tqdm import tqdm

__all__ = ["add_steps", "bar_label", "progress_bar"]

DELAY = 1.0  # seconds before a default bar is drawn: a quick call prints nothing
COMPILING = "compiling numerical kernels on their first use (once: they are cached for later sessions)"


def bar_label(method: str, calibration: str) -> str:
    """Return what the bar says it runs, e.g. ``"MCV pca"``."""
    return f"{'Noise2Self' if calibration == 'genes' else 'MCV'} {method}"


@contextmanager
def progress_bar(desc: str, *, progress: bool | None) -> Iterator[tqdm]:
    """Show the bar of a call while the body runs (``progress=None``: unless scanpy is set to errors only).

    Each stage adds its steps with :func:`add_steps` before its first step is done, so the bar
    is drawn with the whole total of its stages: by default after :data:`DELAY` seconds (a
    quick call prints nothing); with ``progress=True`` from the first step. In a Jupyter kernel
    ``tqdm.auto`` draws a widget, but warns when ipywidgets is missing: then, and outside
    Jupyter, the plain text bar is used. The first kernel numba compiles in this process
    (a fresh installation) is announced once.
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
        delay=DELAY if progress is None else 1e-9,  # not drawn before its first step, when its total is known
        mininterval=0.1 if progress is None else 0,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}{postfix}]",
    )
    with bar, _announce_compiling() if shown else nullcontext():
        yield bar


def add_steps(bar: tqdm, n: int) -> None:
    """Add ``n`` steps to the bar's total (before the first of them is done)."""
    bar.total += n


_announced = False


@contextmanager
def _announce_compiling() -> Iterator[None]:
    """Say once per process when numba compiles (its on-disk cache lacks a kernel: a fresh installation)."""
    if _announced:
        yield
        return
    from numba.core import event

    class Announce(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            global _announced
            if not _announced:
                _announced = True
                logg.note(COMPILING)

        def on_end(self, ev: event.Event) -> None:
            pass

    with event.install_listener("numba:compile", Announce()):
        yield
