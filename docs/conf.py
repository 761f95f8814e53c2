"""Sphinx configuration: the API reference from the docstrings, and the mathematics."""

import importlib
import inspect
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

# Every reference into pyro_sin must resolve. References to torch, pyro, numpy and the standard library cannot
# (no network for intersphinx), so they are let through by name.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|scipy|sklearn|tqdm|collections|typing|os)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Size|Generator|ExpandedDistribution|Distribution|Constraint|callable)"),
    (r"py:.*", r"_DependentProperty"),  # the type of a torch Distribution's ``support``
]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []


def _public_name_to_documented(app, env, node, contnode):
    """
    Resolves a public name such as ``pyro_sin.SINGuide`` (re-exported by a package's ``__init__``) to where autodoc
    documents the object (``pyro_sin.guide.SINGuide``), so that docstrings may cite the names users import.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("pyro_sin."):
        return None
    parts = target.split(".")
    for split in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        break
    for attribute in parts[split:]:
        obj = inspect.getattr_static(obj, attribute, None)
        if obj is None:
            return None
    obj = getattr(obj, "fget", getattr(obj, "__func__", obj))  # properties, static and class methods
    if inspect.ismodule(obj):
        documented = obj.__name__
    elif hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
        documented = f"{obj.__module__}.{obj.__qualname__}"
    else:
        return None
    if documented == target:
        return None
    python = env.get_domain("py")
    return python.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], documented, node, contnode)


def setup(app):
    app.connect("missing-reference", _public_name_to_documented)
