"""Conjugate exponential families used by the PGM factors."""

from .categorical import Categorical
from .dirichlet import dirichlet_cross_entropy, dirichlet_expected_log, dirichlet_kl
from .gaussian_chain import GaussianChain
from .markov_chain import MarkovChain
from .matrix_normal import MatrixNormal
from .matrix_normal_wishart import (
    MatrixNormalWishart,
    MatrixNormalWishartExpectations,
    MatrixNormalWishartNatural,
    RegressionStats,
    expected_regression_log_likelihood,
    regression_conjugate_update,
    spd_matrix,
)
from .natural import DirichletBlock, MatrixNormalWishartBlock, NaturalDomain, NormalWishartBlock
from .normal_wishart import (
    GaussianStats,
    NormalWishart,
    NormalWishartExpectations,
    NormalWishartNatural,
    conjugate_update,
    expected_gaussian_log_likelihood,
)
from .wishart import Wishart

__all__ = [
    "Categorical",
    "GaussianChain",
    "MarkovChain",
    "GaussianStats",
    "MatrixNormal",
    "MatrixNormalWishart",
    "MatrixNormalWishartExpectations",
    "MatrixNormalWishartNatural",
    "RegressionStats",
    "expected_regression_log_likelihood",
    "regression_conjugate_update",
    "spd_matrix",
    "NormalWishart",
    "NormalWishartExpectations",
    "NormalWishartNatural",
    "Wishart",
    "DirichletBlock",
    "MatrixNormalWishartBlock",
    "NaturalDomain",
    "NormalWishartBlock",
    "conjugate_update",
    "dirichlet_cross_entropy",
    "dirichlet_expected_log",
    "dirichlet_kl",
    "expected_gaussian_log_likelihood",
]
