"""Structured priors: one module per graph, each with its SIN factor."""

from .base import SINRecord, StructuredPrior
from .hmm import HMMFactor, HMMParams, HMMPosterior, LatentHMM
from .lds import LinearDynamicalSystem
from .mixture import GaussianMixture, MixtureFactor, MixtureParams, MixturePosterior, MixturePrior, StudentTMixture
from .slds import SLDSFactor, SLDSParams, SLDSPosterior, SwitchingLDS

__all__ = [
    "GaussianMixture",
    "HMMFactor",
    "HMMParams",
    "HMMPosterior",
    "LatentHMM",
    "LinearDynamicalSystem",
    "MixtureFactor",
    "MixtureParams",
    "MixturePosterior",
    "MixturePrior",
    "SLDSFactor",
    "SLDSParams",
    "SLDSPosterior",
    "StudentTMixture",
    "SINRecord",
    "StructuredPrior",
    "SwitchingLDS",
]
