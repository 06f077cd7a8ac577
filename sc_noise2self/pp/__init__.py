"""Preprocessing: denoised expression, and scanpy's PCA and neighbour graph with their settings chosen by the data."""

from ._denoise import denoise
from ._pipeline import neighbors, pca
from ._split_counts import split_counts

__all__ = ["denoise", "neighbors", "pca", "split_counts"]
