"""Data sets of the SAN paper and the structured-VAE literature."""

from .pinwheel import LabelledSplit, make_pinwheel, pinwheel, split

__all__ = ["LabelledSplit", "make_pinwheel", "pinwheel", "split"]
