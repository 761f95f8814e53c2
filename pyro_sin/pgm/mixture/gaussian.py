r"""
The latent Gaussian mixture and its structured inference network.

Model (``K`` components, latent dimension ``D``)::

    π ~ Dir(α₀)
    Λ_k ~ W(W₀, ν₀),  μ_k | Λ_k ~ N(m₀, (κ₀Λ_k)⁻¹)
    z_n ~ Cat(π),  x_n | z_n = k ~ N(μ_k, Λ_k⁻¹)

SIN posterior of one data point with encoder potential ``(h_n, J_n)`` and a
mixture factor ``f_k(x) = exp(c_k + η_kᵀx - ½ xᵀP_k x)``:

.. math::

    q(x_n \mid z_n = k) = \mathcal N_{\rm info}(x_n;\ h_n + \eta_k,\ J_n + P_k),\qquad
    q(z_n = k) \propto \exp\big(c_k + \tfrac12 b^\top (J_n+P_k)^{-1} b
        - \tfrac12\log|J_n+P_k| + \tfrac D2\log 2\pi\big),\ b = h_n + \eta_k.
"""

import functools
import math
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
from pyro.ops.indexing import Vindex
from pyro.ops.tensor_utils import precision_to_scale_tril

from ...distributions import (
    Categorical,
    DirichletBlock,
    GaussianStats,
    NaturalDomain,
    NormalWishart,
    NormalWishartBlock,
    NormalWishartExpectations,
    NormalWishartNatural,
    conjugate_update,
    dirichlet_cross_entropy,
    dirichlet_expected_log,
    dirichlet_kl,
    expected_gaussian_log_likelihood,
    spd_matrix,
)
from ...initialization import best_kmeans, encode, kmeans, normal_wishart_from_clusters, normal_wishart_from_points
from ...potential import GaussianPotential
from ..base import SINRecord, StructuredPrior, shares_in_use

_LOG_2PI = math.log(2 * math.pi)


class MixtureParams(NamedTuple):
    """Sampled global parameters of a Gaussian mixture."""

    weights: torch.Tensor  # (..., K)
    locs: torch.Tensor  # (..., K, D)
    precisions: torch.Tensor  # (..., K, D, D)


class MixtureGlobalPosterior:
    """``q(π) q(μ, Λ) = Dir(α) Π_k NW(m_k, κ_k, W_k, ν_k)`` with its expectations."""

    def __init__(self, concentration: torch.Tensor, normal_wishart: NormalWishart):
        self.concentration = concentration  # (K,)
        self.normal_wishart = normal_wishart  # batch (K,)
        self.expected_log_weights = dirichlet_expected_log(concentration)  # (K,)
        self.expectations = normal_wishart.expectations()


class MixtureFactor(NamedTuple):
    r"""Unnormalised Gaussian components ``f_k(x) = exp(c_k + η_kᵀx - ½ xᵀ P_k x)``."""

    log_weight: torch.Tensor  # (K,)       c_k
    precision: torch.Tensor  # (K, D, D)   P_k
    info_loc: torch.Tensor  # (K, D)       η_k


def expected_gaussian_factor(E: NormalWishartExpectations, log_weight=0.0) -> MixtureFactor:
    r"""
    The mean-field message ``exp E_q(μ,Λ)[log N(x; μ_k, Λ_k⁻¹)]`` of each component,
    plus ``log_weight``:

    .. math:: c_k = w_k + \tfrac12\big(E[\log|\Lambda_k|] - E[\mu_k^\top\Lambda_k\mu_k] - D\log 2\pi\big),\quad
              P_k = E[\Lambda_k],\quad \eta_k = E[\Lambda_k\mu_k].
    """
    D = E.precision.shape[-1]
    return MixtureFactor(
        log_weight + 0.5 * (E.log_det_precision - E.loc_precision_loc - D * _LOG_2PI), E.precision, E.precision_loc
    )


def gaussian_factor(loc: torch.Tensor, precision_tril: torch.Tensor, log_weight=0.0) -> MixtureFactor:
    """Components ``w_k + log N(x; loc_k, (L_k L_kᵀ)⁻¹)`` for means ``(K, D)`` and Cholesky factors ``(K, D, D)``."""
    precision = precision_tril @ precision_tril.transpose(-1, -2)
    info_loc = (precision @ loc[..., None])[..., 0]
    log_weight = (
        log_weight
        + precision_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        - 0.5 * (loc * info_loc).sum(-1)
        - 0.5 * loc.shape[-1] * _LOG_2PI
    )
    return MixtureFactor(log_weight, precision, info_loc)


class MixturePosterior:
    r"""
    The closed-form SIN posterior ``q(x_n, z_n | y_n)`` of a batch of points.

    :param GaussianPotential potential: encoder potentials, shape ``(..., D)``.
    :param MixtureFactor factor: the SIN's mixture factor.
    """

    def __init__(self, potential: GaussianPotential, factor: MixtureFactor):
        D = potential.info_vec.shape[-1]
        precision = (
            torch.diag_embed(potential.precision)[..., None, :, :] + factor.precision
        )  # (..., K, D, D)
        info_vec = potential.info_vec[..., None, :] + factor.info_loc  # (..., K, D)
        # One factorisation gives the sampler, the mean and the log-determinant.
        self.scale_tril = precision_to_scale_tril(precision)  # (..., K, D, D)
        half_cov_info = (self.scale_tril.transpose(-1, -2) @ info_vec[..., None])[..., 0]
        self.loc = (self.scale_tril @ half_cov_info[..., None])[..., 0]  # (..., K, D)
        self.half_log_det_cov = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_z = (
            factor.log_weight
            + 0.5 * half_cov_info.pow(2).sum(-1)
            + 0.5 * D * _LOG_2PI
            + self.half_log_det_cov
        )  # (..., K)
        self.log_evidence = log_z  # (..., K) log ∫ f_k(x) ψ(x) dx
        self.log_normalizer = torch.logsumexp(log_z, -1)  # (...)
        self.log_probs = log_z - self.log_normalizer[..., None]  # (..., K) log r_nk
        self.dim = D

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    @property
    def covariance(self) -> torch.Tensor:
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ | z = k]``, shape ``(..., K, D, D)``."""
        return self.covariance + self.loc[..., :, None] * self.loc[..., None, :]

    def entropy(self) -> torch.Tensor:
        r"""``H[q(x, z)] = H[r] + Σ_k r_k H[N(x̄_k, S_k)]``, shape ``(...)``."""
        gaussian = 0.5 * self.dim * (1 + _LOG_2PI) + self.half_log_det_cov
        probs = self.probs
        return (probs * (gaussian - self.log_probs)).sum(-1)

    @functools.cached_property
    def weighted_stats(self) -> GaussianStats:
        """Per-point, per-component statistics ``r_nk (1, x̄, E[x xᵀ])``, batch ``(..., K)``."""
        r = self.probs
        return GaussianStats(
            r, r[..., None] * self.loc, r[..., None, None] * self.second_moment()
        )

    def rsample_components(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Reparameterised draws from every ``q(x | z = k)``, shape ``sample_shape + (..., K, D)``."""
        shape = torch.Size(sample_shape) + self.loc.shape
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self.scale_tril @ noise[..., None])[..., 0]

    def marginal_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x | y) = log Σ_k r_k N(x; x̄_k, S_k)`` for ``x`` of shape ``(..., D)``."""
        comps = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril)
        return torch.logsumexp(self.log_probs + comps.log_prob(x[..., None, :]), -1)


class MeanFieldMixturePosterior(MixturePosterior):
    r"""
    A mean-field posterior ``q(z_n) q(x_n)`` (the SVAE's), presented through the
    interface of :class:`MixturePosterior`: every component shares the one
    Gaussian ``q(x_n)``, so ``x`` does not depend on the sampled ``z``.

    :param torch.Tensor log_probs: ``log q(z_n = k)``, shape ``(..., K)``.
    :param torch.Tensor loc: mean of ``q(x_n)``, shape ``(..., D)``.
    :param torch.Tensor scale_tril: Cholesky factor of its covariance, ``(..., D, D)``.
    """

    def __init__(self, log_probs, loc, scale_tril):
        K, D = log_probs.shape[-1], loc.shape[-1]
        self.log_probs = log_probs
        self.loc = loc[..., None, :].expand(loc.shape[:-1] + (K, D))
        self.scale_tril = scale_tril[..., None, :, :].expand(scale_tril.shape[:-2] + (K, D, D))
        self.half_log_det_cov = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        self.log_normalizer = None  # a mean-field posterior has no closed-form normaliser
        self.dim = D


class MixturePrior(StructuredPrior):
    r"""
    What every mixture prior ``z_n ~ Cat(π), π ~ Dir(α₀), x_n | z_n ~ p_{z_n}(x_n)``
    shares: the Dirichlet over the weights (with its natural-gradient step), the
    site names, and the SIN side: a Gaussian-mixture factor combined with the
    encoder's potentials in closed form (:class:`MixturePosterior`).

    Subclasses supply the components: :meth:`components` (the distributions
    ``p_k`` given sampled parameters) and their part of the conjugate posterior.

    :param int num_components: ``K``.
    :param int latent_dim: ``D``.
    :param str name: name of the latent site ``x``.
    :param float concentration: Dirichlet prior ``α₀`` (default ``0.05 / K``).
    :param float init_loc_range: initial component means ``~ U(-r, r)^D``.
    """

    def __init__(self, num_components, latent_dim, name="x", *, concentration=None, init_loc_range=5.0):
        super().__init__(name, num_components=num_components, latent_dim=latent_dim)
        K = num_components
        what = type(self).__name__
        self.init_loc_range = self._finite(init_loc_range, f"{what} init_loc_range")
        concentration = 0.05 / K if concentration is None else concentration
        self.register_buffer("prior_concentration", self._as_tensor(concentration, (K,), f"{what} concentration"))
        if not (self.prior_concentration > 0).all():
            raise ValueError("the Dirichlet concentration must be positive")

    site_roles = ("weights", "assignment")

    # ----- site names -----------------------------------------------------------

    @property
    def weights_site(self):
        return self.site_name("weights")

    @property
    def assignment_site(self):
        return self.site_name("assignment")

    @property
    def local_sites(self):
        return (self.assignment_site, self.name)

    # ----- model side -------------------------------------------------------------

    def components(self, params):
        """The component distributions ``p_k(x)`` for sampled parameters, batch ``(..., K)``."""
        raise NotImplementedError

    def _sample_latent(self, params) -> torch.Tensor:
        z = pyro.sample(self.assignment_site, dist.Categorical(params.weights))
        component = self.components(params)
        return pyro.sample(self.name, select_component(component, z))

    def latent_log_prob(self, params, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | θ) = log Σ_k π_k p_k(x)`` for ``x`` of shape ``(..., D)``."""
        log_components = self.components(params).log_prob(x[..., None, :])
        return torch.logsumexp(params.weights.log() + log_components, -1)

    # ----- the weights' conjugate posterior ------------------------------------------

    def _weights_target(self, posterior: MixturePosterior, scale: float) -> torch.Tensor:
        """``α* = α₀ + scale · Σ_n r_nk``."""
        probs = posterior.probs
        return self.prior_concentration + scale * probs.reshape(-1, probs.shape[-1]).sum(0)

    # ----- SIN factor and posterior ---------------------------------------------------

    def free_factor(self, params) -> MixtureFactor:
        return gaussian_factor(params["loc"], params["precision_tril"], torch.log_softmax(params["logits"], -1))

    def posterior(self, potential: GaussianPotential, factor: MixtureFactor) -> MixturePosterior:
        self.check_potential(potential)
        return MixturePosterior(potential, factor)

    def sample_local_posterior(self, record: SINRecord) -> torch.Tensor:
        post = record.posterior
        z = pyro.sample(self.assignment_site, Categorical(logits=post.log_probs, validate_args=False))
        loc = take_component(post.loc, z, 1)
        scale_tril = take_component(post.scale_tril, z, 2)
        return pyro.sample(
            self.name,
            dist.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False),
            infer={"sin": record},
        )

    # ----- diagnostics ------------------------------------------------------------------

    def in_use(self, natural, min_share=0.01) -> int:
        """The components whose expected count under ``q(π) = Dir(α)``, ``α_k - α₀_k``, is ``min_share`` or more."""
        return shares_in_use(natural["concentration"] - self.prior_concentration, min_share)

    def in_use_warning(self, in_use: int) -> Optional[str]:
        if self.num_components == 1 or in_use != 1:
            return None
        return (
            f"the posterior collapsed onto one of {self.num_components} mixture components: every "
            "point is assigned to the same cluster. If the data hold several clusters, standardise them "
            "(pyro_sin.standardize.standardized_autoencoder), let the networks learn before the natural "
            "step moves the components (a warm-up, pyro_sin.initialization.warmup_schedule) and start the "
            "components from the encoded data (GaussianMixture.encoded_start), or lower the learning rate. "
            "If a few points hold the other components, they are outliers that a Gaussian mixture gives components "
            "of their own: use pyro_sin.pgm.StudentTMixture, whose heavy tails absorb them."
        )


def take_component(values: torch.Tensor, z: torch.Tensor, event_dim: int) -> torch.Tensor:
    """
    ``values[..., z, *event]``: the component ``z`` of per-component ``values`` of shape
    ``batch + (K,) + event`` (``event_dim`` dimensions), broadcasting ``z`` against ``batch``.
    """
    batch = torch.broadcast_shapes(z.shape, values.shape[: values.dim() - 1 - event_dim])
    event = values.shape[values.dim() - event_dim :]
    values = values.expand(batch + values.shape[values.dim() - 1 - event_dim :])
    index = z.expand(batch).reshape(batch + (1,) * (1 + event_dim)).expand(batch + (1,) + event)
    return values.gather(len(batch), index).squeeze(len(batch))


def select_component(components, z):
    """The component ``z`` of a batch of distributions whose rightmost batch dimension is ``K``."""
    if isinstance(components, dist.MultivariateNormal):
        return dist.MultivariateNormal(
            Vindex(components.loc)[..., z, :], scale_tril=Vindex(components.scale_tril)[..., z, :, :]
        )
    if isinstance(components, dist.MultivariateStudentT):
        return dist.MultivariateStudentT(
            Vindex(components.df)[..., z],
            Vindex(components.loc)[..., z, :],
            Vindex(components.scale_tril)[..., z, :, :],
        )
    raise NotImplementedError(f"cannot select a component of {type(components).__name__}")


class NormalWishartGaussians:
    r"""
    What the priors whose latents are Gaussians ``N(μ_k, Λ_k⁻¹)`` under a Normal-Wishart
    ``p(μ_k, Λ_k)`` share (the mixture's components, the HMM's states, the single Gaussian
    of :mod:`pyro_sin.pgm.gaussian`): the hyperparameters, ``p(μ, Λ)``, ``q(μ, Λ)`` from
    ``λ``, its scattered start, its free factor and its conjugate update. A mixin of a
    :class:`~pyro_sin.pgm.base.StructuredPrior` with a ``latent_dim``; the Gaussians' batch
    shape is that of ``prior_kappa``.
    """

    def _register_normal_wishart(self, batch_shape, loc, kappa, scale_inv, df, what: str):
        """Buffers ``m₀, κ₀, W₀⁻¹, ν₀`` (defaults of the last two ``(D + 0.5) I``, ``2D + 0.5``), validated."""
        D = self.latent_dim
        scale_inv = spd_matrix(D + 0.5 if scale_inv is None else scale_inv, D, batch_shape, f"{what} scale_inv")
        self.register_buffer("prior_loc", self._as_tensor(loc, batch_shape + (D,), f"{what} loc"))
        self.register_buffer("prior_kappa", self._as_tensor(kappa, batch_shape, f"{what} kappa"))
        self.register_buffer("prior_scale_inv", self._as_tensor(scale_inv, batch_shape + (D, D), f"{what} scale_inv"))
        self.register_buffer("prior_df", self._as_tensor(2 * D + 0.5 if df is None else df, batch_shape, f"{what} df"))
        self.prior(validate_args=True)  # positive definite scale, df > D - 1, kappa > 0

    def prior(self, validate_args=False) -> NormalWishart:
        """``p(μ, Λ)``; its hyperparameters are validated once, at construction."""
        buffers = (self.prior_loc, self.prior_kappa, self.prior_scale_inv, self.prior_df)
        return self._conjugate_prior(NormalWishart, buffers, validate_args)

    def _conjugate_block(self) -> NormalWishartBlock:
        return NormalWishartBlock(self.prior_kappa.shape, self.latent_dim)

    @staticmethod
    def _conjugate_from_natural(natural: Dict[str, torch.Tensor]) -> NormalWishart:
        """``q(μ, Λ)`` from the Normal-Wishart entries of ``λ`` (in its domain by construction)."""
        nw = NormalWishartNatural(natural["loc"], natural["kappa"], natural["scale"], natural["df"])
        return NormalWishart.from_natural(nw, validate_args=False)

    def _scattered_normal_wishart(self) -> NormalWishart:
        """Weakly confident Gaussians (``κ = 1``, ``ν = 2D + 1``, ``E[Λ] = I``) at means ``~ U(-r, r)^D``."""
        like, D = self.prior_loc, self.latent_dim
        batch = like.shape[:-1]
        locs = (2 * torch.rand(like.shape, dtype=like.dtype, device=like.device) - 1) * self.init_loc_range
        return NormalWishart(
            locs,
            torch.ones(batch, dtype=like.dtype, device=like.device),
            2 * D * torch.eye(D, dtype=like.dtype, device=like.device).expand(batch + (D, D)),
            torch.full(batch, 2.0 * D + 1, dtype=like.dtype, device=like.device),
        )

    @staticmethod
    def _free_gaussians(normal_wishart: NormalWishart, expectations: NormalWishartExpectations):
        """A free factor's Gaussians, started at ``E[μ] = m`` and ``E[Λ]``."""
        return {
            "loc": (normal_wishart.loc, constraints.real_vector),
            "precision_tril": (torch.linalg.cholesky(expectations.precision), constraints.lower_cholesky),
        }

    def _gaussians_target(self, stats: GaussianStats, scale: float) -> NormalWishartNatural:
        """The conjugate update from the statistics of every point, summed over the points and scaled by ``scale``."""
        batch_dims = tuple(range(stats.count.dim() - self.prior_kappa.dim()))
        total = GaussianStats(*(scale * s.sum(batch_dims) for s in stats))
        return conjugate_update(self.prior().natural_params, total)


class GaussianMixture(NormalWishartGaussians, MixturePrior):
    r"""
    A Gaussian mixture prior on a latent ``x`` with a Dirichlet / Normal-Wishart
    conjugate prior on its parameters.

    Model-side use inside a Pyro program::

        params = gmm.sample_params()          # sites x_weights, x_precisions, x_locs
        with pyro.plate("data", N, subsample=idx):
            x = gmm.sample_latent(params)     # sites x_assignment, x

    :param int num_components: ``K``.
    :param int latent_dim: ``D``.
    :param str name: name of the latent site ``x``.
    :param float concentration: Dirichlet prior ``α₀`` (default ``0.05 / K``).
    :param loc: prior mean ``m₀`` (default 0).
    :param float kappa: ``κ₀`` (default 0.5).
    :param torch.Tensor scale_inv: ``W₀⁻¹`` (default ``(D + 0.5) I``).
    :param float df: ``ν₀`` (default ``2D + 0.5``).
    :param float init_loc_range: initial posterior means ``m ~ U(-r, r)^D``.
    """

    factor_modes = ("tied", "free")
    site_roles = ("weights", "assignment", "precisions", "locs")

    def __init__(
        self,
        num_components: int,
        latent_dim: int,
        name: str = "x",
        *,
        concentration=None,
        loc=0.0,
        kappa=0.5,
        scale_inv=None,
        df=None,
        init_loc_range: float = 5.0,
    ):
        super().__init__(
            num_components, latent_dim, name, concentration=concentration, init_loc_range=init_loc_range
        )
        self._register_normal_wishart((num_components,), loc, kappa, scale_inv, df, "GaussianMixture")

    @property
    def precisions_site(self):
        return self.site_name("precisions")

    @property
    def locs_site(self):
        return self.site_name("locs")

    @property
    def global_sites(self):
        return (self.weights_site, self.precisions_site, self.locs_site)

    # ----- model side -------------------------------------------------------------

    def _sample_params(self) -> MixtureParams:
        weights = pyro.sample(self.weights_site, dist.Dirichlet(self.prior_concentration))
        precisions, locs = self._sample_conjugate(self.prior(), (self.precisions_site, self.locs_site), 1)
        return MixtureParams(weights, locs, precisions)

    def components(self, params: MixtureParams) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(params.locs, precision_matrix=params.precisions)

    # ----- conjugate posterior over θ -----------------------------------------------

    def global_posterior(self, natural: Dict[str, torch.Tensor]) -> MixtureGlobalPosterior:
        concentration = self._check_concentration(natural["concentration"], "mixture weights")
        return MixtureGlobalPosterior(concentration, self._conjugate_from_natural(natural))

    @staticmethod
    def _pack(concentration, nw_natural: NormalWishartNatural) -> Dict[str, torch.Tensor]:
        return {"concentration": concentration, **nw_natural._asdict()}

    def prior_natural(self):
        return self._pack(self.prior_concentration, self.prior().natural_params)

    def init_natural(self):
        return self._pack(torch.ones_like(self.prior_concentration), self._scattered_normal_wishart().natural_params)

    def point_estimate(self, q: MixtureGlobalPosterior) -> MixtureParams:
        """Posterior means ``E[π]``, ``E[μ_k] = m_k`` and ``E[Λ_k] = ν_k W_k``."""
        weights = q.concentration / q.concentration.sum(-1, keepdim=True)
        return MixtureParams(weights, q.normal_wishart.loc, q.expectations.precision)

    def global_values(self, q: MixtureGlobalPosterior) -> Dict[str, torch.Tensor]:
        """The posterior means (:meth:`point_estimate`) by site name."""
        weights, locs, precisions = self.point_estimate(q)
        return {self.weights_site: weights, self.precisions_site: precisions, self.locs_site: locs}

    def _sample_global_posterior(self, natural):
        q = self.global_posterior(natural)
        pyro.sample(self.weights_site, dist.Dirichlet(q.concentration))
        self._sample_conjugate(q.normal_wishart, (self.precisions_site, self.locs_site), 1)

    def kl(self, q: MixtureGlobalPosterior):
        return dirichlet_kl(q.concentration, self.prior_concentration) + q.normal_wishart.kl_divergence(
            self.prior()
        ).sum(-1)

    def cross_entropy(self, q: MixtureGlobalPosterior):
        return dirichlet_cross_entropy(
            q.concentration, self.prior_concentration
        ) + q.normal_wishart.cross_entropy(self.prior()).sum(-1)

    def natural_domain(self) -> NaturalDomain:
        return NaturalDomain([DirichletBlock(self.num_components), self._conjugate_block()])

    # ----- SIN factor ------------------------------------------------------------------

    def tied_factor(self, q: MixtureGlobalPosterior) -> MixtureFactor:
        return expected_gaussian_factor(q.expectations, q.expected_log_weights)

    def init_free_factor(self, natural):
        q = self.global_posterior(natural)
        logits = {"logits": (q.expected_log_weights, constraints.real)}
        return {**logits, **self._free_gaussians(q.normal_wishart, q.expectations)}

    def mean_field_posterior(
        self, potential: GaussianPotential, q: MixtureGlobalPosterior, num_iterations: int = 20
    ) -> MeanFieldMixturePosterior:
        r"""
        The SVAE's inner loop (Johnson et al., 2016): coordinate ascent on
        ``q(z_n) q(x_n)`` against the encoder's potential and the *current* ``q(θ)``,

        .. math:: q(x_n) = \mathcal N_{\rm info}\big(h_n + \textstyle\sum_k r_{nk} E[\Lambda_k\mu_k],\
                  J_n + \sum_k r_{nk} E[\Lambda_k]\big),\qquad
                  \log r_{nk} = E_{q(x_n)}[\log f_k(x_n)] + \mathrm{const},

        with ``f`` the mean-field message of ``q(θ)``, unrolled so that gradients reach
        the encoder. Starts from uniform ``r`` and ends with the ``q(x)`` update.
        """
        factor = self.tied_factor(q)
        h, J = potential.info_vec, potential.precision
        uniform = torch.zeros(h.shape[:-1] + factor.log_weight.shape, dtype=h.dtype, device=h.device)
        log_r = torch.log_softmax(uniform, -1)

        def update_x(log_r):
            r = log_r.exp()
            precision = torch.diag_embed(J) + torch.einsum("...k,kij->...ij", r, factor.precision)
            info = h + r @ factor.info_loc
            scale_tril = precision_to_scale_tril(precision)
            loc = (scale_tril @ (scale_tril.transpose(-1, -2) @ info[..., None]))[..., 0]
            return loc, scale_tril

        for _ in range(num_iterations):
            loc, scale_tril = update_x(log_r)
            second = scale_tril @ scale_tril.transpose(-1, -2) + loc[..., :, None] * loc[..., None, :]
            log_r = torch.log_softmax(
                factor.log_weight
                + loc @ factor.info_loc.transpose(-1, -2)
                - 0.5 * torch.einsum("kij,...ij->...k", factor.precision, second),
                -1,
            )
        loc, scale_tril = update_x(log_r)
        return MeanFieldMixturePosterior(log_r, loc, scale_tril)

    # ----- closed-form bound and natural-gradient target ---------------------------------

    def expected_log_prior(self, q: MixtureGlobalPosterior, posterior: MixturePosterior) -> torch.Tensor:
        stats = posterior.weighted_stats  # batch (..., K)
        return (
            posterior.probs * q.expected_log_weights
            + expected_gaussian_log_likelihood(q.expectations, stats)
        ).sum(-1)

    def natural_target(self, posterior: MixturePosterior, scale: float):
        stats = posterior.weighted_stats
        return self._pack(self._weights_target(posterior, scale), self._gaussians_target(stats, scale))

    # ----- data-driven start ----------------------------------------------------------

    def natural_from_points(
        self, points: torch.Tensor, generator: Optional[torch.Generator] = None, refine: int = 0
    ) -> Dict[str, torch.Tensor]:
        """
        ``λ`` with equal weights and one Normal-Wishart on each k-means cluster of ``points``
        (:func:`~pyro_sin.initialization.normal_wishart_from_points`). With ``refine > 0`` the
        clusters are refined by up to ``refine`` coordinate-ascent sweeps of a variational
        Bayesian Gaussian mixture started from their centres
        (:func:`~pyro_sin.pgm.mixture.classic.bayesian_gmm`, whose prior follows the points' own scale),
        and the components start on its soft clusters: k-means cuts elongated clusters into
        round pieces of equal spread, a mixture with full covariances does not.

        :param points: latent points, shape ``(N, D)``, e.g. the encoder's means.
        :param int refine: the number of mixture sweeps after k-means (``0``: k-means alone).
        """
        K, D = self.num_components, self.latent_dim
        if points.shape[-1] != D:
            raise ValueError(f"need latent points of dimension {D}, got shape {tuple(points.shape)}")
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        if refine and K > 1:
            from .classic import bayesian_gmm  # the classic mixture is built on this class

            points = points.detach().reshape(-1, D)
            centres, _ = kmeans(points, K, generator)
            mixture = bayesian_gmm(points, K, centres, iterations=refine)
            resp = mixture.log_responsibilities(points).exp()
            counts = resp.sum(0)
            # a component the mixture emptied keeps its k-means centre (and borrows the pooled shape)
            centres = torch.where(counts[:, None] > 1e-6, resp.T @ points / counts.clamp(min=1e-6)[:, None], centres)
            components = normal_wishart_from_clusters(points, centres, resp)
        else:
            components = normal_wishart_from_points(K, points, generator)
        return self._pack(torch.ones_like(components.df), components.natural_params)

    @torch.no_grad()
    def encoded_start(self, encoder, data, generator=None, refine: int = 0):
        """
        :meth:`natural_from_points` on the means of the encoder's potentials for ``data``:
        the components on the clusters of the encoded training data.

        :param int refine: mixture sweeps after k-means (see :meth:`natural_from_points`).
        """
        return self.natural_from_points(encode(encoder, data).mean, generator, refine)

    @torch.no_grad()
    def fit_to_potentials(
        self,
        potential: GaussianPotential,
        points: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        n_init: int = 10,
        max_sweeps: int = 1000,
        tol: float = 1e-3,
    ) -> Tuple[Dict[str, torch.Tensor], float]:
        r"""
        The classic Bayesian Gaussian mixture this prior contains, fitted to fixed potentials
        ``ψ_n`` by variational Bayes: coordinate ascent that alternates the SIN posterior of
        every point under the tied factor of ``q(θ | λ)`` and the full natural step ``λ ← λ*``,
        until the bound

        .. math:: \mathcal L(\lambda) = \textstyle\sum_n \log \int \psi_n(x)\,
                  e^{E_{q(\theta)}[\log p(x, z_n \mid \theta)]}\,dx - \mathrm{KL}(q(\theta)\,\|\,p(\theta))

        rises by less than ``tol`` nats per point in a sweep (scikit-learn's criterion and default).
        When ``ψ_n`` is the exact likelihood of a linear-Gaussian decoder (e.g.
        :func:`~pyro_sin.standardize.ppca_autoencoder`'s networks at their start), this is
        variational Bayes for the whole deep model with its networks held at their linear
        start, and ``L`` is its bound up to a constant. It starts, as scikit-learn starts its
        mixtures, from the best of ``n_init`` k-means partitions of ``points`` (default: the
        potentials' means), the components on those clusters.

        :param potential: the potentials of the whole data set, shape ``(N, D)``.
        :param points: where k-means looks for clusters, shape ``(N, d)`` (any coordinates of
            the same points, e.g. their unwhitened principal components).
        :returns: ``(λ, L)``.
        """
        self.check_potential(potential)
        means = potential.mean.reshape(-1, self.latent_dim)
        points = means if points is None else points.reshape(len(means), -1)
        K = self.num_components
        _, assignment = best_kmeans(points, K, generator, n_init)
        one_hot = torch.nn.functional.one_hot(assignment, K).to(means.dtype)
        centres = (one_hot.T @ means) / one_hot.sum(0).clamp(min=1)[:, None]
        start = normal_wishart_from_clusters(means, centres, one_hot)

        def bound_and_posterior(natural):
            q = self.global_posterior(natural)
            posterior = self.posterior(potential, self.tied_factor(q))
            return float(posterior.log_normalizer.sum() - self.kl(q)), posterior

        natural = self._pack(torch.ones_like(start.df), start.natural_params)
        bound, posterior = bound_and_posterior(natural)
        for _ in range(max_sweeps):
            natural = self.natural_target(posterior, 1.0)
            last, (bound, posterior) = bound, bound_and_posterior(natural)
            if bound - last <= tol * len(means):
                break
        return natural, bound
