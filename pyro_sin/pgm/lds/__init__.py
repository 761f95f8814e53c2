"""
The linear dynamical system family: the LDS prior with its SIN posterior (Kalman smoothing in
information form) and its closed-form predictions (:mod:`~pyro_sin.pgm.lds.prior`).
"""

from .prior import (
    AffineGaussianDynamics,
    ChainFactor,
    ChainMoments,
    ChainPosterior,
    LDSGlobalPosterior,
    LDSParams,
    LinearDynamicalSystem,
    chain_log_normalizer,
    gaussian_expectation,
    pair_regression_stats,
    point_expectations,
    regression_factor,
    rollout,
)

__all__ = [
    "AffineGaussianDynamics",
    "ChainFactor",
    "ChainMoments",
    "ChainPosterior",
    "LDSGlobalPosterior",
    "LDSParams",
    "LinearDynamicalSystem",
    "chain_log_normalizer",
    "gaussian_expectation",
    "pair_regression_stats",
    "point_expectations",
    "regression_factor",
    "rollout",
]
