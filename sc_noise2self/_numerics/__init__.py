"""Array arithmetic below every method: checks, splits, transforms and depth conversion, losses, rows, linear algebra.

Knows no AnnData, no denoiser and no calibration loop.
"""
