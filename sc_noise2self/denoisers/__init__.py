"""Denoising methods, each in a module of its own, behind one contract (:class:`Denoiser`).

Every public module of this package is imported here and registers its method by name
(:func:`register`), so a new method is one new file. Pass a name or an instance as ``method=``
to :func:`sc_noise2self.pp.denoise`; an instance's parameters are used (it is cloned, never
fitted itself).
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import (
    ArrayData,
    BaseDenoiser,
    BaseSweep,
    Block,
    Data,
    Denoiser,
    LowRank,
    Partition,
    Predicted,
    Step,
    Sweep,
    Tags,
)
from ._registry import register, registered

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

globals().update({cls.__name__: cls for cls in registered().values()})

__all__ = [
    "ArrayData",
    "BaseDenoiser",
    "BaseSweep",
    "Block",
    "Data",
    "Denoiser",
    "LowRank",
    "Partition",
    "Predicted",
    "Step",
    "Sweep",
    "Tags",
    "register",
    "registered",
    *sorted(cls.__name__ for cls in registered().values()),
]
