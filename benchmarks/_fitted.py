"""Fitting a denoiser directly, outside a calibration, through the denoiser contract (as ``tests/_helpers.py`` does).

A denoiser is fitted on :class:`~sc_noise2self.denoisers.Data` (:func:`fit`) and is a sweep:
predictions of a block of cells at every grid value (``sweep.predictions(data.block())`` or
``sweep.values()``, as ``sweep.order`` says), and the output at one value (:func:`predict`).
"""

from __future__ import annotations

import numpy as np

from sc_noise2self.denoisers import ArrayData


class StreamedData(ArrayData):
    """Data in memory handed to a denoiser as if read block by block (one block of all cells).

    The autoencoder fitted on it trains from that stream and keeps no matrix of its own, so its
    output is computed from the values and counts of whatever
    :class:`~sc_noise2self.denoisers.Block` it is given (networks trained on one matrix applied
    to another), as for dask or backed input; fitted in memory, it reads its own matrix's rows.
    """

    in_memory = False


def fit(denoiser, values, grid, counts=None, **data):
    """Fit a denoiser on values in memory (``ArrayData``); return the sweep and the data."""
    data = ArrayData(values, counts, **data)
    return denoiser.fit(data, np.asarray(grid)), data


def predict(sweep, data, value, rows=slice(None)):
    """The fitted output at ``value`` for cells ``rows``."""
    return sweep.output(value).block(data.block(rows))
