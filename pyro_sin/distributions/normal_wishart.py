r"""
The Normal-Wishart family over the mean and precision of a Gaussian.

.. math::

    \Lambda \sim \mathcal W(W, \nu),\qquad
    \mu \mid \Lambda \sim \mathcal N\big(m, (\kappa\Lambda)^{-1}\big).

We use the *precision* (Wishart) form rather than the Normal-inverse-Wishart:
every consumer in this package works in information form (encoder potentials,
mixture posteriors, Kalman filters), and the Wishart form hands them ``E[Λ]``,
``E[Λμ]`` directly. The family is parameterised throughout by the *inverse*
scale ``Ψ = W⁻¹`` so that no matrix is ever inverted to build it.

As an exponential family with sufficient statistics

.. math:: T(\mu, \Lambda) = \big(\Lambda\mu,\ -\tfrac12\mu^\top\Lambda\mu,\
          -\tfrac12\Lambda,\ \tfrac12\log|\Lambda|\big)

its natural parameters are ``(κm, κ, Ψ + κ m mᵀ, ν - D)``. A Gaussian
observation ``x`` contributes the statistics ``t(x) = (x, 1, x xᵀ, 1)`` and
``log N(x; μ, Λ⁻¹) = <t(x), T(μ, Λ)> - (D/2) log 2π``, so conjugate updates
and expected log-likelihoods are both inner products with ``t``.
"""

from typing import NamedTuple

import torch

import pyro.distributions as dist

from .matrix_normal_wishart import (
    MatrixNormalWishart,
    MatrixNormalWishartNatural,
    RegressionStats,
    expected_regression_log_likelihood,
    regression_conjugate_update,
)


class NormalWishartNatural(NamedTuple):
    """Natural parameters ``(κm, κ, Ψ + κ m mᵀ, ν - D)`` with batch shape ``(...)``."""

    loc: torch.Tensor  # (..., D)       κ m
    kappa: torch.Tensor  # (...)        κ
    scale: torch.Tensor  # (..., D, D)  Ψ + κ m mᵀ
    df: torch.Tensor  # (...)           ν - D


class NormalWishartExpectations(NamedTuple):
    """Expected sufficient statistics under a Normal-Wishart."""

    precision: torch.Tensor  # (..., D, D)  E[Λ]
    precision_loc: torch.Tensor  # (..., D)  E[Λ μ]
    loc_precision_loc: torch.Tensor  # (...)  E[μᵀ Λ μ]
    log_det_precision: torch.Tensor  # (...)  E[log |Λ|]


class GaussianStats(NamedTuple):
    """Weighted Gaussian sufficient statistics ``Σ w (1, x, x xᵀ)``."""

    count: torch.Tensor  # (...)
    sum: torch.Tensor  # (..., D)
    sum_outer: torch.Tensor  # (..., D, D)


def _as_matrix_natural(natural: NormalWishartNatural) -> MatrixNormalWishartNatural:
    return MatrixNormalWishartNatural(
        natural.loc[..., None], natural.kappa[..., None, None], natural.scale, natural.df
    )


def _as_regression(stats: GaussianStats) -> RegressionStats:
    return RegressionStats(
        stats.count, stats.sum[..., None], stats.count[..., None, None], stats.sum_outer
    )


class NormalWishart:
    r"""
    A batch of Normal-Wishart distributions: the Matrix-Normal-Wishart with a
    single input column (``B = μ``, ``u = 1``, ``K = κ``), whose mathematics it
    delegates to :class:`~pyro_sin.distributions.MatrixNormalWishart`.

    :param torch.Tensor loc: ``m``, shape ``(..., D)``.
    :param torch.Tensor kappa: ``κ > 0``, shape ``(...)``.
    :param torch.Tensor scale_inv: ``Ψ = W⁻¹``, symmetric positive definite,
        shape ``(..., D, D)``.
    :param torch.Tensor df: degrees of freedom ``ν > D - 1``, shape ``(...)``.
    """

    def __init__(self, loc, kappa, scale_inv, df, validate_args=True):
        if validate_args and not (kappa > 0).all():
            raise ValueError(f"NormalWishart kappa must be positive, got {kappa}")
        # a Normal-Wishart is a Matrix-Normal-Wishart with one column
        column = MatrixNormalWishart(loc[..., None], kappa[..., None, None], scale_inv, df, validate_args=validate_args)
        self._wrap(column)

    def _wrap(self, matrix: MatrixNormalWishart):
        self._matrix = matrix
        self.loc, self.kappa = matrix.loc[..., 0], matrix.col_precision[..., 0, 0]
        self.scale_inv, self.df = matrix.scale_inv, matrix.df
        self.batch_shape, self.dim = matrix.batch_shape, matrix.dim

    # ----- natural parameterisation -------------------------------------------------

    @property
    def natural_params(self) -> NormalWishartNatural:
        """The natural parameters ``(cross, kappa, scale, df)``; :meth:`from_natural` inverts them."""
        cross, kappa, scale, df = self._matrix.natural_params
        return NormalWishartNatural(cross[..., 0], kappa[..., 0, 0], scale, df)

    @classmethod
    def from_natural(cls, natural: NormalWishartNatural, validate_args=True):
        """Inverse of :attr:`natural_params`; raises if they leave the valid domain."""
        if validate_args and not (natural.kappa > 0).all():
            raise ValueError(
                f"NormalWishart natural parameter κ must be positive, got {natural.kappa}; "
                "natural parameters should only move by convex combinations"
            )
        return cls._from_matrix(MatrixNormalWishart.from_natural(_as_matrix_natural(natural), validate_args))

    @classmethod
    def _from_matrix(cls, matrix: MatrixNormalWishart) -> "NormalWishart":
        """Wraps a single-column Matrix-Normal-Wishart without validating or factorising again."""
        new = cls.__new__(cls)
        new._wrap(matrix)
        return new

    @staticmethod
    def log_normalizer_natural(natural: NormalWishartNatural) -> torch.Tensor:
        """Log normaliser as a function of the natural parameters (see the matrix case)."""
        return MatrixNormalWishart.log_normalizer_natural(_as_matrix_natural(natural))

    def log_normalizer(self) -> torch.Tensor:
        return self._matrix.log_normalizer()

    # ----- expectations ----------------------------------------------------------

    def expectations(self) -> NormalWishartExpectations:
        r"""
        .. math::
            E[\Lambda] = \nu W,\quad E[\Lambda\mu] = \nu W m,\quad
            E[\mu^\top\Lambda\mu] = D/\kappa + \nu\, m^\top W m,\quad
            E[\log|\Lambda|] = \textstyle\sum_i \psi\big(\tfrac{\nu+1-i}2\big)
                + D\log 2 - \log|\Psi|
        """
        E = self._matrix.expectations()
        return NormalWishartExpectations(
            E.precision, E.precision_loc[..., 0], E.loc_precision_loc[..., 0, 0], E.log_det_precision
        )

    def expected_log_likelihood(self, stats: GaussianStats) -> torch.Tensor:
        """``E_q(μ,Λ)[Σ w log N(x; μ, Λ⁻¹)]`` for weighted statistics of ``x``."""
        return self._matrix.expected_log_likelihood(_as_regression(stats))

    def kl_divergence(self, other: "NormalWishart") -> torch.Tensor:
        """``KL(self ‖ other)`` in closed form."""
        return self._matrix.kl_divergence(other._matrix)

    def cross_entropy(self, other: "NormalWishart") -> torch.Tensor:
        """``-E_self[log other]`` in closed form."""
        return self._matrix.cross_entropy(other._matrix)

    # ----- sampling and density -------------------------------------------------

    def precision_dist(self):
        """``Λ ~ W(W, ν)`` as a Pyro distribution with batch shape ``(...)``."""
        return self._matrix.precision_dist()

    def loc_dist(self, precision) -> dist.MultivariateNormal:
        """``μ | Λ ~ N(m, (κΛ)⁻¹)`` as a Pyro distribution."""
        # unvalidated, as precision_dist is: a float32 Wishart draw is symmetric only to rounding (1e-4 at a
        # precision of 1e3), which the strict symmetry check refuses although the matrix is well conditioned
        return dist.MultivariateNormal(
            self.loc, precision_matrix=self.kappa[..., None, None] * precision, validate_args=False
        )

    def rsample(self, sample_shape=torch.Size()):
        """Returns a reparameterised pair ``(μ, Λ)``."""
        precision = self.precision_dist().rsample(sample_shape)
        loc = self.loc_dist(precision).rsample()
        return loc, precision

    def log_prob(self, loc, precision) -> torch.Tensor:
        return self.precision_dist().log_prob(precision) + self.loc_dist(
            precision
        ).log_prob(loc)


def expected_gaussian_log_likelihood(
    E: NormalWishartExpectations, stats: GaussianStats
) -> torch.Tensor:
    """``Σ w E[log N(x; μ, Λ⁻¹)]`` from Normal-Wishart expectations and weighted statistics."""
    matrix_E = E._replace(
        precision_loc=E.precision_loc[..., None], loc_precision_loc=E.loc_precision_loc[..., None, None]
    )
    return expected_regression_log_likelihood(matrix_E, _as_regression(stats))


def conjugate_update(prior: NormalWishartNatural, stats: GaussianStats) -> NormalWishartNatural:
    """Natural parameters of the posterior after observing weighted statistics."""
    cross, kappa, scale, df = regression_conjugate_update(_as_matrix_natural(prior), _as_regression(stats))
    return NormalWishartNatural(cross[..., 0], kappa[..., 0, 0], scale, df)
