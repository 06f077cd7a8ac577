"""Sphinx configuration: the API from the numpydoc docstrings, the guide in Markdown (MyST)."""

from __future__ import annotations

from importlib.metadata import version as _version

project = "sc_noise2self"
author = "sc_noise2self developers"
copyright = "2026, sc_noise2self developers"
release = version = _version("sc_noise2self")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_heading_anchors = 3
nitpicky = False

html_theme = "furo"
html_title = "sc_noise2self"
