"""Public API conventions (as scanpy's tests/test_package_structure.py checks them)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

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


def test_modules_show_only_their_public_names():
    """``dir(n2s.pp)`` lists what a user may call, not the helpers its modules import."""
    for mod in (n2s, n2s.pp, n2s.tl, n2s.pl, n2s.datasets, n2s.denoisers):
        public = {name for name in dir(mod) if not name.startswith("_")}
        submodules = {name for name in public if inspect.ismodule(getattr(mod, name)) and mod is n2s.denoisers}
        assert public - submodules == {name for name in mod.__all__ if not name.startswith("_")}, mod.__name__


# -- The shape of the package: layers that read top-down ------------------------------------------

PACKAGE = Path(n2s.__file__).parent
LAYERS = [  # lowest first: a module imports modules of its own layer (its own package) or below
    ("sc_noise2self._types", "sc_noise2self._logging", "sc_noise2self._docs"),
    ("sc_noise2self._numerics",),
    ("sc_noise2self.denoisers",),
    ("sc_noise2self._engine",),
    ("sc_noise2self._anndata", "sc_noise2self.datasets"),
    ("sc_noise2self.pp", "sc_noise2self.tl", "sc_noise2self.pl"),
    ("sc_noise2self",),  # the package's __init__ alone
    ("sc_noise2self._demo",),
]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``name`` imports anywhere in its source (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target.startswith("sc_noise2self") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> tuple[int, str]:
    """The layer of a module and the unit it belongs to within the layer."""
    for rank, units in enumerate(LAYERS):
        for unit in sorted(units, key=len, reverse=True):
            if name == unit or (unit != "sc_noise2self" and name.startswith(unit + ".")):
                return rank, unit
    raise AssertionError(f"{name} is in no layer")


def test_every_module_has_a_layer():
    for name in _graph():
        _layer(name)


def test_no_module_imports_a_layer_above_it_or_a_sibling_unit():
    for name, targets in _graph().items():
        rank, unit = _layer(name)
        for target in targets:
            target_rank, target_unit = _layer(target)
            assert target_rank < rank or target_unit == unit, f"{name} imports {target} (layer {target_rank} > {rank})"


def test_no_import_cycle():
    graph = _graph()
    done, path = set(), []

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in path, "import cycle: " + " -> ".join([*path[path.index(name) :], name])
        path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_engine_imports_no_method():
    contract = {"sc_noise2self.denoisers._base", "sc_noise2self.denoisers._registry"}
    for name, targets in _graph().items():
        if name.startswith("sc_noise2self._engine"):
            methods = {t for t in targets if t.startswith("sc_noise2self.denoisers")} - contract
            assert not methods, f"{name} imports {methods}"


def test_at_most_three_protocols():
    protocols = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Protocol") for b in node.bases):
                protocols.append(f"{path.name}:{node.name}")
    assert len(protocols) <= 3, protocols


def test_the_graph_test_sees_a_cycle_and_a_layer_violation(tmp_path, monkeypatch):
    """The checks above have teeth: a cycle and an upward import in a throwaway copy are found."""
    import shutil

    copy = tmp_path / "sc_noise2self"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (copy / "_numerics" / "checks.py").write_text("def f():\n    from ..denoisers import _base\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    with pytest.raises(AssertionError, match="layer 2 > 1"):
        test_no_module_imports_a_layer_above_it_or_a_sibling_unit()
    (copy / "_numerics" / "checks.py").write_text("from . import machine\n")  # machine imports checks
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
