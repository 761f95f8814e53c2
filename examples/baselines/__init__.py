"""Baselines in the same harness as SAN."""

from .clustering import PCAGMM, VAEGMM, ClusteringBaseline, KMeansBaseline, fit_bayesian_gmm
from pyro_sin.pgm.mixture import BayesianGMM
from .two_stage import TwoStageLDS
from .unstructured_lds import UnstructuredLDSGuide
from .var import SmoothedFrames, VectorAutoregression
from .vae import VAE

__all__ = [
    "PCAGMM",
    "VAE",
    "VAEGMM",
    "BayesianGMM",
    "ClusteringBaseline",
    "KMeansBaseline",
    "TwoStageLDS",
    "UnstructuredLDSGuide",
    "SmoothedFrames",
    "VectorAutoregression",
    "fit_bayesian_gmm",
]
