"""The documentation builds cleanly, covers the public API, and the repository stands alone."""

import importlib
import inspect
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

import pyro_sin

ROOT = Path(__file__).parents[1]
PUBLIC_MODULES = ["pyro_sin", "pyro_sin.pgm", "pyro_sin.distributions", "pyro_sin.datasets", "pyro_sin.pgm.mixture"]


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    pytest.importorskip("sphinx", reason="the API reference needs sphinx (pip install 'pyro-sin[docs]')")
    out = tmp_path_factory.mktemp("html")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # -n: every reference must resolve (docs/conf.py lets through those outside pyro_sin, which cannot)
    command = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    result = subprocess.run(
        command + [str(ROOT / "docs"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return result, out


def test_docs_build_with_warnings_as_errors_and_every_reference_resolved(built_docs):
    result, out = built_docs
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "guide", "experiments", "results", "mathematics", "api"):
        assert (out / f"{page}.html").exists(), page


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "the README holds what, install, the two commands, a quick start and links"
    for page in ("guide", "experiments", "results", "mathematics", "api"):
        assert f"(docs/{page}.rst)" in readme and (ROOT / "docs" / f"{page}.rst").exists(), page


def _public_objects():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{obj.__module__}.{obj.__qualname__}"


def test_api_reference_documents_every_public_class_and_function(built_docs):
    result, out = built_docs
    assert result.returncode == 0, result.stderr
    html = (out / "api.html").read_text()
    missing = sorted({name for name in _public_objects() if f'id="{name}"' not in html})
    assert not missing, f"not in the API reference (add a docstring or an automodule): {missing}"


def _repository_text_files():
    skip_dirs = {"__pycache__", "build", "dist", "results", "_build"}
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") and p != ".ci" for p in parts) or skip_dirs.intersection(parts):
            continue
        if any(p.endswith(".egg-info") for p in parts) or not path.is_file():
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


# spelled in pieces so that this file does not match itself (nor a search for the folder's name)
_NOTES_FOLDER = "sha" + "red"
OUTSIDE_REFERENCES = ("DESIGN" + ".md", "../" + _NOTES_FOLDER, _NOTES_FOLDER + "/data")


@pytest.mark.parametrize(
    "which",
    ["package, tests, docs, tutorials", "README.md"],
)
def test_repository_stands_alone(which):
    """Nothing reads or cites files outside the repository."""
    offenders = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path, text in _repository_text_files()
        if (path.name == "README.md" and path.parent == ROOT) == (which == "README.md")
        for needle in OUTSIDE_REFERENCES
        if needle in text
    ]
    assert not offenders, offenders


def test_typing_marker_and_data_file_are_package_data():
    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {
        "pyro_sin": ROOT / "pyro_sin" / "py.typed",
        "pyro_sin.datasets": ROOT / "pyro_sin" / "datasets" / "data" / "auto-mpg.data",
    }
    for package, path in shipped.items():
        assert path.exists()
        relative = path.relative_to(ROOT.joinpath(*package.split("."))).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in package_data.get(package, [])), (package, relative)


def test_changelog_names_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{pyro_sin.__version__}]" in changelog
