r"""
A Bayesian Gaussian mixture on the raw data, fitted by variational Bayes with
the same Dirichlet / Normal-Wishart mathematics as SAN's latent mixture:
responsibilities from the mean-field message of ``q(θ)``
(:meth:`~pyro_sin.pgm.GaussianMixture.tied_factor` evaluated at the data) and
conjugate (natural-gradient) updates of ``λ`` — full-batch coordinate ascent
with ``β = 1``, or stochastic natural gradients on minibatches.

Its "reconstruction" for the weighted test MSE draws ``ŷ`` from each component's
fitted Gaussian ``N(m_k, E[Λ_k]⁻¹)`` and weights by the responsibilities: a GMM
has no latent code to decode, so this is the error of regenerating a point
from its clusters.
"""

import torch

import pyro.distributions as dist

from ...distributions import GaussianStats, conjugate_update
from ...metrics import weighted_mse
from .gaussian import GaussianMixture


class BayesianGMM:
    """
    :param int num_components: ``K``.
    :param int data_dim: ``D``.
    :param prior: keyword arguments of :class:`~pyro_sin.pgm.GaussianMixture`
        (``concentration``, ``loc``, ``kappa``, ``scale_inv``, ``df``).
    """

    def __init__(self, num_components: int, data_dim: int, **prior):
        self.pgm = GaussianMixture(num_components, data_dim, name="y", **prior)
        self.natural = None

    def initialize(self, data: torch.Tensor, generator=None, locs=None):
        """``q(θ)`` centred on ``K`` random data points (or the given ``locs``) with the prior's spread."""
        pgm = self.pgm
        if locs is None:
            device = data.device if generator is None else generator.device
            idx = torch.randperm(len(data), generator=generator, device=device)[: pgm.num_components]
            locs = data[idx.to(data.device)]
        natural = pgm.prior_natural()
        natural["loc"] = natural["kappa"][:, None] * locs
        natural["scale"] = pgm.prior_scale_inv + natural["kappa"][:, None, None] * locs[:, :, None] * locs[:, None, :]
        natural["concentration"] = torch.ones_like(natural["concentration"])
        self.natural = natural
        return self

    def global_posterior(self):
        return self.pgm.global_posterior(self.natural)

    def log_responsibilities(self, y: torch.Tensor) -> torch.Tensor:
        """``log q(z_n = k)`` from ``E_q(θ)[log π_k + log N(y_n; μ_k, Λ_k⁻¹)]``, shape ``(N, K)``."""
        f = self.pgm.tied_factor(self.global_posterior())
        log_f = f.log_weight + y @ f.info_loc.T - 0.5 * torch.einsum("ni,kij,nj->nk", y, f.precision, y)
        return torch.log_softmax(log_f, -1)

    def natural_target(self, y: torch.Tensor, scale: float = 1.0):
        """The conjugate update ``λ*`` from a (mini)batch, its statistics scaled by ``scale = N / |B|``."""
        r = self.log_responsibilities(y).exp()
        stats = GaussianStats(r.sum(0), r.T @ y, torch.einsum("nk,ni,nj->kij", r, y, y))
        stats = GaussianStats(*(scale * s for s in stats))
        pgm = self.pgm
        return pgm._pack(pgm.prior_concentration + stats.count, conjugate_update(pgm.prior().natural_params, stats))

    @torch.no_grad()
    def step(self, y: torch.Tensor, scale: float = 1.0, natural_lr: float = 1.0):
        """``λ ← (1 - β) λ + β λ*``; ``β = 1`` on the full data is a coordinate-ascent sweep."""
        target = self.natural_target(y, scale)
        self.natural = {k: (1 - natural_lr) * v + natural_lr * target[k] for k, v in self.natural.items()}

    @torch.no_grad()
    def fit(self, data: torch.Tensor, iterations: int = 200, tol: float = 1e-8, generator=None):
        """Full-batch coordinate ascent until ``λ`` stops moving."""
        if self.natural is None:
            self.initialize(data, generator)
        for _ in range(iterations):
            before = self.natural
            self.step(data)
            change = max(float((self.natural[k] - before[k]).abs().max()) for k in before)
            if change < tol:
                break
        return self

    # ----- metrics ------------------------------------------------------------------

    def _components(self):
        params = self.pgm.point_estimate(self.global_posterior())
        return params.weights, dist.MultivariateNormal(params.locs, precision_matrix=params.precisions)

    @torch.no_grad()
    def test_mse(self, y, num_samples: int = 100) -> float:
        _, components = self._components()
        samples = components.sample((num_samples, len(y)))  # (S, N, K, D)
        return float(weighted_mse(y, self.log_responsibilities(y).exp(), samples))

    @torch.no_grad()
    def log_density(self, y) -> torch.Tensor:
        """``log Σ_k E[π_k] N(y; m_k, E[Λ_k]⁻¹)`` for ``y`` of shape ``(..., D)`` (exact, no sampling)."""
        weights, components = self._components()
        return torch.logsumexp(weights.log() + components.log_prob(y[..., None, :]), -1)

    @torch.no_grad()
    def test_log_likelihood(self, y) -> float:
        """The mean over points of :meth:`log_density`."""
        return float(self.log_density(y).mean())

    @torch.no_grad()
    def cluster(self, y) -> torch.Tensor:
        return self.log_responsibilities(y).argmax(-1)

    @torch.no_grad()
    def generate(self, num_samples: int):
        weights, components = self._components()
        z = dist.Categorical(weights).sample((num_samples,))
        return components.sample((num_samples,))[torch.arange(num_samples, device=z.device), z], z, weights

    @torch.no_grad()
    def impute(self, y, observed: torch.Tensor) -> torch.Tensor:
        """
        ``E[y_missing | y_observed]`` under the fitted mixture: each component's
        conditional Gaussian mean, weighted by responsibilities from the observed
        coordinates. ``observed`` is a boolean mask of shape ``(D,)``.
        """
        weights, components = self._components()
        cov = components.covariance_matrix  # (K, D, D)
        o, m = observed, ~observed
        cov_oo, cov_mo = cov[:, o][:, :, o], cov[:, m][:, :, o]
        loc_o, loc_m = components.loc[:, o], components.loc[:, m]
        marginal = dist.MultivariateNormal(loc_o, covariance_matrix=cov_oo)
        log_r = torch.log_softmax(weights.log() + marginal.log_prob(y[:, None, o]), -1)  # (N, K)
        gain = torch.linalg.solve(cov_oo, cov_mo.transpose(-1, -2)).transpose(-1, -2)  # (K, m, o)
        cond = loc_m + torch.einsum("kmo,nko->nkm", gain, y[:, None, o] - loc_o)
        result = y.clone()
        result[:, m] = (log_r.exp()[..., None] * cond).sum(1)
        return result


def bayesian_gmm(data: torch.Tensor, num_components: int, locs: torch.Tensor, iterations: int = 500) -> BayesianGMM:
    r"""
    A :class:`BayesianGMM` with scikit-learn's default, data-dependent prior (``m₀`` the
    data mean, ``κ₀ = 1``, ``W₀⁻¹`` the data covariance, ``ν₀ = D``, ``α₀ = 1 / K``), so
    that it does not depend on the data's units, started with its component means at
    ``locs`` and fitted by coordinate ascent. A ridge of ``10⁻⁶`` times the mean variance
    keeps ``W₀⁻¹`` positive definite when the data span fewer than ``D`` directions.

    :param data: shape ``(N, D)``.
    :param locs: the component means to start from, shape ``(K, D)``.
    """
    N, D = data.shape
    if N < 2:
        raise ValueError(f"need at least two points to fit a mixture, got {N}")
    if locs.shape != (num_components, D):
        raise ValueError(f"locs must have shape {(num_components, D)}, got {tuple(locs.shape)}")
    centred = data - data.mean(0)
    cov = centred.T @ centred / (N - 1)
    cov = 0.5 * (cov + cov.T)  # exactly symmetric in any precision
    cov = cov + 1e-6 * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(D, dtype=data.dtype, device=data.device)
    gmm = BayesianGMM(
        num_components, D, concentration=1.0 / num_components, loc=data.mean(0), kappa=1.0, scale_inv=cov, df=float(D)
    )
    gmm.pgm.to(data)
    return gmm.initialize(data, locs=locs.to(data)).fit(data, iterations)
