"""Logging in scanpy's style, without importing scanpy until a message is shown.

While scanpy is not imported its settings are still their defaults, so an info message would not
be shown: it is skipped without paying scanpy's import (seconds on a first call). Messages are
written around a running progress bar, never glued onto it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

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


def _beside_bars() -> Any:
    """Clear the text progress bars while a message is written, and draw them again after it."""
    from tqdm.std import tqdm

    return tqdm.external_write_mode(file=sys.stderr)
