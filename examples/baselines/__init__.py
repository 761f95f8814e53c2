"""Baselines in the same harness as SAN."""

from pyro_sin.pgm.mixture import BayesianGMM

from .clustering import PCAGMM, VAEGMM, ClusteringBaseline, KMeansBaseline, fit_bayesian_gmm
from .hmm import HMMLearnGaussianHMM
from .svae import SVAEGuide
from .two_stage import TwoStageLDS
from .unstructured_lds import UnstructuredLDSGuide
from .vae import VAE
from .var import SmoothedFrames, VectorAutoregression

__all__ = [
    "PCAGMM",
    "VAE",
    "VAEGMM",
    "BayesianGMM",
    "ClusteringBaseline",
    "HMMLearnGaussianHMM",
    "KMeansBaseline",
    "SVAEGuide",
    "TwoStageLDS",
    "UnstructuredLDSGuide",
    "SmoothedFrames",
    "VectorAutoregression",
    "fit_bayesian_gmm",
]
