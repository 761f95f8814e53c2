"""Data sets of the SAN paper and the structured-VAE literature."""

from .pinwheel import LabelledSplit, make_pinwheel, pinwheel, split
from .sequences import SequenceData, bouncing_dot

__all__ = ["LabelledSplit", "SequenceData", "bouncing_dot", "make_pinwheel", "pinwheel", "split"]
