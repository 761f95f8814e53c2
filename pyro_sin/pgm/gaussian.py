r"""
One Gaussian latent per data point: the structured VAE's simplest prior (a family of one
module and one line in ``pyro_sin.pgm.FAMILIES``).

Model (latent dimension ``D``)::

    Λ ~ W(W₀, ν₀),  μ | Λ ~ N(m₀, (κ₀Λ)⁻¹),  x_n | μ, Λ ~ N(μ, Λ⁻¹)

SIN posterior of one data point with encoder potential ``(h_n, J_n)`` and a Gaussian
factor ``f(x) = exp(c + ηᵀx - ½ xᵀP̃x)`` (tied: ``P̃ = E[Λ]``, ``η = E[Λμ]``; free: its
own mean ``μ̃`` and precision, ``η = P̃μ̃``):

.. math:: q(x_n) = \mathcal N_{\rm info}(x_n;\ h_n + \tilde P\tilde\mu,\ J_n + \tilde P),

the Gaussian mixture's SIN posterior with one component
(:class:`~pyro_sin.pgm.mixture.gaussian.MixturePosterior`, with its log normaliser and entropy).
"""

from typing import NamedTuple

import torch

import pyro
import pyro.distributions as dist

from ..distributions import NaturalDomain, NormalWishart, expected_gaussian_log_likelihood
from ..potential import GaussianPotential
from .base import SINRecord, StructuredPrior
from .mixture import MixtureFactor, MixturePosterior, expected_gaussian_factor, gaussian_factor
from .mixture.gaussian import NormalWishartGaussians


class GaussianParams(NamedTuple):
    """Sampled parameters of the latent Gaussian."""

    loc: torch.Tensor  # (..., D)  μ
    precision: torch.Tensor  # (..., D, D)  Λ


class GaussianGlobalPosterior:
    """``q(μ, Λ) = NW(m, κ, W, ν)`` with its expectations."""

    def __init__(self, normal_wishart: NormalWishart):
        self.normal_wishart = normal_wishart
        self.expectations = normal_wishart.expectations()


def _one_component(factor: MixtureFactor) -> MixtureFactor:
    """A Gaussian factor as a mixture factor of a single component (``K = 1``)."""
    return MixtureFactor(*(part[None] for part in factor))


class LatentGaussian(NormalWishartGaussians, StructuredPrior):
    r"""
    A Gaussian prior ``x_n ~ N(μ, Λ⁻¹)`` on a latent with a Normal-Wishart prior on ``(μ, Λ)``.

    Model-side use inside a Pyro program::

        params = prior.sample_params()       # sites x_precision, x_loc
        with pyro.plate("data", N, subsample=idx):
            x = prior.sample_latent(params)  # site x

    :param int latent_dim: ``D``.
    :param str name: name of the latent site ``x``.
    :param loc: prior mean ``m₀`` (default 0).
    :param float kappa: ``κ₀`` (default 0.5).
    :param torch.Tensor scale_inv: ``W₀⁻¹`` (default ``(D + 0.5) I``).
    :param float df: ``ν₀`` (default ``2D + 0.5``).
    """

    def __init__(self, latent_dim: int, name: str = "x", *, loc=0.0, kappa=0.5, scale_inv=None, df=None):
        super().__init__(name, latent_dim=latent_dim)
        self._register_normal_wishart((), loc, kappa, scale_inv, df, "LatentGaussian")

    @property
    def global_sites(self):
        return (f"{self.name}_precision", f"{self.name}_loc")

    @property
    def local_sites(self):
        return (self.name,)

    # ----- model side -------------------------------------------------------------

    def _sample_params(self) -> GaussianParams:
        precision, loc = self._sample_conjugate(self.prior(), self.global_sites)
        return GaussianParams(loc, precision)

    def _sample_latent(self, params: GaussianParams) -> torch.Tensor:
        return pyro.sample(self.name, dist.MultivariateNormal(params.loc, precision_matrix=params.precision))

    # ----- conjugate posterior over θ -----------------------------------------------

    def global_posterior(self, natural) -> GaussianGlobalPosterior:
        return GaussianGlobalPosterior(self._conjugate_from_natural(natural))

    def prior_natural(self):
        return self.prior().natural_params._asdict()

    def natural_domain(self) -> NaturalDomain:
        return NaturalDomain([self._conjugate_block()])

    def _sample_global_posterior(self, natural):
        self._sample_conjugate(self.global_posterior(natural).normal_wishart, self.global_sites)

    def kl(self, q: GaussianGlobalPosterior):
        return q.normal_wishart.kl_divergence(self.prior())

    def cross_entropy(self, q: GaussianGlobalPosterior):
        return q.normal_wishart.cross_entropy(self.prior())

    def point_estimate(self, q: GaussianGlobalPosterior) -> GaussianParams:
        """Posterior means ``E[μ] = m`` and ``E[Λ] = ν W``."""
        return GaussianParams(q.normal_wishart.loc, q.expectations.precision)

    # ----- SIN factor and posterior ---------------------------------------------------

    def tied_factor(self, q: GaussianGlobalPosterior) -> MixtureFactor:
        return _one_component(expected_gaussian_factor(q.expectations))

    def init_free_factor(self, natural):
        q = self.global_posterior(natural)
        return self._free_gaussians(q.normal_wishart, q.expectations)

    def free_factor(self, params) -> MixtureFactor:
        return _one_component(gaussian_factor(params["loc"], params["precision_tril"]))

    def posterior(self, potential: GaussianPotential, factor: MixtureFactor) -> MixturePosterior:
        self.check_potential(potential)
        return MixturePosterior(potential, factor)

    def sample_local_posterior(self, record: SINRecord) -> torch.Tensor:
        post = record.posterior  # one component, batch (..., 1)
        loc, scale_tril = post.loc[..., 0, :], post.scale_tril[..., 0, :, :]
        q_x = dist.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)
        return pyro.sample(self.name, q_x, infer={"sin": record})

    # ----- closed-form bound and natural-gradient target ---------------------------------

    def expected_log_prior(self, q: GaussianGlobalPosterior, posterior: MixturePosterior) -> torch.Tensor:
        return expected_gaussian_log_likelihood(q.expectations, posterior.weighted_stats)[..., 0]

    def natural_target(self, posterior: MixturePosterior, scale: float):
        return self._gaussians_target(posterior.weighted_stats, scale)._asdict()
