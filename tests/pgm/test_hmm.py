"""
The latent HMM's own mathematics: forward-backward against enumeration over all paths, Monte Carlo,
gradchecks, Pyro's estimators and learning. What every family must do (padding, checkpoints, bad
input, the full natural step, dtypes and devices) is checked by the conformance suite,
tests/test_conformance.py.
"""

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate

import pyro_sin
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import GaussianDecoder, GaussianEncoder, latent_scale, mirrored_autoencoder
from pyro_sin.pgm import LatentHMM
from pyro_sin.pgm.classic_regimes import GaussianHMM
from pyro_sin.pgm.hmm import HMMParams
from pyro_sin.potential import GaussianPotential
from pyro_sin.training import fit

from tests.helpers import random_spd
from tests.pgm.reference import hmm_paths
from tests.pgm.test_classic_regimes import sample_gaussian_hmm


def random_hmm(K=2, D=2):
    return LatentHMM(
        K,
        D,
        init_concentration=torch.rand(K) + 0.5,
        transition_concentration=torch.rand(K, K) + 0.5 + 3 * torch.eye(K),
        loc=torch.randn(K, D),
        kappa=torch.rand(K) + 0.5,
        scale_inv=random_spd((K,), D),
        df=D + 1.5,
        init_loc_range=2.0,
    )


def random_potential(B, T, D, lengths=None):
    return GaussianPotential(torch.randn(B, T, D), torch.rand(B, T, D) + 0.3, lengths)


def free_factor(hmm):
    params = {k: v for k, (v, _) in hmm.init_free_factor(hmm.init_natural()).items()}
    params["init_logits"] = torch.randn(hmm.num_states)
    params["transition_logits"] = torch.randn(hmm.num_states, hmm.num_states)
    return hmm.free_factor(params)


def factor_of(hmm, mode):
    return hmm.tied_factor(hmm.global_posterior(hmm.init_natural())) if mode == "tied" else free_factor(hmm)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("mode", ["tied", "free"])
def test_posterior_matches_brute_force_over_all_paths(mode, parallel, padded):
    hmm = random_hmm(K=2, D=2)
    hmm.parallel = parallel
    factor = factor_of(hmm, mode)
    lengths = torch.tensor([4, 2, 1]) if padded else None
    potential = random_potential(3, 4, 2, lengths)
    post = hmm.posterior(potential, factor)
    exact = hmm_paths(potential, factor, lengths)
    assert_close(post.log_normalizer, exact["log_z"])
    assert_close(post.state_probs, exact["marg"])
    assert_close(post.states.marginals.pair_marginals, exact["pair"])
    assert_close(post.transition_counts, exact["pair"].sum(1))
    assert_close(post.entropy(), exact["entropy"])
    stats = post.gaussian_stats()
    assert_close(stats.count, exact["count"])
    assert_close(stats.sum, exact["sum"])
    assert_close(stats.sum_outer, exact["outer"])


def test_samples_and_densities_match_the_closed_forms():
    hmm = random_hmm(K=3, D=2)
    post = hmm.posterior(random_potential(2, 3, 2), factor_of(hmm, "tied"))
    S = 50000
    z = post.sample_states((S,))
    x = post.emission_given(z).rsample()
    assert x.shape == (S, 2, 3, 2)
    log_q = post.log_prob(z, x)
    se = log_q.std(0) / S**0.5
    assert (((-log_q.mean(0)) - post.entropy()).abs() < 4 * se).all()
    # state frequencies per step and the mean of x
    freq = torch.nn.functional.one_hot(z, 3).double().mean(0)
    assert_close(freq, post.state_probs, atol=0.01, rtol=0)
    mean = (post.state_probs[..., None] * post.emission.loc).sum(-2)
    assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    # q(x) marginalises the paths: log q(x) = log Σ_z q(z, x)
    paths = torch.tensor(list(itertools.product(range(3), repeat=3)))  # (27, 3)
    x0 = x[:5]
    joint = post.log_prob(paths[:, None, None, :], x0[None])  # (27, 5, 2)
    assert_close(post.marginal_log_prob(x0), torch.logsumexp(joint, 0))


def test_tied_factor_is_the_expected_log_prior_along_a_path():
    """a_{z_1} + Σ A_{z_{t-1} z_t} + Σ log f_{z_t}(x_t) = E_q(θ)[log p(z, x | θ)], by Monte Carlo over θ."""
    hmm = random_hmm(K=2, D=2)
    q = hmm.global_posterior(hmm.init_natural())
    factor = hmm.tied_factor(q)
    z = torch.tensor([0, 1, 1])
    x = torch.randn(3, 2)
    em = factor.emission
    closed = factor.init_logits[z[0]] + factor.transition_logits[z[:-1], z[1:]].sum()
    quadratic = torch.einsum("ti,tij,tj->t", x, em.precision[z], x)
    closed = closed + (em.log_weight[z] + (em.info_loc[z] * x).sum(-1) - 0.5 * quadratic).sum()
    S = 200000
    pi = dist.Dirichlet(q.init_concentration).sample((S,))
    P = dist.Dirichlet(q.transition_concentration).sample((S,))
    locs, precisions = q.normal_wishart.rsample((S,))
    params = HMMParams(pi, P, locs, precisions)
    log_p = hmm.states_prior(params, 3).log_prob(z) + hmm.emission(params, z.expand(S, 3)).log_prob(x)
    assert_close(log_p.mean(), closed, atol=4 * (log_p.std() / S**0.5).item(), rtol=0)


def test_local_elbo_matches_monte_carlo():
    hmm = random_hmm(K=2, D=2)
    q = hmm.global_posterior(hmm.init_natural())
    post = hmm.posterior(random_potential(2, 4, 2, torch.tensor([4, 3])), factor_of(hmm, "free"))
    S = 100000
    z = post.sample_states((S,))
    x = post.emission_given(z).rsample()
    pi = dist.Dirichlet(q.init_concentration).sample((S,))[:, None]
    P = dist.Dirichlet(q.transition_concentration).sample((S,))[:, None]
    locs, precisions = q.normal_wishart.rsample((S,))
    params = HMMParams(pi, P, locs[:, None], precisions[:, None])
    lengths = post.lengths
    log_p = hmm.states_prior(params, 4, lengths).log_prob(z) + hmm.emission(params, z, lengths).log_prob(x)
    mc = log_p - post.log_prob(z, x)
    assert_close(hmm.local_elbo(q, post), mc.mean(0), atol=4 * (mc.std(0) / S**0.5).max().item(), rtol=0)


def test_model_marginal_density_is_the_sum_over_paths():
    hmm = random_hmm(K=2, D=2)
    q = hmm.global_posterior(hmm.init_natural())
    params = hmm.point_estimate(q)
    x = torch.randn(3, 2)
    paths = torch.tensor(list(itertools.product(range(2), repeat=3)))
    joint = hmm.states_prior(params, 3).log_prob(paths) + hmm.emission(params, paths).log_prob(x)
    assert_close(hmm.latent_log_prob(params, x), torch.logsumexp(joint, 0))


def test_closed_form_bound_passes_gradcheck():
    """The bound's closed form, differentiated twice through forward-backward, against finite differences."""
    hmm = random_hmm(K=2, D=2)
    q = hmm.global_posterior(hmm.init_natural())
    factor = factor_of(hmm, "tied")

    def local(h, log_j):
        return hmm.local_elbo(q, hmm.posterior(GaussianPotential(h, log_j.exp(), torch.tensor([3, 2])), factor))

    h = torch.randn(2, 3, 2, requires_grad=True)
    log_j = torch.randn(2, 3, 2, requires_grad=True)
    assert torch.autograd.gradcheck(local, (h, log_j))


def tiny_hmm_model(N=5, T=3, P=2, lengths=None):
    pyro.set_rng_seed(0)
    y = torch.randn(N, T, P)
    model = DeepLatentSequence(random_hmm(K=2, D=2), GaussianDecoder(2, P, (8,)), N)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)))
    return model, guide, y


def repeated(fn, n=5):
    values = torch.tensor([fn() for _ in range(n)])
    return values.mean(), values.std() / n**0.5


def test_sinelbo_agrees_with_pyro_estimators():
    """Trace_ELBO samples the paths; TraceEnum_ELBO enumerates all K^T of them in the guide."""
    model, guide, y = tiny_hmm_model()
    estimates = [
        repeated(lambda: pyro_sin.SINELBO(num_particles=2000).loss(model, guide, y)),
        repeated(lambda: pyro_sin.SINELBO(num_particles=500, decoder_estimator="enumerate").loss(model, guide, y)),
        repeated(
            lambda: Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(model, guide, y)
        ),
        repeated(
            lambda: TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(
                model, config_enumerate(guide), y
            )
        ),
    ]
    ours, ours_se = estimates[0]
    for other, other_se in estimates[1:]:
        assert abs(ours - other) < 4 * (ours_se**2 + other_se**2) ** 0.5 + 1e-3 * abs(other)


def test_sinelbo_agrees_with_trace_elbo_on_padded_sequences():
    model, guide, y = tiny_hmm_model(N=3, T=6)
    mask, L = torch.ones(3, 6), torch.tensor([6, 2, 4])
    mask[0, 2] = 0
    ours = repeated(lambda: pyro_sin.SINELBO(num_particles=1000).loss(model, guide, y, mask, L))
    elbo = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs = repeated(lambda: elbo.loss(model, guide, y, mask, L))
    assert abs(ours[0] - theirs[0]) < 4 * (ours[1] ** 2 + theirs[1] ** 2) ** 0.5 + 1e-3 * abs(theirs[0])


def synthetic_hmm(N, T, K=2, P=5, stay=0.9, radius=3.0, noise=0.3, generator=None):
    """Sticky states with Gaussian latents around a circle, seen through a random tanh layer."""
    g = generator
    angles = 2 * math.pi * torch.arange(K) / K
    means = radius * torch.stack([angles.cos(), angles.sin()], -1)
    trans = torch.full((K, K), (1 - stay) / (K - 1))
    trans.fill_diagonal_(stay)
    z = torch.empty(N, T, dtype=torch.long)
    z[:, 0] = torch.randint(K, (N,), generator=g)
    for t in range(1, T):
        z[:, t] = torch.multinomial(trans[z[:, t - 1]], 1, generator=g)[:, 0]
    x = means[z] + noise * torch.randn(N, T, 2, generator=g)
    W1, b1 = 0.5 * torch.randn(2, 8, generator=g), 0.5 * torch.randn(8, generator=g)
    y = torch.tanh(x @ W1 + b1) @ torch.randn(8, P, generator=g) + 0.1 * torch.randn(N, T, P, generator=g)
    return (y - y.mean((0, 1))) / y.std((0, 1)), z


@pytest.mark.parametrize("factor", ["tied", "free"])
def test_learning_segments_a_synthetic_hmm_beyond_any_per_frame_classifier(factor):
    """
    Two sticky states whose latent clouds overlap: no rule that reads one frame at a time
    beats the Bayes accuracy Φ(radius / noise) ≈ 0.933; the learned chain must use time.
    """
    radius, noise, stay = 1.5, 1.0, 0.95
    y, z = synthetic_hmm(60, 30, stay=stay, radius=radius, noise=noise, generator=torch.Generator().manual_seed(0))
    per_frame_bayes = 0.5 * (1 + math.erf(radius / noise / math.sqrt(2)))
    P = y.shape[-1]
    hmm = LatentHMM(2, 2, init_loc_range=3.0)
    scale = latent_scale(y.reshape(-1, P))
    mirrored, decoder = mirrored_autoencoder(P, 2, (20,), scale=scale)
    # confident potentials from the start (J = 4), mapping y as the mirrored encoder does
    encoder = GaussianEncoder(P, 2, (20,), init_precision=4.0, init_scale=scale)
    with torch.no_grad():
        encoder.shortcut.weight.copy_(mirrored.shortcut.weight * 4.0 / scale**2)
    model = DeepLatentSequence(hmm, decoder, len(y))
    guide = model.make_guide(encoder, factor=factor)

    def accuracy():
        pred = model.posterior(guide, y).state_probs.argmax(-1)
        return max((pred == k).eq(z == 0).double().mean().item() for k in range(2))

    before = accuracy()
    svi = SVI(model, guide, pyro_sin.NaturalAdam({"lr": 0.03}, natural_lr=0.1), pyro_sin.SINELBO(num_particles=4))
    fit(svi, y, iterations=150, batch_size=20, progress=False)
    assert before < per_frame_bayes < 0.96 < accuracy()
    # the learned chain is about as sticky as the true one
    transitions = hmm.point_estimate(guide.global_posterior()).transition_probs
    assert (transitions.diagonal() - stay).abs().max() < 0.06


def exact_encoder(y):
    """Potentials that pin x_t to y_t."""
    precision = torch.full_like(y, 1e8)
    return GaussianPotential(precision * y, precision)


def test_classic_start_is_the_gaussian_hmm_fitted_by_em():
    """With an encoder that passes the frames through, q(θ) starts on the Gaussian HMM that EM fits to them."""
    y, _, _ = sample_gaussian_hmm(20, 50, torch.Generator().manual_seed(0))
    hmm = LatentHMM(3, 2, kappa=0.01)  # (the default κ₀ = 0.5 pulls these means, 5-9 units out, noticeably)
    natural = hmm.encoded_start(exact_encoder, y, torch.Generator().manual_seed(0))
    classic = GaussianHMM(3).fit(y, generator=torch.Generator().manual_seed(0))
    params = hmm.point_estimate(hmm.global_posterior(natural))
    # the conjugate prior's pseudo-counts (ν₀ = 4.5, W₀⁻¹ = 2.5 I, one count per Dirichlet entry)
    # against some 300 frames a state
    assert_close(params.locs, classic.locs, atol=0.02, rtol=0)
    assert_close(torch.linalg.inv(params.precisions), classic.covariances, atol=0.05, rtol=0.02)
    assert_close(params.transition_probs, classic.transition_probs, atol=0.01, rtol=0)


class IdentityEncoder(torch.nn.Module):
    """Potentials ``N(x_t; y_t, σ² I)``: the exact posterior of the identity decoder's ``x_t`` alone."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise

    def forward(self, y):
        precision = torch.full_like(y, self.noise**-2)
        return GaussianPotential(precision * y, precision)


class IdentityDecoder(IdentityEncoder):
    def distribution(self, x):
        return dist.Normal(x, self.noise).to_event(1)


def test_from_its_classic_start_the_latent_hmm_with_identity_networks_has_the_gaussian_hmms_likelihood():
    """
    A latent HMM whose encoder and decoder are the identity (decoder noise σ = 0.01) contains the
    Gaussian HMM: from its classic start its held-out log-likelihood at step 0 is the EM fit's, to
    0.01 nats per frame. What separates them: σ² on every state's covariance (about 1e-4 nats per
    frame), the conjugate prior's pseudo-counts in the posterior means (about 1e-3) and the
    importance-sampling error of the estimate (below 1e-4 with the exact posterior as proposal).
    """
    g = torch.Generator().manual_seed(0)
    y, _, _ = sample_gaussian_hmm(40, 50, g)
    train, test = y[:30], y[30:]
    noise, encoder = 0.01, IdentityEncoder(0.01)
    hmm = LatentHMM(3, 2)
    model = DeepLatentSequence(hmm, IdentityDecoder(noise), len(train))
    guide = model.make_guide(encoder, init_natural=hmm.encoded_start(encoder, train, torch.Generator().manual_seed(0)))
    classic = GaussianHMM(3).fit(train, generator=torch.Generator().manual_seed(0))
    frames = test.shape[0] * test.shape[1]
    ours = model.log_likelihood(guide, test, num_samples=100).per_point.sum() / frames
    theirs = classic.log_likelihood(test).sum() / frames
    assert abs(ours - theirs) < 0.01


@torch.no_grad()
def test_states_in_use_are_read_off_the_expected_counts_of_the_natural_target():
    hmm = random_hmm(K=3)
    posterior = hmm.posterior(random_potential(4, 5, 2), factor_of(hmm, "tied"))
    natural = hmm.natural_target(posterior, 2.0)
    shares = posterior.state_probs.sum((0, 1)) / 20  # every step of every sequence counts
    ordered = shares.sort().values
    for k, min_share in enumerate([0.0, (ordered[0] + ordered[1]) / 2, (ordered[1] + ordered[2]) / 2]):
        assert hmm.in_use(natural, float(min_share)) == 3 - k
    assert hmm.in_use(hmm.prior_natural()) == 3  # nothing assigned yet


def test_training_with_selection_never_ends_below_the_classic_start():
    """fit(select=...) on a held-out bound keeps the start unless a later checkpoint scores higher on it."""
    y, _, _ = sample_gaussian_hmm(12, 40, torch.Generator().manual_seed(0))
    train, heldout = y[:10], y[10:]
    hmm = LatentHMM(3, 2)
    encoder, decoder = mirrored_autoencoder(2, 2, (8,), scale=latent_scale(train.reshape(-1, 2)))
    model = DeepLatentSequence(hmm, decoder, len(train))
    guide = model.make_guide(encoder, init_natural=hmm.encoded_start(encoder, train, torch.Generator().manual_seed(0)))
    elbo = pyro_sin.SINELBO(num_particles=20)

    def heldout_bound():
        with torch.random.fork_rng():  # the same draws at every evaluation, training's stream untouched
            torch.manual_seed(1)
            return {"bound": -elbo.loss(model, guide, heldout)}

    svi = SVI(model, guide, pyro_sin.NaturalAdam({"lr": 0.05}, natural_lr=0.5), pyro_sin.SINELBO())
    history = fit(
        svi, train, iterations=20, batch_size=5, evaluate=heldout_bound, eval_every=5, select="bound", progress=False
    )
    start, best = history.evals[0]["bound"], max(e["bound"] for e in history.evals)
    assert heldout_bound()["bound"] == pytest.approx(best) and best >= start
    assert history.selected_step in history.eval_steps
