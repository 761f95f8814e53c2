"""
The demonstration family: one Gaussian latent per data point under a Normal-Wishart prior. What
every family must do is checked by the conformance suite, tests/test_conformance.py.
"""

import math

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.models import data_plate
from pyro_sin.nn import GaussianEncoder
from pyro_sin.pgm import LatentGaussian
from pyro_sin.potential import GaussianPotential
from pyro_sin.training import fit

from tests.helpers import random_spd


def random_gaussian(D=2):
    return LatentGaussian(D, loc=torch.randn(D), kappa=0.5 + torch.rand(()), scale_inv=random_spd((), D), df=D + 1.5)


def random_potential(B, D):
    return GaussianPotential(torch.randn(B, D) * 2, torch.rand(B, D) + 0.3)


def random_free_factor(prior):
    D = prior.latent_dim
    A = torch.randn(D, D)
    tril = torch.linalg.cholesky(A @ A.T + 0.5 * torch.eye(D))
    return prior.free_factor({"loc": 2 * torch.randn(D), "precision_tril": tril})


def a_posterior_of_theta(prior):
    """``q(θ)`` away from the prior: the conjugate update from a few encoded points."""
    post = prior.posterior(random_potential(5, prior.latent_dim), random_free_factor(prior))
    return prior.global_posterior(prior.natural_target(post, scale=2.0))


class LinearDecoder(torch.nn.Module):
    """``y ~ N(W x + b, diag σ²)``."""

    def __init__(self, latent_dim, data_dim):
        super().__init__()
        self.linear = torch.nn.Linear(latent_dim, data_dim)
        self.log_scale = torch.nn.Parameter(torch.zeros(data_dim))

    def distribution(self, x):
        return dist.Normal(self.linear(x), self.log_scale.exp()).to_event(1)


def deep_latent_gaussian(prior, decoder, encoder, num_data, factor="tied"):
    """A model with the decoder on the latent Gaussian, and its SIN guide."""

    def model(y, indices=None):
        pyro.module("decoder", decoder)
        params = prior.sample_params()
        with data_plate(num_data, y, indices):
            x = prior.sample_latent(params)
            pyro.sample("y", decoder.distribution(x), obs=y)

    plates = lambda y, indices=None: data_plate(num_data, y, indices)  # noqa: E731
    guide = SINGuide(model, prior, encoder, factor=factor, create_plates=plates)
    return model, guide


@pytest.mark.parametrize("mode", ["tied", "free"])
def test_posterior_is_the_dense_product_of_potential_and_factor(mode):
    prior = random_gaussian(3)
    factor = prior.tied_factor(a_posterior_of_theta(prior)) if mode == "tied" else random_free_factor(prior)
    potential = random_potential(4, 3)
    post = prior.posterior(potential, factor)
    # N_info(h + η, J + P̃) and log Z = log ∫ f ψ = c + ½ bᵀ(J + P̃)⁻¹b + ½ D log 2π - ½ log|J + P̃|, by dense algebra
    c, P, eta = (part[0] for part in factor)
    precision = torch.diag_embed(potential.precision) + P
    info = potential.info_vec + eta
    cov = torch.linalg.inv(precision)
    mean = (cov @ info[..., None])[..., 0]
    log_z = c + 0.5 * (info * mean).sum(-1) + 1.5 * math.log(2 * math.pi) - 0.5 * torch.logdet(precision)
    assert_close(post.loc[:, 0], mean)
    assert_close(post.covariance[:, 0], cov)
    assert_close(post.log_normalizer, log_z)
    assert_close(prior.local_entropy(post), dist.MultivariateNormal(mean, cov).entropy())


def test_tied_factor_is_the_expected_log_prior_pointwise():
    prior = random_gaussian(2)
    q = a_posterior_of_theta(prior)
    c, P, eta = (part[0] for part in prior.tied_factor(q))
    x = torch.randn(5, 2) * 3
    mu, lam = q.normal_wishart.rsample((200000,))
    log_p = dist.MultivariateNormal(mu[:, None], precision_matrix=lam[:, None]).log_prob(x)  # (S, 5)
    assert_close(c + x @ eta - 0.5 * torch.einsum("ni,ij,nj->n", x, P, x), log_p.mean(0), rtol=0.01, atol=0.02)


def test_local_elbo_matches_monte_carlo():
    prior = random_gaussian(2)
    q = a_posterior_of_theta(prior)
    post = prior.posterior(random_potential(3, 2), random_free_factor(prior))
    S = 200000
    mu, lam = q.normal_wishart.rsample((S,))
    local = dist.MultivariateNormal(post.loc[:, 0], scale_tril=post.scale_tril[:, 0])
    x = local.sample((S,))  # (S, B, D)
    log_p = dist.MultivariateNormal(mu[:, None], precision_matrix=lam[:, None]).log_prob(x)
    assert_close(prior.local_elbo(q, post), (log_p - local.log_prob(x)).mean(0), rtol=0.01, atol=0.03)


def test_model_sites_have_the_declared_distributions():
    prior = LatentGaussian(3)

    def model():
        params = prior.sample_params()
        with pyro.plate("data", 5):
            return prior.sample_latent(params)

    trace = pyro.poutine.trace(model).get_trace()
    assert set(prior.global_sites + prior.local_sites) <= set(trace.nodes)
    assert trace.nodes["x_precision"]["value"].shape == (3, 3) and trace.nodes["x_loc"]["value"].shape == (3,)
    assert trace.nodes["x"]["value"].shape == (5, 3)
    assert prior.in_use(prior.init_natural()) is None  # a single Gaussian has no units to count


@pytest.mark.parametrize("factor", ["tied", "free"])
def test_sinelbo_agrees_with_trace_elbo(factor):
    """Pyro's own estimator sees the model and the SIN guide as ordinary sites: the same bound."""
    pyro.set_rng_seed(0)
    N, P, D = 6, 3, 2
    model, guide = deep_latent_gaussian(random_gaussian(D), LinearDecoder(D, P), GaussianEncoder(P, D, (8,)), N, factor)
    y = torch.randn(N, P)
    ours = torch.tensor([SINELBO(num_particles=1000).loss(model, guide, y) for _ in range(5)])
    elbo = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs = torch.tensor([elbo.loss(model, guide, y) for _ in range(5)])
    se = (ours.var() / 5 + theirs.var() / 5).sqrt()
    assert abs(ours.mean() - theirs.mean()) < 4 * se + 1e-3 * abs(theirs.mean())


def test_training_recovers_the_mean_and_covariance_of_gaussian_data_through_a_linear_decoder():
    pyro.set_rng_seed(0)
    N, P, D = 500, 3, 2
    mixing = torch.tensor([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7]])
    x = torch.tensor([2.0, -1.0]) + torch.randn(N, D) @ torch.tensor([[1.0, 0.0], [0.6, 0.5]]).T
    y = x @ mixing.T + torch.tensor([0.5, 0.0, -1.0]) + 0.1 * torch.randn(N, P)
    prior, decoder = LatentGaussian(D), LinearDecoder(D, P)
    model, guide = deep_latent_gaussian(prior, decoder, GaussianEncoder(P, D, ()), N)
    svi = SVI(model, guide, NaturalAdam({"lr": 0.02}, natural_lr=0.1), SINELBO(num_particles=2))
    fit(svi, y, iterations=1500, batch_size=100, progress=False)
    # the learned generative model's y = W x + b + ε with x ~ N(E[μ], E[Λ]⁻¹)
    params = prior.point_estimate(guide.global_posterior())
    with torch.no_grad():
        W, b, scale = decoder.linear.weight, decoder.linear.bias, decoder.log_scale.exp()
        mean = W @ params.loc + b
        cov = W @ torch.linalg.inv(params.precision) @ W.T + torch.diag(scale**2)
    centred = y - y.mean(0)
    assert_close(mean, y.mean(0), rtol=0, atol=0.15)
    assert_close(cov, centred.T @ centred / N, rtol=0, atol=0.1)
