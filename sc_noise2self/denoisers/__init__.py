"""Denoising methods, each in a module of its own, behind one contract (:class:`Denoiser`).

Every public module of this package is imported here and registers its method by name
(:func:`register`), so a new method is one new file. Pass a name or an instance as ``method=``
to :func:`sc_noise2self.pp.denoise`; an instance's parameters are used (it is cloned, never
fitted itself).
"""

from importlib import import_module as _import_module
from pkgutil import iter_modules as _iter_modules

from . import _base
from ._base import *  # noqa: F403 - the contract, listed in _base.__all__
from ._registry import register, registered

for _module in _iter_modules(__path__):  # noqa: F405 - the package's own path
    if not _module.name.startswith("_"):
        _import_module(f"{__name__}.{_module.name}")

globals().update({cls.__name__: cls for cls in registered().values()})

__all__ = [
    *_base.__all__,
    "register",
    "registered",
    *sorted(cls.__name__ for cls in registered().values()),
]
