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

import math
from typing import NamedTuple

import torch
import pyro.distributions as dist

from .wishart import Wishart


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


def _symmetrize(matrix):
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _checked_cholesky(matrix, what):
    chol, info = torch.linalg.cholesky_ex(matrix)
    if (info != 0).any():
        raise ValueError(f"{what} must be symmetric positive definite, got {matrix}")
    return chol


class NormalWishart:
    r"""
    A batch of Normal-Wishart distributions.

    :param torch.Tensor loc: ``m``, shape ``(..., D)``.
    :param torch.Tensor kappa: ``κ > 0``, shape ``(...)``.
    :param torch.Tensor scale_inv: ``Ψ = W⁻¹``, symmetric positive definite,
        shape ``(..., D, D)``.
    :param torch.Tensor df: degrees of freedom ``ν > D - 1``, shape ``(...)``.
    """

    def __init__(self, loc, kappa, scale_inv, df, validate_args=True):
        D = loc.shape[-1]
        batch_shape = torch.broadcast_shapes(
            loc.shape[:-1], kappa.shape, scale_inv.shape[:-2], df.shape
        )
        self.loc = loc.expand(batch_shape + (D,))
        self.kappa = kappa.expand(batch_shape)
        self.scale_inv = scale_inv.expand(batch_shape + (D, D))
        self.df = df.expand(batch_shape)
        self.batch_shape = batch_shape
        self.dim = D
        if validate_args:
            self._validate()
        self._scale_inv_tril = _checked_cholesky(
            self.scale_inv, "NormalWishart scale_inv (Ψ = W⁻¹)"
        )

    def _validate(self):
        for name, value in (
            ("loc", self.loc),
            ("kappa", self.kappa),
            ("scale_inv", self.scale_inv),
            ("df", self.df),
        ):
            if not torch.isfinite(value).all():
                raise ValueError(f"NormalWishart {name} must be finite, got {value}")
        if not (self.kappa > 0).all():
            raise ValueError(f"NormalWishart kappa must be positive, got {self.kappa}")
        if not (self.df > self.dim - 1).all():
            raise ValueError(
                f"NormalWishart df must exceed D - 1 = {self.dim - 1}, got {self.df}"
            )
        if not torch.allclose(
            self.scale_inv, self.scale_inv.transpose(-1, -2), rtol=1e-5, atol=1e-8
        ):
            raise ValueError("NormalWishart scale_inv must be symmetric")

    # ----- natural parameterisation -------------------------------------------------

    @property
    def natural_params(self) -> NormalWishartNatural:
        km = self.kappa[..., None] * self.loc
        scale = self.scale_inv + km[..., :, None] * self.loc[..., None, :]
        return NormalWishartNatural(km, self.kappa, scale, self.df - self.dim)

    @classmethod
    def from_natural(cls, natural: NormalWishartNatural, validate_args=True):
        """Inverse of :attr:`natural_params`; raises if they leave the valid domain."""
        loc_nat, kappa, scale_nat, df_nat = natural
        D = loc_nat.shape[-1]
        if validate_args and not (kappa > 0).all():
            raise ValueError(
                f"NormalWishart natural parameter κ must be positive, got {kappa}; "
                "natural parameters should only move by convex combinations"
            )
        loc = loc_nat / kappa[..., None]
        scale_inv = _symmetrize(scale_nat - loc_nat[..., :, None] * loc[..., None, :])
        return cls(loc, kappa, scale_inv, df_nat + D, validate_args=validate_args)

    @staticmethod
    def log_normalizer_natural(natural: NormalWishartNatural) -> torch.Tensor:
        r"""
        Log normaliser as a function of the natural parameters,

        .. math:: A = \tfrac D2\log 2\pi - \tfrac D2\log\kappa + \tfrac{\nu D}2\log 2
                      - \tfrac\nu2\log|\Psi| + \log\Gamma_D(\nu/2),

        with ``Ψ = η₃ - η₁η₁ᵀ/η₂``; its gradient is the expected statistics.
        """
        loc_nat, kappa, scale_nat, df_nat = natural
        D = loc_nat.shape[-1]
        df = df_nat + D
        scale_inv = scale_nat - loc_nat[..., :, None] * loc_nat[..., None, :] / kappa[
            ..., None, None
        ]
        chol = torch.linalg.cholesky(scale_inv)
        log_det_scale_inv = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (
            0.5 * D * math.log(2 * math.pi)
            - 0.5 * D * kappa.log()
            + 0.5 * df * D * math.log(2.0)
            - 0.5 * df * log_det_scale_inv
            + torch.mvlgamma(0.5 * df, D)
        )

    def log_normalizer(self) -> torch.Tensor:
        return self.log_normalizer_natural(self.natural_params)

    # ----- expectations ----------------------------------------------------------

    def expectations(self) -> NormalWishartExpectations:
        r"""
        .. math::
            E[\Lambda] = \nu W,\quad E[\Lambda\mu] = \nu W m,\quad
            E[\mu^\top\Lambda\mu] = D/\kappa + \nu\, m^\top W m,\quad
            E[\log|\Lambda|] = \textstyle\sum_i \psi\big(\tfrac{\nu+1-i}2\big)
                + D\log 2 - \log|\Psi|
        """
        D = self.dim
        W = torch.cholesky_inverse(self._scale_inv_tril)  # (..., D, D)
        E_prec = self.df[..., None, None] * W
        E_prec_loc = (E_prec @ self.loc[..., None])[..., 0]
        E_quad = D / self.kappa + (self.loc * E_prec_loc).sum(-1)
        i = torch.arange(D, dtype=self.df.dtype, device=self.df.device)
        E_logdet = (
            torch.special.digamma(0.5 * (self.df[..., None] - i)).sum(-1)
            + D * math.log(2.0)
            - 2 * self._scale_inv_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        )
        return NormalWishartExpectations(E_prec, E_prec_loc, E_quad, E_logdet)

    def expected_log_likelihood(self, stats: GaussianStats) -> torch.Tensor:
        r"""
        ``E_q(μ,Λ)[Σ w log N(x; μ, Λ⁻¹)]`` for weighted statistics of ``x``:

        .. math:: \langle t, E[T]\rangle - \tfrac{D}{2}\log 2\pi\,\textstyle\sum w
        """
        E = self.expectations()
        return expected_gaussian_log_likelihood(E, stats)

    def kl_divergence(self, other: "NormalWishart") -> torch.Tensor:
        r"""
        ``KL(self ‖ other)`` in closed form for exponential families,

        .. math:: A(\eta_p) - A(\eta_q) - \langle \eta_p - \eta_q, E_q[T]\rangle
        """
        eta_q, eta_p = self.natural_params, other.natural_params
        E = self.expectations()
        inner = (
            ((eta_p.loc - eta_q.loc) * E.precision_loc).sum(-1)
            - 0.5 * (eta_p.kappa - eta_q.kappa) * E.loc_precision_loc
            - 0.5 * ((eta_p.scale - eta_q.scale) * E.precision).sum((-1, -2))
            + 0.5 * (eta_p.df - eta_q.df) * E.log_det_precision
        )
        return other.log_normalizer() - self.log_normalizer() - inner

    # ----- sampling and density -------------------------------------------------

    def precision_dist(self) -> Wishart:
        """``Λ ~ W(W, ν)`` as a Pyro distribution with batch shape ``(...)``."""
        return Wishart(self.df, precision_matrix=self.scale_inv, validate_args=False)

    def loc_dist(self, precision) -> dist.MultivariateNormal:
        """``μ | Λ ~ N(m, (κΛ)⁻¹)`` as a Pyro distribution."""
        return dist.MultivariateNormal(
            self.loc, precision_matrix=self.kappa[..., None, None] * precision
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
    """
    ``Σ w E[log N(x; μ, Λ⁻¹)]`` from Normal-Wishart expectations and weighted
    statistics; the single source of the Gaussian's expected log-likelihood.
    """
    D = E.precision_loc.shape[-1]
    return (
        (stats.sum * E.precision_loc).sum(-1)
        - 0.5 * (stats.sum_outer * E.precision).sum((-1, -2))
        + 0.5 * stats.count * (E.log_det_precision - E.loc_precision_loc - D * math.log(2 * math.pi))
    )


def conjugate_update(prior: NormalWishartNatural, stats: GaussianStats) -> NormalWishartNatural:
    """Natural parameters of the posterior after observing weighted statistics."""
    return NormalWishartNatural(
        prior.loc + stats.sum,
        prior.kappa + stats.count,
        prior.scale + stats.sum_outer,
        prior.df + stats.count,
    )
