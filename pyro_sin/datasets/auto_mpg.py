"""
The Auto MPG data set: the 392 cars with complete records.

Features ``mpg, displacement, horsepower, weight, acceleration, model year``,
labels the number of cylinders. The package ships UCI's ``auto-mpg.data``
unchanged (``pyro_sin/datasets/data/``, with its source and licence: UCI Machine
Learning Repository, CC BY 4.0), so loading needs neither a network nor another package.
"""

import os
from importlib import resources
from typing import Optional, Union

import torch

from ._device import built_on_cpu
from .pinwheel import LabelledSplit, split

FEATURES = ("mpg", "displacement", "horsepower", "weight", "acceleration", "model_year")


def shipped_auto_mpg_path() -> str:
    """The path of the copy of UCI's ``auto-mpg.data`` installed with the package."""
    return str(resources.files(__package__).joinpath("data", "auto-mpg.data"))


def _read_uci(path):
    rows, labels = [], []
    with open(path) as f:
        for line in f:
            fields = line.split('"')[0].split()  # the quoted car name may contain spaces
            if len(fields) < 8 or "?" in fields[:7]:
                continue
            mpg, cylinders, displacement, horsepower, weight, acceleration, year = map(float, fields[:7])
            rows.append([mpg, displacement, horsepower, weight, acceleration, year])
            labels.append(int(cylinders))
    return rows, labels


@built_on_cpu
def load_auto_mpg(path: Optional[Union[str, os.PathLike]] = None, dtype=None):
    """
    :param path: a file in the format of UCI's ``auto-mpg.data``; by default the
        copy shipped with the package.
    :param dtype: floating point type of the features (default: torch's default dtype).
    :returns: ``(features, cylinders)`` with shapes ``(392, 6)`` and ``(392,)``,
        in file order, on the CPU.
    """
    rows, labels = _read_uci(shipped_auto_mpg_path() if path is None else path)
    dtype = dtype or torch.get_default_dtype()
    return torch.tensor(rows, dtype=dtype), torch.tensor(labels)


@built_on_cpu
def auto_mpg(
    path: Optional[Union[str, os.PathLike]] = None, seed: int = 0, test_fraction: float = 0.3, scale: float = 5.0
) -> LabelledSplit:
    """
    The paper's Auto data: a seeded 70 / 30 split, features standardised with the
    training split's mean and standard deviation and multiplied by ``scale``.

    :param path: as in :func:`load_auto_mpg`.
    """
    data, labels = load_auto_mpg(path)
    parts = split(data, labels, test_fraction, seed)
    mean, std = parts.train.mean(0), parts.train.std(0)
    return LabelledSplit(
        scale * (parts.train - mean) / std, parts.train_labels, scale * (parts.test - mean) / std, parts.test_labels
    )
