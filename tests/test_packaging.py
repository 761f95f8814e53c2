"""The installed library stays small and its packaging says one thing in one place."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_sin

ROOT = Path(__file__).parents[1]
README_TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && ruff check . && python -m pytest -q tests'

# Imports every module of the installed library and reports which optional packages came with it;
# pyro_sin.sklearn, the scikit-learn interface, needs scikit-learn by definition and is left out.
IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import pyro_sin
for module in pkgutil.walk_packages(pyro_sin.__path__, "pyro_sin."):
    if module.name != "pyro_sin.sklearn":
        importlib.import_module(module.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))))
"""
OPTIONAL = ["matplotlib", "sklearn", "sktime", "mlxtend", "pandas", "IPython"]


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_importing_the_library_imports_no_plotting_and_no_optional_data_package():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, *OPTIONAL], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"importing pyro_sin imported {result.stdout.strip()}"


def test_the_version_has_one_source():
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pyro_sin.__version__"}
    assert pyro_sin.__version__.count(".") == 2


def test_the_declared_licence_ships_as_a_file():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_test_extra_runs_the_suite_without_jupyter():
    extras = _pyproject()["project"]["optional-dependencies"]
    test = extras["test"]
    assert not any(requirement.startswith("jupyter") for requirement in test)
    assert any(requirement.startswith("ruff") for requirement in test)
    # the suite smoke-runs the examples and builds the docs
    assert any(r.startswith("pyro-sin[") and "examples" in r and "docs" in r for r in test)
    assert "matplotlib" in extras["examples"] and "pyro-sin[data]" in extras["examples"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().splitlines()[-1] == README_TEST_COMMAND
    assert README_TEST_COMMAND in (ROOT / "README.md").read_text()
