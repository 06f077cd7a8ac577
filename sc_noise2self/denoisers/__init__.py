"""Denoising methods behind the :class:`~sc_noise2self.denoisers.Denoiser` protocol."""

from __future__ import annotations

from ._base import (
    BlockSweep,
    Blockwise,
    CellGraph,
    CountModel,
    Denoiser,
    GenePartition,
    LowRank,
    MaskedPartition,
    RowProjection,
    Streaming,
    ValueSweep,
)
from .diffusion import Diffusion
from .knn import KNNAverage
from .pca import PCA


def __getattr__(name: str) -> object:
    if name == "Autoencoder":  # imports torch, so only when asked for
        from .autoencoder import Autoencoder

        return Autoencoder
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "PCA",
    "Autoencoder",
    "BlockSweep",
    "Blockwise",
    "CellGraph",
    "CountModel",
    "Denoiser",
    "Diffusion",
    "GenePartition",
    "KNNAverage",
    "LowRank",
    "MaskedPartition",
    "RowProjection",
    "Streaming",
    "ValueSweep",
]
