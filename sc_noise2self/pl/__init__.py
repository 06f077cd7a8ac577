"""Plotting: the calibration curve with the chosen value marked."""

from ._calibration import calibration

__all__ = ["calibration"]
