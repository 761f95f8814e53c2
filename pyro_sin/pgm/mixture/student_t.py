r"""
The latent Student-t mixture: a non-conjugate PGM factor.

.. math:: \pi \sim \mathrm{Dir}(\alpha_0),\quad z_n \sim \mathrm{Cat}(\pi),\quad
          x_n \mid z_n = k \sim \mathrm{St}(\mu_k, \Sigma_k, \nu)

``μ_k`` and ``Σ_k`` (through a Cholesky factor) are point estimates trained by
Adam, ``ν`` is fixed (or learned); the weights keep their Dirichlet posterior and
its natural-gradient step. The SIN factor stays a Gaussian mixture (free
mode), and ``E_q[log St(x; μ_k, Σ_k, ν)]`` is estimated by Monte Carlo with
reparameterised samples from every component's ``q(x | z = k)``. Heavy tails
let outliers sit in the tails of a component instead of dragging it.
"""

from typing import NamedTuple

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
from pyro.nn import PyroParam

from ...distributions import (
    DirichletBlock,
    NaturalDomain,
    dirichlet_cross_entropy,
    dirichlet_expected_log,
    dirichlet_kl,
)
from .gaussian import MixturePosterior, MixturePrior


class StudentTMixtureParams(NamedTuple):
    weights: torch.Tensor  # (..., K)
    locs: torch.Tensor  # (K, D)
    scale_tril: torch.Tensor  # (K, D, D)
    df: torch.Tensor  # (K,)


class StudentTMixtureGlobalPosterior:
    """
    ``q(π) = Dir(α)`` with ``E[log π]``, and the components' point estimates as read
    when the guide ran (so that Pyro records them as parameters of the step).
    """

    def __init__(self, concentration, params: StudentTMixtureParams):
        self.concentration = concentration
        self.expected_log_weights = dirichlet_expected_log(concentration)
        self.params = params


class StudentTMixture(MixturePrior):
    r"""
    :param int num_components: ``K``.
    :param int latent_dim: ``D``.
    :param str name: name of the latent site ``x``.
    :param float df: degrees of freedom ``ν`` (default 5).
    :param bool learn_df: train ``ν`` (kept above 2) with Adam.
    :param float concentration: Dirichlet prior ``α₀`` (default ``0.05 / K``).
    :param float init_loc_range: initial ``μ_k ~ U(-r, r)^D``.
    :param float init_scale: initial ``Σ_k = s² I``.
    :param int num_samples: samples per component for ``E_q[log St]``.
    """

    factor_modes = ("free",)

    def __init__(
        self,
        num_components: int,
        latent_dim: int,
        name: str = "x",
        *,
        df: float = 5.0,
        learn_df: bool = False,
        concentration=None,
        init_loc_range: float = 5.0,
        init_scale: float = 1.0,
        num_samples: int = 10,
    ):
        super().__init__(
            num_components, latent_dim, name, concentration=concentration, init_loc_range=init_loc_range
        )
        K, D = num_components, latent_dim
        if not self._finite(df, "StudentTMixture df") > 0:
            raise ValueError(f"StudentTMixture df must be positive, got {df}")
        if learn_df and not df > 2:
            raise ValueError(f"StudentTMixture learns df above 2: the initial df must exceed 2, got {df}")
        if not self._finite(init_scale, "StudentTMixture init_scale") > 0:
            raise ValueError(f"StudentTMixture init_scale must be positive, got {init_scale}")
        if num_samples < 1:
            raise ValueError(f"StudentTMixture num_samples must be at least 1, got {num_samples}")
        self.num_samples = num_samples
        self.locs = PyroParam((2 * torch.rand(K, D) - 1) * init_loc_range)
        self.scale_tril = PyroParam(
            init_scale * torch.eye(D).expand(K, D, D).clone(), constraints.lower_cholesky
        )
        if learn_df:
            self.df = PyroParam(torch.tensor(float(df)), constraints.greater_than(2.0))
        else:
            self.register_buffer("df", torch.tensor(float(df)))

    @property
    def global_sites(self):
        return (self.weights_site,)

    # ----- model side -------------------------------------------------------------

    def _sample_params(self) -> StudentTMixtureParams:
        weights = pyro.sample(self.weights_site, dist.Dirichlet(self.prior_concentration))
        return self._params(weights)

    def _params(self, weights) -> StudentTMixtureParams:
        locs = self.locs
        return StudentTMixtureParams(weights, locs, self.scale_tril, self.df.expand(locs.shape[:-1]))

    def components(self, params: StudentTMixtureParams) -> dist.MultivariateStudentT:
        return dist.MultivariateStudentT(params.df, params.locs, params.scale_tril)

    # ----- the weights' conjugate posterior ------------------------------------------

    def global_posterior(self, natural) -> StudentTMixtureGlobalPosterior:
        concentration = self._check_concentration(natural["concentration"], "mixture weights")
        return StudentTMixtureGlobalPosterior(concentration, self._params(None))

    def prior_natural(self):
        return {"concentration": self.prior_concentration}

    def init_natural(self):
        return {"concentration": torch.ones_like(self.prior_concentration)}

    def _sample_global_posterior(self, natural):
        pyro.sample(self.weights_site, dist.Dirichlet(self.global_posterior(natural).concentration))

    def kl(self, q: StudentTMixtureGlobalPosterior):
        return dirichlet_kl(q.concentration, self.prior_concentration)

    def cross_entropy(self, q: StudentTMixtureGlobalPosterior):
        return dirichlet_cross_entropy(q.concentration, self.prior_concentration)

    def natural_domain(self) -> NaturalDomain:
        return NaturalDomain([DirichletBlock(self.num_components)])

    def point_estimate(self, q: StudentTMixtureGlobalPosterior) -> StudentTMixtureParams:
        return q.params._replace(weights=q.concentration / q.concentration.sum(-1, keepdim=True))

    # ----- SIN factor ------------------------------------------------------------------

    def tied_factor(self, q):
        raise NotImplementedError("a Student-t mixture has no conjugate message: use factor='free'")

    def init_free_factor(self, natural):
        """The Gaussian with each component's location and scale."""
        with torch.no_grad():
            precision = torch.cholesky_inverse(self.scale_tril)
        return {
            "logits": (self.global_posterior(natural).expected_log_weights, constraints.real),
            "loc": (self.locs.detach().clone(), constraints.real_vector),
            "precision_tril": (torch.linalg.cholesky(precision), constraints.lower_cholesky),
        }

    # ----- the bound and the weights' natural-gradient target ----------------------------

    def expected_log_components(
        self, q: StudentTMixtureGlobalPosterior, posterior: MixturePosterior, num_samples=None
    ) -> torch.Tensor:
        r"""
        ``E_q(x | z=k)[log St(x; μ_k, Σ_k, ν)]`` per point and component, shape ``(..., K)``,
        by Monte Carlo with reparameterised samples of every component.
        """
        x = posterior.rsample_components((num_samples or self.num_samples,))  # (S, ..., K, D)
        return self.components(q.params).log_prob(x).mean(0)

    def expected_log_prior(self, q: StudentTMixtureGlobalPosterior, posterior: MixturePosterior) -> torch.Tensor:
        return (
            posterior.probs * (q.expected_log_weights + self.expected_log_components(q, posterior))
        ).sum(-1)

    def natural_target(self, posterior: MixturePosterior, scale: float):
        return {"concentration": self._weights_target(posterior, scale)}
