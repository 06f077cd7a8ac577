"""Logging in scanpy's style, without importing scanpy at package import time."""

from __future__ import annotations

from typing import Any


def info(msg: str, **kwargs: Any) -> Any:
    """``scanpy.logging.info``: respects ``sc.settings.verbosity`` and times ``time=start``."""
    from scanpy import logging as logg

    return logg.info(msg, **kwargs)


def warning(msg: str) -> None:
    """``scanpy.logging.warning``: shown at scanpy's default verbosity, not a Python warning."""
    from scanpy import logging as logg

    logg.warning(msg)


def verbose() -> bool:
    """Whether scanpy's verbosity (``sc.settings.verbosity``) is at least ``"info"``."""
    from scanpy import settings

    return settings.verbosity >= 2  # scanpy's Verbosity.info
