"""The methods by name: ``@register("pca")`` makes a denoiser available as ``method="pca"``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._base import BaseDenoiser

__all__ = ["register", "registered", "with_methods"]

_T = TypeVar("_T", bound="type[BaseDenoiser]")
_METHODS: dict[str, type[BaseDenoiser]] = {}


def register(name: str) -> Callable[[_T], _T]:
    """Class decorator: make the denoiser available as ``method=name`` everywhere a method is named.

    Parameters
    ----------
    name
        A lowercase identifier, e.g. ``"pca"``; once per class.

    Returns
    -------
    The decorator, which returns the class unchanged.
    """
    if not (isinstance(name, str) and name.isidentifier() and name == name.lower()):
        msg = f"A method's name must be a lowercase identifier, e.g. 'pca', got {name!r}."
        raise ValueError(msg)

    def add(cls: _T) -> _T:
        known = _METHODS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            msg = f"method {name!r} is registered already, by {known.__module__}.{known.__qualname__}."
            raise ValueError(msg)
        _METHODS[name] = cls
        return cls

    return add


def registered() -> dict[str, type[BaseDenoiser]]:
    """Every registered method, by name, in the order they were registered."""
    return dict(_METHODS)


def with_methods(doc: str | None) -> str | None:
    """``doc`` with ``{methods}`` replaced by the registered methods: each name and its class."""
    if doc is None:  # python -OO
        return None
    names = [
        f'``"{name}"`` (:class:`~sc_noise2self.denoisers.{cls.__name__}`)' for name, cls in sorted(_METHODS.items())
    ]
    return doc.replace("{methods}", ", ".join(names))
