"""Denoising methods behind the :class:`~sc_noise2self.denoisers.Denoiser` protocol."""

from __future__ import annotations

from ._base import BlockSweep, Denoiser, ValueSweep
from .diffusion import Diffusion
from .pca import PCA

__all__ = ["PCA", "BlockSweep", "Denoiser", "Diffusion", "ValueSweep"]
