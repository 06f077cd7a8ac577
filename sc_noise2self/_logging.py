"""Logging in scanpy's style, without importing scanpy until a message is shown.

While scanpy is not imported its settings are still their defaults, so an info message would not
be shown: it is skipped without paying scanpy's import (seconds on a first call). Messages are
written around a running progress bar, never glued onto it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

WARNING, INFO = 1, 2  # scanpy's Verbosity levels


def verbosity() -> int:
    """Return scanpy's verbosity (``sc.settings.verbosity``); its default, warning, while scanpy is not imported."""
    if "scanpy" not in sys.modules:
        return WARNING
    from scanpy import settings

    return int(settings.verbosity)


def info(msg: str, **kwargs: Any) -> datetime:
    """``scanpy.logging.info``: respects ``sc.settings.verbosity`` and times ``time=start``."""
    if verbosity() < INFO:
        return datetime.now(UTC)
    from scanpy import logging as logg

    with _beside_bars():
        return logg.info(msg, **kwargs)


def warning(msg: str) -> None:
    """``scanpy.logging.warning``: shown at scanpy's default verbosity, not a Python warning."""
    from scanpy import logging as logg

    with _beside_bars():
        logg.warning(msg)


def note(msg: str) -> None:
    """Write ``msg`` to standard error beside any progress bar, whatever scanpy's verbosity."""
    with _beside_bars():
        print(msg, file=sys.stderr, flush=True)


@contextmanager
def _beside_bars() -> Iterator[None]:
    """Clear the text progress bars already drawn while a message is written; draw them again after it.

    A bar still waiting for its delay is left alone (tqdm's own ``external_write_mode`` would draw it).
    """
    from tqdm.std import tqdm

    with tqdm.get_lock():
        drawn = [
            bar
            for bar in list(getattr(tqdm, "_instances", ()))
            if type(bar) is tqdm and not bar.disable and bar.last_print_t >= bar.start_t + bar.delay
        ]
        for bar in drawn:
            bar.clear(nolock=True)
        try:
            yield
        finally:
            for bar in drawn:
                bar.refresh(nolock=True)
