"""Public API conventions (as scanpy's tests/test_package_structure.py checks them)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import sc_noise2self as n2s


def _takes_anndata(func) -> bool:
    first = next(iter(inspect.signature(func).parameters.values()))
    return "AnnData" in str(first.annotation)


PUBLIC_FUNCTIONS = [
    pytest.param(getattr(mod, name), id=f"{mod.__name__.rsplit('.', 1)[-1]}.{name}")
    for mod in (n2s.pp, n2s.tl, n2s.pl)
    for name in mod.__all__
    if inspect.isfunction(getattr(mod, name)) and _takes_anndata(getattr(mod, name))
]


def test_every_anndata_function_is_checked():
    ids = {p.id for p in PUBLIC_FUNCTIONS}
    assert {"pp.denoise", "pp.neighbors", "pp.pca", "pp.split_counts", "tl.calibrate", "pl.calibration"} <= ids


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS)
def test_signature_conventions(func):
    params = list(inspect.signature(func).parameters.values())
    assert params[0].name in {"adata", "data"}
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), "everything after AnnData is keyword-only"
    names = {p.name for p in params}
    if "copy" in names:
        ret = inspect.signature(func).return_annotation
        assert "AnnData" in str(ret) and "None" in str(ret)
        assert inspect.signature(func).parameters["copy"].default is False
    assert func.__doc__ and "Parameters" in func.__doc__ and "Returns" in func.__doc__
    documented = func.__doc__.split("Returns")[0]
    for name in names:
        assert f"\n    {name}\n" in documented, f"{func.__name__}: parameter {name!r} is undocumented"


def test_import_is_light():
    code = (
        "import sys, sc_noise2self; print(any(m in sys.modules for m in ('torch', 'scanpy', 'anndata', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_are_listed():
    for mod in (n2s, n2s.pp, n2s.tl, n2s.pl, n2s.datasets, n2s.denoisers):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"
