"""Plotting: the calibration curve with the chosen value marked."""

from __future__ import annotations

from ._calibration import calibration

__all__ = ["calibration"]
