"""
Structured priors: one module (or folder) per family, each with its SIN factor, its
data-driven start and its diagnostics behind the hooks of :class:`StructuredPrior`.

:data:`FAMILIES` registers them by short name. Registering a family promises that it
implements the whole :class:`StructuredPrior` interface (and, for sequences,
:class:`~pyro_sin.pgm.sequence.SequencePrior`), so that code written for every family
(the conformance tests, the experiment harness) takes it up without further changes.
"""

from typing import Dict

from .base import SINRecord, StructuredPrior
from .gaussian import LatentGaussian
from .hmm import HMMFactor, HMMParams, HMMPosterior, LatentHMM
from .lds import LinearDynamicalSystem
from .mixture import GaussianMixture, MixtureFactor, MixtureParams, MixturePosterior, MixturePrior, StudentTMixture
from .sequence import DeepLatentSequence, SequencePrior
from .slds import SLDSFactor, SLDSParams, SLDSPosterior, SwitchingLDS

#: every family by short name (one line each): what code written for all families iterates over
FAMILIES: Dict[str, type] = {
    "gmm": GaussianMixture,
    "tmm": StudentTMixture,
    "lds": LinearDynamicalSystem,
    "hmm": LatentHMM,
    "slds": SwitchingLDS,
    "gaussian": LatentGaussian,
}

__all__ = [
    "FAMILIES",
    "DeepLatentSequence",
    "GaussianMixture",
    "HMMFactor",
    "HMMParams",
    "HMMPosterior",
    "LatentGaussian",
    "LatentHMM",
    "LinearDynamicalSystem",
    "MixtureFactor",
    "MixtureParams",
    "MixturePosterior",
    "MixturePrior",
    "SLDSFactor",
    "SLDSParams",
    "SLDSPosterior",
    "SequencePrior",
    "StudentTMixture",
    "SINRecord",
    "StructuredPrior",
    "SwitchingLDS",
]
