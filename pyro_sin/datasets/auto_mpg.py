"""
The Auto MPG data set (UCI): the 392 cars with complete records.

Features ``mpg, displacement, horsepower, weight, acceleration, model year``,
labels the number of cylinders. Loaded from the ``vega_datasets`` package, which
ships it offline as ``cars`` (install ``pyro-sin[data]``), or from a copy of
UCI's ``auto-mpg.data``. The two agree except that vega's copy dates 28 cars one
model year later than UCI's file.
"""

import importlib.util
import json
import os
from typing import Optional

import torch

from .pinwheel import LabelledSplit, split

FEATURES = ("mpg", "displacement", "horsepower", "weight", "acceleration", "model_year")


def _from_vega():
    spec = importlib.util.find_spec("vega_datasets")
    if spec is None:
        raise FileNotFoundError(
            "Auto MPG needs the vega_datasets package (pip install 'pyro-sin[data]') "
            "or the path of UCI's auto-mpg.data"
        )
    # read the shipped file without importing the package (which imports pandas)
    path = os.path.join(spec.submodule_search_locations[0], "_data", "cars.json")
    with open(path) as f:
        records = json.load(f)
    rows, labels = [], []
    for r in records:
        if r["Miles_per_Gallon"] is None or r["Horsepower"] is None:
            continue
        year = int(r["Year"][:4]) - 1900
        rows.append(
            [r["Miles_per_Gallon"], r["Displacement"], r["Horsepower"], r["Weight_in_lbs"], r["Acceleration"], year]
        )
        labels.append(r["Cylinders"])
    return rows, labels


def _from_uci(path):
    rows, labels = [], []
    with open(path) as f:
        for line in f:
            fields = line.split('"')[0].split()
            if len(fields) < 8 or "?" in fields[:7]:
                continue
            mpg, cylinders, displacement, horsepower, weight, acceleration, year = map(float, fields[:7])
            rows.append([mpg, displacement, horsepower, weight, acceleration, year])
            labels.append(int(cylinders))
    return rows, labels


def load_auto_mpg(path: Optional[str] = None, dtype=None):
    """
    :param str path: UCI's ``auto-mpg.data``; when omitted, ``vega_datasets``' copy.
    :returns: ``(features, cylinders)`` with shapes ``(392, 6)`` and ``(392,)``, in file order.
    """
    rows, labels = _from_uci(path) if path is not None else _from_vega()
    dtype = dtype or torch.get_default_dtype()
    return torch.tensor(rows, dtype=dtype), torch.tensor(labels)


def auto_mpg(path: Optional[str] = None, seed: int = 0, test_fraction: float = 0.3, scale: float = 5.0) -> LabelledSplit:
    """
    The paper's Auto data: a seeded 70 / 30 split, features standardised with the
    training split's mean and standard deviation and multiplied by ``scale``.
    """
    data, labels = load_auto_mpg(path)
    parts = split(data, labels, test_fraction, seed)
    mean, std = parts.train.mean(0), parts.train.std(0)
    return LabelledSplit(
        scale * (parts.train - mean) / std, parts.train_labels, scale * (parts.test - mean) / std, parts.test_labels
    )
