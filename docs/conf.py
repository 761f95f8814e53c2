"""Sphinx configuration: the API reference from the docstrings, and the mathematics."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # document this checkout, not another installed copy

import pyro_sin  # noqa: E402

project = "pyro-sin"
author = "the pyro-sin authors"
release = version = pyro_sin.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the few Google-style sections; ``:param:`` fields are plain reST
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = False  # cross-references to torch and pyro are not resolved (no network for intersphinx)
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
