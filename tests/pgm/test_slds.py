"""
The switching LDS's own mathematics: the mean-field blocks against dense algebra and enumeration,
gradchecks, Monte Carlo, Pyro's estimators and learning. What every family must do (padding,
checkpoints, bad input, the full natural step, dtypes and devices) is checked by the conformance
suite, tests/test_conformance.py.
"""

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Predictive, Trace_ELBO

import pyro_sin
from pyro_sin.distributions import GaussianChain
from pyro_sin.metrics import clustering_scores
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import GaussianDecoder, GaussianEncoder, latent_scale, mirrored_autoencoder
from pyro_sin.pgm import SLDSParams, SLDSPosterior, SwitchingLDS
from pyro_sin.potential import GaussianPotential
from pyro_sin.training import fit

from tests.helpers import random_spd


def random_slds(K=2, D=2, **kwargs):
    return SwitchingLDS(
        K,
        D,
        init_concentration=torch.rand(K) + 0.5,
        transition_concentration=torch.rand(K, K) + 0.5 + 3 * torch.eye(K),
        init_loc=torch.randn(D),
        transition_loc=torch.cat([0.9 * torch.eye(D).expand(K, D, D), torch.randn(K, D, 1)], -1),
        col_precision=random_spd((K,), D + 1),
        scale_inv=random_spd((K,), D, 0.3),
        df=D + 1.5,
        init_transition_noise=0.3,
        **kwargs,
    )


def random_potential(B, T, D, lengths=None):
    return GaussianPotential(torch.randn(B, T, D), torch.rand(B, T, D) + 0.3, lengths)


def free_factor(slds):
    params = {k: v for k, (v, _) in slds.init_free_factor(slds.init_natural()).items()}
    params["init_logits"] = torch.randn(slds.num_states)
    params["transition_logits"] = torch.randn(slds.num_states, slds.num_states)
    return slds.free_factor(params)


def factor_of(slds, mode):
    return slds.tied_factor(slds.global_posterior(slds.init_natural())) if mode == "tied" else free_factor(slds)


def dense_chain(potential, factor, pair_weights, b, L):
    """
    The Gaussian over x_{1:L} of sequence b with the factor f_0(x_1) Π_t Σ_k w_tk g_k(x_{t-1}, x_t) and
    the potentials, assembled densely: (log Z, mean (L, D), covariance (LD, LD)).
    """
    h, J = potential.info_vec[b], potential.precision[b]
    D = h.shape[-1]
    n = L * D
    P, eta = torch.diag(J[:L].reshape(-1)), h[:L].reshape(-1).clone()
    c = factor.init.log_normalizer.clone()
    P[:D, :D] += factor.init.precision
    eta[:D] += factor.init.info_vec
    g = factor.dynamics
    for t in range(1, L):
        w = pair_weights[t - 1]
        s = slice((t - 1) * D, (t + 1) * D)
        P[s, s] += torch.einsum("k,kij->ij", w, g.precision)
        eta[s] += w @ g.info_vec
        c = c + w @ g.log_normalizer
    cov = torch.linalg.inv(P)
    mean = cov @ eta
    log_z = c + 0.5 * eta @ mean + 0.5 * n * math.log(2 * math.pi) - 0.5 * torch.logdet(P)
    return log_z, mean.reshape(L, D), cov


def pair_moments(mean, cov, t, D):
    """E[(x_{t-1}, x_t)] and its second moment from the dense joint (t >= 1, 0-based)."""
    s = slice((t - 1) * D, (t + 1) * D)
    m = mean.reshape(-1)[s]
    return m, cov[s, s] + torch.outer(m, m)


def expected_log_g(g, m, second):
    return g.log_normalizer + g.info_vec @ m - 0.5 * (g.precision * second).sum((-1, -2))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mode", ["tied", "free"])
def test_continuous_block_matches_dense_gaussian_algebra(mode, padded):
    slds = random_slds(K=3, D=2)
    factor = factor_of(slds, mode)
    B, T, D = 3, 5, 2
    lengths = torch.tensor([5, 2, 1]) if padded else None
    potential = random_potential(B, T, D, lengths)
    post = slds.posterior(potential, factor)
    probs = torch.softmax(torch.randn(B, T, 3), -1)
    block = post.continuous_block(probs)
    mean_hat, cov_hat = block.marginal_means(), block.marginal_covariances()
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        log_z, mean, cov = dense_chain(potential, factor, probs[b, 1:], b, L)
        assert_close(block.log_normalizer[b], log_z)
        assert_close(mean_hat[b, :L], mean)
        for t in range(L):
            assert_close(cov_hat[b, t], cov[t * D : (t + 1) * D, t * D : (t + 1) * D])
        for t in range(1, L):
            m, second = pair_moments(mean, cov, t, D)
            assert_close(block.moments.pair_mean[b, t - 1], m)
            assert_close(block.moments.pair_second[b, t - 1], second)
        assert_close(block.entropy()[b], 0.5 * torch.logdet(2 * math.pi * math.e * cov))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mode", ["tied", "free"])
def test_discrete_block_matches_enumeration_over_regime_paths(mode, padded):
    """q(z) ∝ exp(a_{z_1} + Σ A + Σ_t E_q(x)[log g_{z_t}]) over all K^L paths, q(x) from dense algebra."""
    K, B, T, D = 3, 3, 4, 2
    slds = random_slds(K=K, D=D)
    factor = factor_of(slds, mode)
    lengths = torch.tensor([4, 3, 1]) if padded else None
    potential = random_potential(B, T, D, lengths)
    post = slds.posterior(potential, factor)
    probs = torch.softmax(torch.randn(B, T, K), -1)
    states = post.discrete_block(post.continuous_block(probs))
    marginals = states.marginals
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        _, mean, cov = dense_chain(potential, factor, probs[b, 1:], b, L)
        evidence = torch.zeros(L, K)
        for t in range(1, L):
            m, second = pair_moments(mean, cov, t, D)
            for k in range(K):
                evidence[t, k] = expected_log_g(factor.dynamics[(k,)], m, second)
        paths = list(itertools.product(range(K), repeat=L))
        logits = torch.stack(
            [
                factor.init_logits[z[0]]
                + sum(factor.transition_logits[z[t - 1], z[t]] + evidence[t, z[t]] for t in range(1, L))
                for z in paths
            ]
        )
        log_z = torch.logsumexp(logits, 0)
        p = (logits - log_z).exp()
        marg, pair = torch.zeros(L, K), torch.zeros(max(L - 1, 0), K, K)
        for weight, z in zip(p, paths):
            for t in range(L):
                marg[t, z[t]] += weight
            for t in range(1, L):
                pair[t - 1, z[t - 1], z[t]] += weight
        assert_close(marginals.log_normalizer[b], log_z)
        assert_close(marginals.marginals[b, :L], marg)
        assert_close(marginals.pair_marginals[b, : L - 1], pair)
        assert_close(states.entropy()[b], -(p * p.log()).sum())
    if padded:
        assert (post.state_probs[lengths[:, None] <= torch.arange(T)] == 0).all()


def brute_force_log_normalizer(potential, factor, b):
    """log Z of the SIN target of sequence b: a dense Gaussian integral per regime path, summed over paths."""
    K = factor.init_logits.shape[-1]
    T = potential.info_vec.shape[-2]
    terms = []
    for z in itertools.product(range(K), repeat=T):
        weights = torch.nn.functional.one_hot(torch.tensor(z[1:]), K).double()
        log_z, _, _ = dense_chain(potential, factor, weights, b, T)
        chain = factor.init_logits[z[0]] + sum(factor.transition_logits[z[t - 1], z[t]] for t in range(1, T))
        terms.append(chain + log_z)
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("mode", ["tied", "free"])
def test_sweeps_raise_a_lower_bound_on_the_exact_normaliser_to_a_fixed_point(mode):
    K, B, T, D = 2, 2, 4, 2
    slds = random_slds(K=K, D=D)
    factor = factor_of(slds, mode)
    potential = random_potential(B, T, D)
    exact = torch.stack([brute_force_log_normalizer(potential, factor, b) for b in range(B)])
    bounds = []
    for sweeps in (1, 2, 4, 30):
        slds.num_sweeps = sweeps
        bounds.append(slds.posterior(potential, factor).sin_bound())
    bounds = torch.stack(bounds)
    assert (bounds[1:] >= bounds[:-1] - 1e-10).all()  # coordinate ascent
    assert (bounds <= exact + 1e-10).all()
    # at the fixed point each block is the exact update given the other
    post = slds.posterior(potential, factor)
    again = post.discrete_block(post.continuous_block(post.state_probs))
    assert_close(again.marginals.marginals, post.state_probs, atol=1e-8, rtol=0)


def test_one_regime_is_the_exact_lds_posterior():
    """With K = 1 the mean field is exact: the bound is log Z and q(x) the Kalman smoother's."""
    slds = random_slds(K=1, D=2, num_sweeps=1)
    factor = factor_of(slds, "tied")
    potential = random_potential(2, 4, 2)
    post = slds.posterior(potential, factor)
    for b in range(2):
        log_z, mean, _ = dense_chain(potential, factor, torch.ones(3, 1), b, 4)
        assert_close(post.sin_bound()[b], log_z)
        assert_close(post.marginal_means()[b], mean)


@pytest.mark.parametrize("mode", ["tied", "free"])
def test_unrolled_gradient_passes_gradcheck(mode):
    slds = random_slds(K=2, D=2, num_sweeps=3)
    q = slds.global_posterior(slds.init_natural())
    factor = factor_of(slds, mode)

    def local(h, log_j):
        post = slds.posterior(GaussianPotential(h, log_j.exp(), torch.tensor([3, 2])), factor)
        return slds.local_elbo(q, post)

    h = torch.randn(2, 3, 2, requires_grad=True)
    log_j = torch.randn(2, 3, 2, requires_grad=True)
    assert torch.autograd.gradcheck(local, (h, log_j))


def test_implicit_and_unrolled_gradients_agree_at_the_fixed_point():
    """Converged sweeps: the unrolled gradient and the implicit one (no graph of earlier sweeps) coincide."""
    slds = random_slds(K=3, D=2, num_sweeps=30)
    q = slds.global_posterior(slds.init_natural())
    params = {k: v.requires_grad_() for k, (v, _) in slds.init_free_factor(slds.init_natural()).items()}
    h = torch.randn(2, 6, 2, requires_grad=True)
    J = (torch.rand(2, 6, 2) + 0.3).requires_grad_()
    grads = []
    for gradient in ("unrolled", "implicit"):
        slds.gradient = gradient
        post = slds.posterior(GaussianPotential(h, J), slds.free_factor(params))
        value = slds.local_elbo(q, post).sum()
        grads.append(torch.autograd.grad(value, [h, J] + list(params.values())))
    for unrolled, implicit in zip(*grads):
        assert_close(implicit, unrolled, atol=1e-7, rtol=1e-6)
    # without the adjoint (the last sweep alone) the gradient is measurably different
    post = SLDSPosterior(GaussianPotential(h, J), slds.free_factor(params), 30, "implicit", adjoint_iterations=0)
    last_only = torch.autograd.grad(slds.local_elbo(q, post).sum(), [h])[0]
    assert (last_only - grads[0][0]).norm() > 1e-3 * grads[0][0].norm()


def test_local_elbo_matches_monte_carlo():
    """E_q(θ) E_q(z) q(x) [log p(z, x | θ) - log q(z) q(x)] by sampling θ, z and x."""
    slds = random_slds(K=2, D=2)
    q = slds.global_posterior(slds.init_natural())
    lengths = torch.tensor([5, 3])
    post = slds.posterior(random_potential(2, 5, 2, lengths), factor_of(slds, "free"))
    S = 100000
    z = post.sample_states((S,))
    x = post.rsample((S,))
    mnw = q.matrix_normal_wishart
    transitions, noise_precisions = mnw.rsample((S,))
    params = SLDSParams(
        dist.Dirichlet(q.init_concentration).sample((S,))[:, None],
        dist.Dirichlet(q.transition_concentration).sample((S,))[:, None],
        transitions[:, None],
        noise_precisions[:, None],
    )
    log_p = slds.states_prior(params, 5, lengths).log_prob(z) + slds.dynamics(params, z, lengths).log_prob(x)
    mc = log_p - post.log_prob(z, x)
    with torch.no_grad():
        closed = slds.local_elbo(q, post)
    assert_close(closed, mc.mean(0), atol=4 * (mc.std(0) / S**0.5).max().item(), rtol=0)


def test_model_densities_sum_over_paths_and_reduce_to_the_lds():
    slds = random_slds(K=2, D=2)
    params = slds.point_estimate(slds.global_posterior(slds.init_natural()))
    x = torch.randn(2, 4, 2)
    paths = torch.tensor(list(itertools.product(range(2), repeat=4)))  # (16, 4)
    joint = slds.states_prior(params, 4).log_prob(paths[:, None]) + slds.dynamics(params, paths[:, None]).log_prob(x)
    assert_close(slds.latent_log_prob(params, x), torch.logsumexp(joint, 0))
    # a path that stays in regime k is an LDS with regime k's dynamics
    D = 2
    for k in range(2):
        lds = GaussianChain(
            slds.init_loc,
            slds.init_precision,
            params.transitions[k, :, :D],
            params.transitions[k, :, D],
            params.noise_precisions[k],
            4,
        )
        assert_close(slds.dynamics(params, torch.full((4,), k)).log_prob(x), lds.log_prob(x))
    # samples of x | z have the chain's moments
    z = torch.tensor([0, 1, 1, 0])
    draws = slds.dynamics(params, z).sample((40000,))
    B = params.transitions[z[1:]]
    mean = [slds.init_loc]
    for t in range(3):
        mean.append(B[t, :, :D] @ mean[-1] + B[t, :, D])
    assert_close(draws.mean(0), torch.stack(mean), atol=0.05, rtol=0)


def test_rollout_and_continued_paths_follow_the_dynamics():
    slds = random_slds(K=2, D=2)
    D = 2
    params = SLDSParams(
        torch.tensor([0.5, 0.5]),
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),  # regimes alternate
        torch.randn(2, D, D + 1) * 0.5,
        1e12 * torch.eye(D).expand(2, D, D),  # no noise
    )
    x0 = torch.randn(3, D)
    states, x = slds.rollout(params, torch.tensor([0, 1, 0]), x0, 4)
    assert (states == torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]])).all()
    expected = x0
    for t in range(4):
        B = params.transitions[states[:, t]]
        expected = (B[..., :D] @ expected[..., None])[..., 0] + B[..., D]
        assert_close(x[:, t], expected, atol=1e-5, rtol=0)
    # a forecast continues from each padded sequence's own end
    post = slds.posterior(random_potential(2, 6, D, torch.tensor([6, 3])), factor_of(slds, "tied"))
    states, x = slds.continue_paths(params, post, 5, (7,))
    assert states.shape == (7, 2, 5) and x.shape == (7, 2, 5, D)


def tiny_slds_model(N=4, T=4, P=3, K=2, factor="tied"):
    pyro.set_rng_seed(0)
    y = torch.randn(N, T, P)
    model = DeepLatentSequence(random_slds(K=K, D=2), GaussianDecoder(2, P, (8,)), N)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)), factor=factor)
    return model, guide, y


def repeated(fn, n=5):
    values = torch.tensor([fn() for _ in range(n)])
    return values.mean(), values.std() / n**0.5


@pytest.mark.parametrize("padded", [False, True])
def test_sinelbo_agrees_with_trace_elbo(padded):
    """Trace_ELBO samples θ, the regime paths and x from the same guide: the same bound, with more variance."""
    model, guide, y = tiny_slds_model(N=3, T=5)
    args = (y, None, None)
    if padded:
        mask = torch.ones(3, 5)
        mask[0, 2] = 0
        args = (y, mask, torch.tensor([5, 2, 4]))
    ours = repeated(lambda: pyro_sin.SINELBO(num_particles=1000).loss(model, guide, *args))
    elbo = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs = repeated(lambda: elbo.loss(model, guide, *args))
    assert abs(ours[0] - theirs[0]) < 4 * (ours[1] ** 2 + theirs[1] ** 2) ** 0.5 + 1e-3 * abs(theirs[0])


def test_predictive_samples_the_model_and_the_guide():
    model, guide, y = tiny_slds_model(N=3, T=5)
    prior = Predictive(model, num_samples=4)(y)
    assert prior["x_states"].shape == (4, 3, 5) and prior["x"].shape == (4, 3, 5, 2)
    assert prior["x_transitions"].shape == (4, 1, 2, 2, 3)
    posterior = Predictive(model, guide=guide, num_samples=4)(y)
    assert posterior["x"].shape == (4, 3, 5, 2) and posterior["y"].shape == (4, 3, 5, 3)


class ConstantDecoder(torch.nn.Module):
    """``p(y_t | x_t)`` that ignores ``x_t``: the bound's Monte Carlo term becomes exact."""

    def __init__(self, P):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.randn(P))

    def distribution(self, x):
        shape = x.shape[:-1] + self.loc.shape
        return dist.Normal(self.loc.expand(shape), torch.ones(shape)).to_event(1)


def test_sinelbo_adds_no_score_function_for_the_decoupled_regimes():
    """The decoder reads x alone, drawn independently of z: the encoder's gradient is exact, not sampled."""
    P = 3
    y = torch.randn(4, 6, P)
    # regimes close together, so that q(z) is far from deterministic
    model = DeepLatentSequence(SwitchingLDS(2, 2, init_transition_noise=0.05), ConstantDecoder(P), 4)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)))
    paths = [pyro.poutine.trace(guide).get_trace(y).nodes["x_states"]["value"] for _ in range(2)]
    assert (paths[0] != paths[1]).any()
    grads = []
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        pyro_sin.SINELBO(num_particles=1).loss_and_grads(model, guide, y)
        grads.append([p.grad.clone() for p in guide.encoder.parameters()])
        guide.zero_grad()
    for a, b in zip(*grads):
        assert_close(a, b)


def switching_drifts(N, T, speed=0.3, stay=0.9, generator=None):
    """A 1-D walk that drifts up in regime 1 and down in regime 0, regimes sticky, observed with noise."""
    g = generator
    z = torch.empty(N, T, dtype=torch.long)
    z[:, 0] = torch.randint(2, (N,), generator=g)
    flips = torch.rand(N, T, generator=g) > stay
    for t in range(1, T):
        z[:, t] = torch.where(flips[:, t], 1 - z[:, t - 1], z[:, t - 1])
    x = (speed * (2 * z - 1) + 0.05 * torch.randn(N, T, generator=g)).cumsum(-1)
    y = (x - x.mean(-1, keepdim=True))[..., None] + 0.1 * torch.randn(N, T, 1, generator=g)
    return y / y.std(), z


def test_learning_segments_a_two_regime_switching_system():
    """
    The regime is the direction of motion, which no single frame shows (a per-frame rule is at chance):
    the learned switching dynamics must segment the sequences by time.
    """
    y, z = switching_drifts(30, 30, generator=torch.Generator().manual_seed(0))
    slds = SwitchingLDS(2, 1, transition_concentration=1 + 10 * torch.eye(2), num_sweeps=3)
    # confident potentials from the start: posterior std 0.1 data units
    encoder, decoder = mirrored_autoencoder(1, 1, (16,), scale=latent_scale(y.reshape(-1, 1)), posterior_scale=0.1)
    model = DeepLatentSequence(slds, decoder, len(y))
    guide = model.make_guide(encoder)

    def accuracy():
        with torch.no_grad():
            pred = model.posterior(guide, y).state_probs.argmax(-1)
        return clustering_scores(z.reshape(-1), pred.reshape(-1))["accuracy"]

    before = accuracy()
    svi = SVI(model, guide, pyro_sin.NaturalAdam({"lr": 0.02}, natural_lr=0.2), pyro_sin.SINELBO())
    fit(svi, y, iterations=40, batch_size=15, progress=False)
    assert before < 0.6 and accuracy() > 0.9
    # one regime drifts up, the other down
    drifts = slds.point_estimate(guide.global_posterior()).transitions[:, 0, 1]
    assert drifts.min() < 0 < drifts.max()


def test_slds_start_from_encoded_sequences_recovers_the_regimes_dynamics():
    """
    With an encoder that sees the states exactly, the classic start (the autoregressive HMM fitted
    by EM) finds each regime's (A_k, b_k), its noise and how often the regimes switch.
    """
    g = torch.Generator().manual_seed(0)
    N, T, D, angle, noise = 20, 40, 2, 0.3, 0.01
    c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
    rotations = torch.stack([torch.tensor([[c, -s], [s, c]]), torch.tensor([[c, s], [-s, c]])])  # both senses
    drifts = torch.tensor([[0.2, 0.0], [0.0, -0.2]])
    regime = torch.randint(2, (N,), generator=g)
    x = [torch.randn(N, D, generator=g)]
    for t in range(1, T):
        regime = torch.where(torch.rand(N, generator=g) < 0.1, 1 - regime, regime)  # sticky switches
        x.append(
            (rotations[regime] @ x[-1][..., None])[..., 0] + drifts[regime] + noise * torch.randn(N, D, generator=g)
        )
    x = torch.stack(x, 1)  # (N, T, D)

    def exact_encoder(y):
        precision = torch.full_like(y, 1e8)
        return GaussianPotential(precision * y, precision)

    slds = SwitchingLDS(2, D)
    natural = slds.encoded_start(exact_encoder, x, torch.Generator().manual_seed(0))
    params = slds.point_estimate(slds.global_posterior(natural))
    truth = torch.cat([rotations, drifts[..., None]], -1)
    error = min((params.transitions - truth[list(order)]).abs().max() for order in ([0, 1], [1, 0]))
    assert error < 0.02
    # the regimes switch about once in ten steps
    assert_close(params.transition_probs.diagonal(), torch.full((2,), 0.9), atol=0.05, rtol=0)
    # E[Λ_k]⁻¹: the noise variance 1e-4, with the prior's pseudo-scatter W₀⁻¹ = 0.4 I over some 400 pairs
    noise_variance = torch.linalg.inv(params.noise_precisions).diagonal(dim1=-2, dim2=-1)
    assert (noise_variance < 2e-3).all()


@torch.no_grad()
def test_regimes_in_use_are_read_off_the_expected_counts_of_the_natural_target():
    slds = random_slds(K=3)
    posterior = slds.posterior(random_potential(4, 5, 2), factor_of(slds, "tied"))
    natural = slds.natural_target(posterior, 2.0)
    shares = posterior.state_probs[:, 1:].sum((0, 1)) / 16  # the regimes' dynamics count the transitions
    ordered = shares.sort().values
    for k, min_share in enumerate([0.0, (ordered[0] + ordered[1]) / 2, (ordered[1] + ordered[2]) / 2]):
        assert slds.in_use(natural, float(min_share)) == 3 - k
    assert slds.in_use(slds.prior_natural()) == 3  # nothing assigned yet
