"""Data sets of the SAN paper and the structured-VAE literature."""

from .auto_mpg import FEATURES as AUTO_MPG_FEATURES
from .auto_mpg import auto_mpg, load_auto_mpg
from .digits import digits, load_digits, load_mnist5k, mnist5k
from .pinwheel import LabelledSplit, make_pinwheel, noisy_pinwheel, pinwheel, split
from .sequences import SequenceData, bouncing_dot

__all__ = [
    "AUTO_MPG_FEATURES",
    "LabelledSplit",
    "SequenceData",
    "auto_mpg",
    "bouncing_dot",
    "digits",
    "load_auto_mpg",
    "load_digits",
    "load_mnist5k",
    "make_pinwheel",
    "mnist5k",
    "noisy_pinwheel",
    "pinwheel",
    "split",
]
