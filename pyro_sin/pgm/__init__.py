"""Structured priors: one module per graph, each with its SIN factor."""

from .base import SINRecord, StructuredPrior
from .lds import LinearDynamicalSystem
from .mixture import GaussianMixture, MixtureFactor, MixtureParams, MixturePosterior, MixturePrior
from .student_t_mixture import StudentTMixture

__all__ = [
    "GaussianMixture",
    "LinearDynamicalSystem",
    "MixtureFactor",
    "MixtureParams",
    "MixturePosterior",
    "MixturePrior",
    "StudentTMixture",
    "SINRecord",
    "StructuredPrior",
]
