"""
The linear dynamical system family: the LDS prior with its SIN posterior (Kalman smoothing in
information form) and closed-form predictions (:mod:`~pyro_sin.pgm.lds.prior`), and the classic
model it contains, a vector autoregression in companion form, from which SAN-LDS starts
(:mod:`~pyro_sin.pgm.lds.classic`).
"""

from .classic import (
    Autoregression,
    AutoregressiveStart,
    OrderSelection,
    autoregressive_start,
    companion_autoencoder,
    fit_autoregression,
    lagged_windows,
    order_by_aic,
)
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
    "Autoregression",
    "AutoregressiveStart",
    "ChainFactor",
    "ChainMoments",
    "ChainPosterior",
    "LDSGlobalPosterior",
    "LDSParams",
    "LinearDynamicalSystem",
    "OrderSelection",
    "autoregressive_start",
    "chain_log_normalizer",
    "companion_autoencoder",
    "fit_autoregression",
    "gaussian_expectation",
    "lagged_windows",
    "order_by_aic",
    "pair_regression_stats",
    "point_expectations",
    "regression_factor",
    "rollout",
]
