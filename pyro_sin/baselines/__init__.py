"""Baselines in the same harness as SAN."""

from .gmm import BayesianGMM
from .two_stage import TwoStageLDS
from .unstructured_lds import UnstructuredLDSGuide
from .vae import VAE

__all__ = ["BayesianGMM", "TwoStageLDS", "UnstructuredLDSGuide", "VAE"]
