"""Data sets of the SAN paper and the structured-VAE literature."""

from .auto_mpg import FEATURES as AUTO_MPG_FEATURES
from .auto_mpg import auto_mpg, load_auto_mpg
from .pinwheel import LabelledSplit, make_pinwheel, noisy_pinwheel, pinwheel, split
from .sequences import SequenceData, bouncing_dot

__all__ = [
    "AUTO_MPG_FEATURES",
    "LabelledSplit",
    "SequenceData",
    "auto_mpg",
    "bouncing_dot",
    "load_auto_mpg",
    "make_pinwheel",
    "noisy_pinwheel",
    "pinwheel",
    "split",
]
