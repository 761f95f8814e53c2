"""Imputation by conditioning on the observed features, and sample coverage, against dense or brute-force answers."""

import pytest
import torch
from torch import nn

import pyro.distributions as dist

from pyro_sin import evaluation
from pyro_sin.metrics import sample_coverage, sample_precision
from pyro_sin.models import DeepLatentMixture
from pyro_sin.nn import GaussianEncoder
from pyro_sin.pgm import GaussianMixture
from pyro_sin.pgm.mixture import BayesianGMM

from baselines import VAE


class LinearGaussianDecoder(nn.Module):
    """``y | x ~ N(W x + b, diag σ²)``: the data are then a Gaussian (mixture) with a dense closed form."""

    def __init__(self, W, b, sigma):
        super().__init__()
        self.W, self.b, self.sigma = W, b, sigma

    def distribution(self, x):
        loc = x @ self.W.T + self.b
        return dist.Normal(loc, self.sigma.expand(loc.shape)).to_event(1)


def dense_mixture_conditional(y, observed, weights, locs, covs):
    """``E[y_m | y_o]`` of a Gaussian mixture in ``y`` by dense linear algebra, one point at a time."""
    result = y.clone()
    for n in range(len(y)):
        o, m = observed[n], ~observed[n]
        log_r, means = [], []
        for w, mu, C in zip(weights, locs, covs):
            C_oo, C_mo = C[o][:, o], C[m][:, o]
            log_r.append(w.log() + dist.MultivariateNormal(mu[o], C_oo).log_prob(y[n, o]))
            means.append(mu[m] + C_mo @ torch.linalg.solve(C_oo, y[n, o] - mu[o]))
        r = torch.softmax(torch.stack(log_r), 0)
        result[n, m] = (r[:, None] * torch.stack(means)).sum(0)
    return result


def random_mask(N, P):
    """Each row has at least one observed and one missing feature."""
    observed = torch.rand(N, P) < 0.5
    observed[:, 0], observed[:, 1] = True, False
    return observed[:, torch.randperm(P)]


@pytest.mark.parametrize("with_proposal", [False, True])
def test_conditional_mean_matches_the_dense_gaussian_conditional(with_proposal):
    """A linear-Gaussian model: y ~ N(W m + b, W S Wᵀ + diag σ²), conditioned densely."""
    N, P, D = 6, 4, 2
    W, b, sigma = torch.randn(P, D), torch.randn(P), 0.3 + torch.rand(P)
    decoder = LinearGaussianDecoder(W, b, sigma)
    A = torch.randn(D, D)
    prior = dist.MultivariateNormal(torch.randn(D), A @ A.T + 0.5 * torch.eye(D))
    y = decoder.distribution(prior.sample((N,))).sample()
    observed = random_mask(N, P)
    cov = W @ prior.covariance_matrix @ W.T + torch.diag(sigma**2)
    exact = dense_mixture_conditional(y, observed, torch.ones(1), (W @ prior.loc + b)[None], cov[None])
    proposal = dist.Normal(torch.zeros(N, D), 3.0).to_event(1) if with_proposal else None
    hidden = y.masked_fill(~observed, 100.0)  # the missing values must play no part
    result = evaluation.conditional_mean(hidden, observed, decoder.distribution, prior, proposal, num_samples=40000)
    assert torch.equal(result.values[observed], y[observed])
    assert (result.ess > 1000).all()
    # self-normalised importance sampling: error of order (spread of y_m) / sqrt(ESS)
    tolerance = 6 * cov.diagonal().sqrt().max() / result.ess.min().sqrt()
    assert (result.values - exact).abs().max() < tolerance


def test_mixture_model_imputation_matches_the_dense_mixture_conditional():
    """DeepLatentMixture.impute with a linear decoder: the data are a Gaussian mixture, conditioned densely."""
    N, P, D, K = 8, 3, 2, 3
    W, b, sigma = torch.randn(P, D), torch.randn(P), 0.4 + torch.rand(P)
    decoder = LinearGaussianDecoder(W, b, sigma)
    gmm = GaussianMixture(K, D, concentration=1.0, init_loc_range=2.0)
    model = DeepLatentMixture(gmm, decoder, N)
    guide = model.make_guide(GaussianEncoder(P, D, (8,)))
    params = gmm.point_estimate(guide.global_posterior())
    components = gmm.components(params)
    locs = components.loc @ W.T + b
    covs = W @ components.covariance_matrix @ W.T + torch.diag(sigma**2)
    y = dist.MixtureSameFamily(dist.Categorical(params.weights), dist.MultivariateNormal(locs, covs)).sample((N,))
    observed = random_mask(N, P)
    exact = dense_mixture_conditional(y, observed, params.weights, locs, covs)
    result = model.impute(guide, y.masked_fill(~observed, 100.0), observed, num_samples=40000)
    tolerance = 6 * covs.diagonal(dim1=-2, dim2=-1).sqrt().max() / result.ess.min().sqrt()
    assert (result.values - exact).abs().max() < tolerance


def test_vae_imputation_matches_the_dense_gaussian_conditional():
    N, P, D = 5, 3, 2
    W, b, sigma = torch.randn(P, D), torch.randn(P), 0.4 + torch.rand(P)
    decoder = LinearGaussianDecoder(W, b, sigma)
    vae = VAE(GaussianEncoder(P, D, (8,)), decoder, N)
    cov = W @ W.T + torch.diag(sigma**2)
    y = dist.MultivariateNormal(b, cov).sample((N,))
    observed = torch.tensor([True, False, True])
    exact = dense_mixture_conditional(y, observed.expand(N, P), torch.ones(1), b[None], cov[None])
    result = vae.impute(y.masked_fill(~observed, 100.0), observed, num_samples=40000)
    tolerance = 6 * cov.diagonal().sqrt().max() / result.ess.min().sqrt()
    assert (result.values - exact).abs().max() < tolerance


def test_gmm_imputation_matches_quadrature_of_its_density():
    """BayesianGMM.impute against ∫ y_m p(y_o, y_m) dy_m / ∫ p(y_o, y_m) dy_m on a fine grid."""
    gmm = BayesianGMM(3, 2).initialize(torch.randn(50, 2) * 4, torch.Generator().manual_seed(1))
    gmm.fit(torch.randn(200, 2) * 4 + torch.tensor([2.0, -1.0]), iterations=20)
    y = torch.randn(5, 2) * 4
    imputed = gmm.impute(y, torch.tensor([True, False]))
    grid = torch.linspace(-60, 60, 24001)
    for n in range(len(y)):
        points = torch.stack([y[n, 0].expand_as(grid), grid], -1)
        weights = torch.softmax(gmm.log_density(points), 0)
        assert torch.allclose(imputed[n, 1], (weights * grid).sum(), atol=1e-6)
        assert imputed[n, 0] == y[n, 0]


def test_conditional_mean_rejects_bad_inputs():
    decoder = LinearGaussianDecoder(torch.randn(3, 2), torch.zeros(3), torch.ones(3))
    prior = dist.MultivariateNormal(torch.zeros(2), torch.eye(2))
    y = torch.randn(4, 3)
    with pytest.raises(TypeError, match="boolean"):
        evaluation.conditional_mean(y, torch.ones(3), decoder.distribution, prior)
    with pytest.raises(ValueError, match="observed must have shape"):
        evaluation.conditional_mean(y, torch.ones(2, dtype=torch.bool), decoder.distribution, prior)
    correlated = lambda x: dist.MultivariateNormal(x @ decoder.W.T, torch.eye(3))  # noqa: E731
    with pytest.raises(TypeError, match="factorises"):
        evaluation.conditional_mean(y, torch.ones(3, dtype=torch.bool), correlated, prior)


def test_sample_coverage_matches_a_brute_force_count():
    data, samples = torch.randn(300, 2) * 3, torch.randn(70, 2) * 3
    radius = 0.8
    count = sum(any(float(((d - s) ** 2).sum().sqrt()) <= radius for s in samples) for d in data)
    assert sample_coverage(data, samples, radius) == pytest.approx(count / len(data))
    assert sample_coverage(data, data, 1e-9) == 1.0
    with pytest.raises(ValueError, match="radius"):
        sample_coverage(data, samples, 0.0)


def test_sample_precision_matches_a_brute_force_count():
    data, samples = torch.randn(300, 2) * 3, torch.randn(70, 2) * 4
    radius = 0.8
    count = sum(any(float(((s - d) ** 2).sum().sqrt()) <= radius for d in data) for s in samples)
    assert sample_precision(data, samples, radius) == pytest.approx(count / len(samples))
    assert 0 < count < len(samples)  # the count is not trivially all or none
    # the two sides of one test: samples that all sit on data points are precise, not covering
    assert sample_precision(data, data[:5], 1e-9) == 1.0 and sample_coverage(data, data[:5], 1e-9) < 0.1
    assert sample_precision(data, torch.empty(0, 2)) == 0.0
    with pytest.raises(ValueError, match="radius"):
        sample_precision(data, samples, 0.0)
    with pytest.raises(ValueError, match="samples"):
        sample_precision(data, samples[:, :1])
