"""Structured priors: one module per graph, each with its SIN factor."""

from .base import SINRecord, StructuredPrior
from .lds import LinearDynamicalSystem
from .mixture import GaussianMixture, MixtureFactor, MixtureParams, MixturePosterior

__all__ = [
    "GaussianMixture",
    "LinearDynamicalSystem",
    "MixtureFactor",
    "MixtureParams",
    "MixturePosterior",
    "SINRecord",
    "StructuredPrior",
]
