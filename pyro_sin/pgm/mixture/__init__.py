"""
The mixture family: Gaussian and Student-t mixtures of the latents, their SIN
factors and closed-form posteriors, their data-driven start and diagnostics, the
deep latent mixture model, and the classic Bayesian Gaussian mixture they contain.
"""

from .classic import BayesianGMM, bayesian_gmm
from .gaussian import (
    GaussianMixture,
    MeanFieldMixturePosterior,
    MixtureFactor,
    MixtureGlobalPosterior,
    MixtureParams,
    MixturePosterior,
    MixturePrior,
    expected_gaussian_factor,
    gaussian_factor,
    select_component,
    take_component,
)
from .model import DeepLatentMixture
from .start import MixtureStart, classic_start, weak_prior
from .student_t import StudentTMixture

__all__ = [
    "BayesianGMM",
    "DeepLatentMixture",
    "GaussianMixture",
    "MeanFieldMixturePosterior",
    "MixtureFactor",
    "MixtureGlobalPosterior",
    "MixtureParams",
    "MixturePosterior",
    "MixturePrior",
    "MixtureStart",
    "StudentTMixture",
    "bayesian_gmm",
    "classic_start",
    "expected_gaussian_factor",
    "gaussian_factor",
    "select_component",
    "take_component",
    "weak_prior",
]
