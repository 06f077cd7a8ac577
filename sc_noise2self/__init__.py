"""Self-supervised calibration of single-cell denoisers (Noise2Self, molecular cross-validation).

>>> import sc_noise2self as n2s
>>> adata = n2s.datasets.pbmc2k()
>>> n2s.pp.denoise(adata, progress=False)
>>> adata.uns["denoised"]["best"]  # doctest: +SKIP
"""

from . import datasets, denoisers, pl, pp, tl
from ._engine import CalibrationResult
from ._engine import package_version as _package_version
from ._numerics.machine import settings
from ._numerics.split import CountSplit

__version__ = _package_version()

__all__ = ["CalibrationResult", "CountSplit", "__version__", "datasets", "denoisers", "pl", "pp", "settings", "tl"]
