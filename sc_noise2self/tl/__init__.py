"""Tools: the calibration sweep alone, scores, and reads of the output."""

from .._engine import CalibrationResult
from ._calibrate import calibrate, grid
from ._denoised_genes import denoised_genes
from ._score import score_denoising

__all__ = ["CalibrationResult", "calibrate", "denoised_genes", "grid", "score_denoising"]
