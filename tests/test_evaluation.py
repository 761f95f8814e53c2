import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import pyro.distributions as dist

from pyro_sin import evaluation
from pyro_sin.models import DeepLatentMixture, DeepLatentSequence, frame_likelihood
from pyro_sin.nn import GaussianEncoder, SequenceEncoder, make_decoder
from pyro_sin.pgm import GaussianMixture, LinearDynamicalSystem


class LinearGaussianDecoder(nn.Module):
    """``y | x ~ N(W x + b, σ² I)``: closed forms for every evaluation quantity."""

    def __init__(self, W, b, sigma):
        super().__init__()
        self.W, self.b, self.sigma = W, b, sigma

    def distribution(self, x):
        loc = x @ self.W.T + self.b
        return dist.Normal(loc, self.sigma * torch.ones_like(loc)).to_event(1)


class UserBernoulliDecoder(nn.Module):
    """A user's own decoder: ``forward`` gives logits, ``distribution`` the likelihood."""

    def __init__(self, latent_dim, data_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 8), nn.Tanh(), nn.Linear(8, data_dim))

    def forward(self, x):
        return self.net(x)

    def distribution(self, x):
        return dist.Bernoulli(logits=self(x)).to_event(1)


def linear_gaussian(P=3, D=2, sigma=0.7):
    return LinearGaussianDecoder(torch.randn(P, D), torch.randn(P), sigma)


def assert_within(estimate, exact, stderr, sigmas=5.0):
    """Monte Carlo estimates lie within a few of their own standard errors of the truth."""
    z = (estimate - exact) / stderr
    assert z.abs().max() < sigmas, f"largest |z| = {z.abs().max():.2f}"


# ----- the generic functions -----------------------------------------------------------


def test_reconstruction_error_matches_the_closed_form_per_component():
    r"""E‖y - (Wx + b)‖² under x ~ N(m, S) is ‖y - Wm - b‖² + tr(W S Wᵀ)."""
    decoder, N, K, D = linear_gaussian(), 6, 3, 2
    y = 2 * torch.randn(N, 3)
    loc, A = torch.randn(N, K, D), 0.5 * torch.randn(N, K, D, D)
    cov = A @ A.transpose(-1, -2) + 0.1 * torch.eye(D)
    weights = torch.softmax(torch.randn(N, K), -1)
    latent = dist.MultivariateNormal(loc, cov)
    estimate = evaluation.reconstruction_error(decoder, y, latent, weights, num_samples=4000)
    W, b = decoder.W, decoder.b
    exact_k = (y[:, None] - loc @ W.T - b).pow(2).sum(-1) + torch.einsum("pi,nkij,pj->nk", W, cov, W)
    exact = (weights * exact_k).sum(-1)
    assert_within(estimate.per_point, exact, estimate.mc_stderr)
    assert estimate.per_point.shape == (N,) and estimate.mean == pytest.approx(float(estimate.per_point.mean()))
    assert estimate.stderr == pytest.approx(float(estimate.per_point.std() / math.sqrt(N)))
    # one component, no weights: the same formula with r = 1
    one_component = dist.MultivariateNormal(loc[:, 0], cov[:, 0])
    single = evaluation.reconstruction_error(decoder, y, one_component, num_samples=4000)
    assert_within(single.per_point, exact_k[:, 0], single.mc_stderr)


def test_reconstruction_error_of_sequences_sums_over_frames():
    decoder, B, T, D = linear_gaussian(), 4, 5, 2
    y = torch.randn(B, T, 3)
    loc = torch.randn(B, T, D)
    latent = dist.Normal(loc, 0.3).to_event(2)  # batch (B,), event (T, D)
    estimate = evaluation.reconstruction_error(decoder, y, latent, num_samples=4000)
    W, b = decoder.W, decoder.b
    exact = (y - loc @ W.T - b).pow(2).sum((-1, -2)) + T * 0.09 * W.pow(2).sum()
    assert_within(estimate.per_point, exact, estimate.mc_stderr)


def test_reconstruction_error_rejects_mismatched_shapes():
    decoder, y = linear_gaussian(), torch.randn(4, 3)
    per_component = dist.MultivariateNormal(torch.zeros(4, 2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="weights"):
        evaluation.reconstruction_error(decoder, y, per_component)
    with pytest.raises(ValueError, match="weights must have shape"):
        evaluation.reconstruction_error(decoder, y, per_component, torch.ones(4, 3) / 3)
    with pytest.raises(ValueError, match="N = 5"):
        evaluation.reconstruction_error(decoder, torch.randn(5, 3), per_component, torch.ones(4, 2) / 2)


def test_evaluation_runs_in_chunks_of_samples(monkeypatch):
    decoder, y = linear_gaussian(), torch.randn(4, 3)
    latent = dist.MultivariateNormal(torch.randn(4, 2), torch.eye(2))
    prior = dist.MultivariateNormal(torch.zeros(2), torch.eye(2))
    sizes = []
    chunks = lambda x: sizes.append(x.shape[0]) or decoder.distribution(x)  # noqa: E731
    counting = type("Counting", (), {"distribution": staticmethod(chunks)})()
    monkeypatch.setattr(evaluation, "MAX_ELEMENTS", 3 * y.numel())
    evaluation.reconstruction_error(counting, y, latent, num_samples=10)
    assert sizes == [3, 3, 3, 1]
    sizes.clear()
    evaluation.log_likelihood(y, chunks, prior.log_prob, latent, num_samples=7)
    assert sizes == [3, 3, 1]


def conjugate_problem(N=5, P=3, D=2, sigma=0.7):
    """``x ~ N(0, I)``, ``y = W x + b + σ ε``: ``p(y)`` and ``p(x | y)`` in closed form."""
    decoder = linear_gaussian(P, D, sigma)
    W, b = decoder.W, decoder.b
    marginal = dist.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(P))
    y = marginal.sample((N,))
    post_precision = torch.eye(D) + W.T @ W / sigma**2
    post_cov = torch.linalg.inv(post_precision)
    post_loc = (y - b) @ W @ post_cov.T / sigma**2
    prior = dist.MultivariateNormal(torch.zeros(D), torch.eye(D))
    return decoder, y, marginal.log_prob(y), dist.MultivariateNormal(post_loc, post_cov), prior


def test_log_likelihood_is_exact_with_the_exact_posterior():
    decoder, y, exact, posterior, prior = conjugate_problem()
    estimate = evaluation.log_likelihood(y, decoder.distribution, prior.log_prob, posterior, num_samples=7)
    assert_close(estimate.per_point, exact)
    assert_close(estimate.mc_stderr, torch.zeros_like(exact), atol=1e-6, rtol=0)
    assert estimate.mean == pytest.approx(float(exact.mean()))


def test_log_likelihood_monte_carlo_error_is_calibrated():
    """With a broader proposal the estimates scatter by about their reported standard error."""
    decoder, y, exact, posterior, prior = conjugate_problem(N=1)
    broad = dist.MultivariateNormal(posterior.loc.expand(2000, 2), 1.5 * posterior.covariance_matrix)
    repeats = y.expand(2000, 3)  # 2000 independent estimates of the same log p(y)
    estimate = evaluation.log_likelihood(repeats, decoder.distribution, prior.log_prob, broad, num_samples=200)
    spread = estimate.per_point.std()
    assert 0.8 < float(estimate.mc_stderr.mean() / spread) < 1.2
    assert abs(estimate.mean - float(exact)) < 5 * float(spread) / math.sqrt(2000) + float(spread**2)  # + the bias
    assert estimate.stderr == pytest.approx(float(spread / math.sqrt(2000)))


def test_log_likelihood_rejects_a_proposal_of_the_wrong_batch():
    decoder, y, _, posterior, prior = conjugate_problem()
    with pytest.raises(ValueError, match="batch shape"):
        evaluation.log_likelihood(y[:3], decoder.distribution, prior.log_prob, posterior, 5)


def test_generate_draws_from_the_chosen_components():
    decoder = linear_gaussian(sigma=0.1)
    components = dist.MultivariateNormal(torch.tensor([[-5.0, 0.0], [5.0, 5.0]]), 0.01 * torch.eye(2))
    ids = torch.tensor([0, 1, 1, 0, 1])
    samples = evaluation.generate(decoder, torch.tensor([0.5, 0.5]), components, component_ids=ids)
    assert torch.equal(samples.components, ids)
    assert_close(samples.latent, components.mean[ids], atol=0.5, rtol=0)
    assert_close(samples.mean, decoder.distribution(samples.latent).mean)
    assert_close(samples.draw, samples.mean, atol=0.6, rtol=0)
    drawn = evaluation.generate(decoder, torch.tensor([0.2, 0.8]), components, num_samples=4000)
    assert drawn.mean.shape == (4000, 3) and drawn.latent.shape == (4000, 2)
    assert abs(float((drawn.components == 1).double().mean()) - 0.8) < 0.03
    with pytest.raises(ValueError, match="exactly one"):
        evaluation.generate(decoder, torch.tensor([0.5, 0.5]), components)
    with pytest.raises(ValueError, match="component_ids"):
        evaluation.generate(decoder, torch.tensor([0.5, 0.5]), components, component_ids=torch.tensor([2]))


# ----- the models' evaluation methods, for any likelihood --------------------------------


def mixture_model(decoder, data_dim, latent_dim=2, K=3, N=12):
    gmm = GaussianMixture(K, latent_dim, concentration=1.0, init_loc_range=2.0)
    model = DeepLatentMixture(gmm, decoder, N)
    guide = model.make_guide(GaussianEncoder(data_dim, latent_dim, (8,)))
    return model, guide


@pytest.mark.parametrize("decoder", ["user_bernoulli", "bernoulli", "poisson", "gaussian"])
def test_mixture_evaluation_works_for_any_decoder(decoder):
    """``test_mse`` and friends once assumed ``decoder(x)`` returns ``(loc, scale)``."""
    P, D, N = 5, 2, 12
    if decoder == "user_bernoulli":
        decoder = UserBernoulliDecoder(D, P)
    else:
        decoder = make_decoder(decoder, D, P, (8,))
    model, guide = mixture_model(decoder, P, D, N=N)
    y = torch.poisson(torch.full((N, P), 0.4)).clamp(max=1)  # binary counts suit all three
    assert math.isfinite(model.test_mse(guide, y, 10))
    assert math.isfinite(model.test_log_likelihood(guide, y, 10))
    assert model.cluster(guide, y).shape == (N,)
    means, z, weights = model.generate(guide, 6)
    assert means.shape == (6, P) and z.shape == (6,) and weights.shape == (3,)
    draws, _, _ = model.generate(guide, component_ids=torch.tensor([0, 2]), draw=True)
    assert draws.shape == (2, P) and decoder.distribution(torch.zeros(2, D)).support.check(draws).all()
    probs, recon = model.reconstruct(guide, y, 4)
    assert probs.shape == (N, 3) and recon.shape == (4, N, 3, P)
    assert model.component_means(guide).shape == (3, P)


def test_mixture_reconstruction_error_is_the_weighted_closed_form():
    decoder, P = linear_gaussian(), 3
    model, guide = mixture_model(decoder, P)
    y = 2 * torch.randn(12, P)
    estimate = model.reconstruction_error(guide, y, 4000)
    with torch.no_grad():
        post = guide.local_posterior(y)
    W, b = decoder.W, decoder.b
    per_k = (y[:, None] - post.loc @ W.T - b).pow(2).sum(-1) + torch.einsum("pi,nkij,pj->nk", W, post.covariance, W)
    assert_within(estimate.per_point, (post.probs * per_k).sum(-1), estimate.mc_stderr)
    assert model.test_mse(guide, y, 10) == pytest.approx(
        float((post.probs * per_k).sum(-1).mean()), rel=0.1
    )


def test_mixture_log_likelihood_of_a_bernoulli_model_matches_quadrature():
    """A one-dimensional latent: ``log Σ_k π_k ∫ N(x; μ_k, Λ_k⁻¹) Π_d Bern(y_d | x) dx`` on a grid."""
    P, N = 4, 6
    decoder = make_decoder("bernoulli", 1, P, (8,), init_scale=2.0)
    model, guide = mixture_model(decoder, P, latent_dim=1, K=2, N=N)
    y = torch.randint(0, 2, (N, P)).double()
    estimate = model.log_likelihood(guide, y, 3000)
    params = model.pgm.point_estimate(guide.global_posterior())
    grid = torch.linspace(-15, 15, 6001)[:, None]
    log_prior = model.pgm.latent_log_prob(params, grid)  # (G,)
    log_lik = decoder.distribution(grid[:, None, :]).log_prob(y)  # (G, N)
    exact = torch.logsumexp(log_prior[:, None] + log_lik, 0) + math.log(grid[1, 0] - grid[0, 0])
    assert_within(estimate.per_point, exact, estimate.mc_stderr)
    assert (estimate.mc_stderr > 0).all() and (estimate.mc_stderr < 0.1).all()


def test_frame_likelihood_uses_the_decoders_distribution_and_mask():
    decoder = UserBernoulliDecoder(2, 3)
    x, y = torch.randn(4, 5, 2), torch.randint(0, 2, (4, 5, 3)).double()
    mask = torch.rand(4, 5) < 0.6
    frames = frame_likelihood(decoder, x, mask)
    expected = (dist.Bernoulli(logits=decoder(x)).log_prob(y).sum(-1) * mask).sum(-1)
    assert_close(frames.log_prob(y), expected)
    assert_close(frame_likelihood(decoder, x).log_prob(y), dist.Bernoulli(logits=decoder(x)).log_prob(y).sum((-1, -2)))


def test_lds_evaluation_works_for_a_bernoulli_decoder():
    P, D, B, T = 3, 2, 4, 6
    decoder = UserBernoulliDecoder(D, P)
    model = DeepLatentSequence(LinearDynamicalSystem(D), decoder, B)
    guide = model.make_guide(SequenceEncoder(P, D, (8,), rnn_dim=4))
    y = torch.randint(0, 2, (B, T, P)).double()
    estimate = model.log_likelihood(guide, y, 20)
    assert estimate.per_point.shape == (B,) and torch.isfinite(estimate.per_point).all()
    assert model.test_log_likelihood(guide, y, 20) < 0
    assert model.decode_posterior(guide, y, num_samples=5).shape == (B, T, P)
    assert model.predict(guide, y, 3, num_samples=5).shape == (B, 3, P)
