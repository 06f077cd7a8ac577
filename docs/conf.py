"""Sphinx configuration: the API from the numpydoc docstrings, pages in MyST Markdown, tutorials from the notebooks."""

from __future__ import annotations

import shutil
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent

project = "sc_noise2self"
author = "sc_noise2self developers"
copyright = "2026, sc_noise2self developers"
release = version = _version("sc_noise2self")

# The one place that names the repository: the theme's buttons and {repo}`path` links.
repository_url = "https://github.com/sc-noise2self/sc_noise2self"
repository_branch = "main"

# Tutorials: the notebooks in ../notebooks, with their stored outputs, copied at build time into
# the git-ignored docs/tutorials/ (one copy in git, no execution here).
_tutorials = HERE / "tutorials"
_tutorials.mkdir(exist_ok=True)
for _stale in _tutorials.glob("*.ipynb"):
    if not (ROOT / "notebooks" / _stale.name).exists():
        _stale.unlink()
for _notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    _target = _tutorials / _notebook.name
    if not _target.exists() or _target.read_bytes() != _notebook.read_bytes():
        shutil.copyfile(_notebook, _target)

extensions = [
    "myst_nb",  # includes myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.extlinks",
    "sphinx.ext.mathjax",
]
# .rst first: autosummary writes its generated pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# MyST
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "substitution"]
myst_heading_anchors = 3
myst_substitutions = {"version": version}

# myst-nb: render the outputs stored in the notebooks, never execute them
nb_execution_mode = "off"
nb_merge_streams = True

# API
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
nitpicky = False

extlinks = {"repo": (f"{repository_url}/blob/{repository_branch}/%s", "%s")}

# HTML: the theme scanpy and anndata use
html_theme = "sphinx_book_theme"
html_title = "sc_noise2self"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": repository_url,
    "repository_branch": repository_branch,
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_issues_button": True,
    "use_source_button": True,
    "navigation_with_keys": False,
}
