"""Whether numba's on-disk cache already holds the package's kernels."""

from __future__ import annotations

import os

from . import dispersion, loss, rows, split, transform

__all__ = ["kernels_compiled"]


def kernels_compiled() -> bool:
    """Whether numba's on-disk cache holds the kernels of a default calibration.

    A fresh installation compiles them on its first call (tens of seconds); they are cached next
    to the package (or in ``NUMBA_CACHE_DIR``) and loaded by later processes. True where the
    cache cannot be read, so that nothing is announced that may not happen.
    """
    kernels = (
        split._binomial_kernel,
        rows._sum_rows,
        rows._low_rank_kernel,
        rows._sparse_dense_kernel,
        loss._mse_dense_rows,
        dispersion._dense_means,
        transform._rate_lookup,
    )
    try:
        return all(os.path.exists(kernel._cache._cache_file._index_path) for kernel in kernels)
    except AttributeError:  # another numba's internals
        return True
