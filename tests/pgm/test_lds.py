"""
The linear dynamical system's own mathematics: Kalman smoothing against dense Gaussian algebra,
Monte Carlo, Pyro's estimators, padded priors and forecasts. What every family must do (padding,
checkpoints, bad input, the full natural step, dtypes and devices) is checked by the conformance
suite, tests/test_conformance.py.
"""

import math

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO

import pyro_sin
from pyro_sin.distributions import GaussianChain
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import LinearDynamicalSystem
from pyro_sin.pgm.lds import ChainPosterior
from pyro_sin.potential import GaussianPotential

from tests.pgm.reference import chain_joint


def random_lds(D=2):
    A = torch.randn(D + 1, D + 1)
    return LinearDynamicalSystem(
        D,
        transition_loc=torch.cat([0.9 * torch.eye(D), 0.3 * torch.ones(D, 1)], -1),
        col_precision=A @ A.T / D + torch.eye(D + 1),
        init_loc=torch.randn(D),
    )


def random_potential(B, T, D):
    return GaussianPotential(torch.randn(B, T, D), torch.rand(B, T, D) + 0.3)


def dense_chain(post):
    """The joint Gaussian of x_{1:T} of each sequence assembled densely: log Z, mean, covariance."""
    joints = [chain_joint(post.init[(b,)], post.trans[(b,)], post.num_steps) for b in range(post.batch_shape[0])]
    return tuple(torch.stack(part) for part in zip(*joints))


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("factor_mode", ["tied", "free"])
def test_kalman_moments_match_dense_gaussian_algebra(parallel, factor_mode):
    lds = random_lds()
    q = lds.global_posterior(lds.init_natural())
    if factor_mode == "tied":
        factor = lds.tied_factor(q)
    else:
        factor = lds.free_factor({k: v for k, (v, _) in lds.init_free_factor(lds.init_natural()).items()})
    B, T, D = 3, 6, 2
    post = ChainPosterior(random_potential(B, T, D), factor, parallel)
    log_z, mean, cov = dense_chain(post)
    assert_close(post.log_normalizer, log_z)
    assert_close(post.marginal_means(), mean)
    second = cov + mean.reshape(B, -1)[:, :, None] * mean.reshape(B, -1)[:, None, :]
    m = post.moments
    for t in range(1, T):
        block = second[:, (t - 1) * D : (t + 1) * D, (t - 1) * D : (t + 1) * D]
        assert_close(m.pair_second[:, t - 1], block)
    assert_close(m.init_second, second[:, :D, :D])
    assert_close(post.entropy(), 0.5 * torch.logdet(2 * math.pi * math.e * cov))
    x = torch.randn(4, B, T, D)
    dense = dist.MultivariateNormal(mean.reshape(B, -1), covariance_matrix=cov)
    assert_close(post.log_prob(x), dense.log_prob(x.reshape(4, B, -1)))


def test_parallel_scan_and_sequential_filter_agree_with_gradients():
    lds = random_lds()
    factor = lds.tied_factor(lds.global_posterior(lds.init_natural()))
    h = torch.randn(2, 9, 2, requires_grad=True)
    J = (torch.rand(2, 9, 2) + 0.3).requires_grad_()
    results = []
    for parallel in (True, False):
        post = ChainPosterior(GaussianPotential(h, J), factor, parallel)
        value = post.log_normalizer.sum() + post.entropy().sum() + post.regression_stats().cross.sum()
        results.append((value, torch.autograd.grad(value, [h, J])))
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1][0], results[1][1][0])
    assert_close(results[0][1][1], results[1][1][1])


def test_ffbs_samples_match_the_dense_posterior():
    lds = random_lds()
    factor = lds.tied_factor(lds.global_posterior(lds.init_natural()))
    post = ChainPosterior(random_potential(2, 5, 2), factor)
    _, mean, cov = dense_chain(post)
    x = post.rsample((100000,)).reshape(100000, 2, -1)
    assert_close(x.mean(0), mean.reshape(2, -1), atol=0.02, rtol=0)
    emp = torch.einsum("sbi,sbj->bij", x - x.mean(0), x - x.mean(0)) / len(x)
    assert_close(emp, cov, atol=0.02, rtol=0.02)


def test_missing_frames_have_no_evidence():
    lds = random_lds()
    factor = lds.tied_factor(lds.global_posterior(lds.init_natural()))
    pot = random_potential(1, 5, 2)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])[None, :, None]
    masked = GaussianPotential(pot.info_vec * mask, pot.precision * mask).validate()
    post = ChainPosterior(masked, factor)
    log_z, mean, _ = dense_chain(post)
    assert_close(post.marginal_means(), mean)


def test_tied_factor_is_the_expected_log_transition_density():
    lds = random_lds()
    natural = lds.init_natural()
    q = lds.global_posterior(natural)
    trans = lds.tied_factor(q).trans
    B, prec = q.matrix_normal_wishart.rsample((200000,))
    v = torch.randn(3, 4)  # (x_{t-1}, x_t) pairs
    x_prev, x_next = v[:, :2], v[:, 2:]
    mean = (B[:, None, :, :2] @ x_prev[None, :, :, None])[..., 0] + B[:, None, :, 2]
    mc = dist.MultivariateNormal(mean, precision_matrix=prec[:, None]).log_prob(x_next).mean(0)
    assert_close(trans.log_density(v), mc, rtol=0.01, atol=0.02)


def test_local_elbo_matches_monte_carlo():
    lds = random_lds()
    q = lds.global_posterior(lds.init_natural())
    factor = lds.free_factor({k: v for k, (v, _) in lds.init_free_factor(lds.init_natural()).items()})
    post = ChainPosterior(random_potential(2, 4, 2), factor)
    S = 100000
    x = post.rsample((S,))
    B, prec = q.matrix_normal_wishart.rsample((S,))
    params = pyro_sin.pgm.lds.LDSParams(B[:, None], prec[:, None])
    log_p = lds.chain(params, 4).log_prob(x)
    mc = (log_p - post.log_prob(x)).mean(0)
    assert_close(lds.local_elbo(q, post), mc, rtol=0.01, atol=0.05)


def test_gaussian_chain_density_and_samples():
    D, T = 2, 4
    chain = GaussianChain(torch.randn(D), torch.eye(D) * 2, 0.8 * torch.eye(D), torch.ones(D), torch.eye(D) * 4, T)
    x = chain.rsample((100000,))
    # dense joint: x = L⁻¹ (μ + noise) with the chain's lower-triangular structure
    A = torch.eye(T * D)
    for t in range(1, T):
        A[t * D : (t + 1) * D, (t - 1) * D : t * D] = -chain.transition_matrix
    shift = torch.cat([chain.init_loc] + [chain.transition_bias] * (T - 1))
    noise_cov = torch.block_diag(
        torch.linalg.inv(chain.init_precision), *[torch.linalg.inv(chain.noise_precision)] * (T - 1)
    )
    A_inv = torch.linalg.inv(A)
    joint = dist.MultivariateNormal(A_inv @ shift, covariance_matrix=A_inv @ noise_cov @ A_inv.T)
    assert_close(chain.log_prob(x[:5]), joint.log_prob(x[:5].reshape(5, -1)))
    assert_close(x.reshape(len(x), -1).mean(0), joint.mean, atol=0.03, rtol=0)
    assert_close(chain.mean.reshape(-1), joint.mean)


def tiny_lds_model(N=8, T=6, Dy=3, D=2):
    pyro.set_rng_seed(0)
    y = torch.randn(N, T, Dy)
    lds = LinearDynamicalSystem(D)
    dec, enc = GaussianDecoder(D, Dy, (8,)), GaussianEncoder(Dy, D, (8,))

    def model(y, idx=None):
        pyro.module("decoder", dec)
        params = lds.sample_params()
        with pyro.plate("sequences", N, subsample=idx):
            x = lds.sample_latent(params, T)
            loc, scale = dec(x)
            pyro.sample("y", dist.Normal(loc, scale).to_event(2), obs=y)

    guide = pyro_sin.SINGuide(
        model, lds, enc, create_plates=lambda y, idx=None: pyro.plate("sequences", N, subsample=idx)
    )
    return model, guide, y


def test_sinelbo_agrees_with_trace_elbo_on_the_lds():
    model, guide, y = tiny_lds_model()
    idx = torch.arange(4)
    ours = torch.tensor([pyro_sin.SINELBO(num_particles=1000).loss(model, guide, y[idx], idx) for _ in range(5)])
    elbo = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs = torch.tensor([elbo.loss(model, guide, y[idx], idx) for _ in range(5)])
    se = (ours.var() / 5 + theirs.var() / 5).sqrt()
    assert abs(ours.mean() - theirs.mean()) < 4 * se + 1e-3 * abs(theirs.mean())


def test_sin_with_a_bidirectional_rnn_encoder_and_missing_frames():
    """A recurrent encoder still emits one potential per step; masked frames carry no evidence."""
    from pyro_sin.models import DeepLatentSequence
    from pyro_sin.nn import SequenceEncoder

    pyro.set_rng_seed(0)
    y = torch.randn(6, 7, 3)
    mask = torch.ones(6, 7)
    mask[:, 2:4] = 0
    lds = LinearDynamicalSystem(2)
    model = DeepLatentSequence(lds, GaussianDecoder(2, 3, (8,)), 6)
    guide = model.make_guide(SequenceEncoder(3, 2, (8,), rnn_dim=4))
    potential = guide.encode((y, mask))
    assert potential.info_vec.shape == (6, 7, 2)
    assert (potential.precision[:, 2:4] == 0).all() and (potential.precision[:, 4:] > 0).all()
    loss = pyro_sin.SINELBO(num_particles=3).loss(model, guide, y, mask)
    assert math.isfinite(loss)


@pytest.mark.parametrize("seed", range(4))
def test_guide_sets_up_on_long_sequences_whose_prior_draws_diverge(seed):
    """T = 10,000: about half of the prior's dynamics draws overflow float64 over the sequence."""
    from pyro_sin.models import DeepLatentSequence

    T = 10_000
    y = torch.randn(2, T, 3)
    lds = LinearDynamicalSystem(2)
    model = DeepLatentSequence(lds, GaussianDecoder(2, 3, (4,)), 2)
    guide = model.make_guide(GaussianEncoder(3, 2, (4,)))
    pyro.set_rng_seed(seed)
    assert math.isfinite(pyro_sin.SINELBO(max_plate_nesting=1).loss(model, guide, y))


def ragged_batch(lengths, T, P):
    """Sequences padded to T with arbitrary values, missing frames inside two of them."""
    y = torch.randn(len(lengths), T, P) * 3
    mask = torch.ones(len(lengths), T)
    mask[0, 5:8] = 0  # inside the first sequence
    mask[-1, lengths[-1] - 1] = 0  # the last frame of the last sequence: still a step
    return y, mask, torch.tensor(lengths)


def test_padded_gaussian_chain_is_the_chain_of_each_sequence():
    lds = random_lds()
    params = pyro_sin.pgm.lds.LDSParams(lds.prior_transition_loc, 4 * torch.eye(2))
    L = torch.tensor([5, 1, 3])
    chain = lds.chain(params, 6, L)
    x = chain.rsample((4,))
    assert (x[:, torch.arange(6) >= L[:, None]] == 0).all()
    assert (chain.mean[torch.arange(6) >= L[:, None]] == 0).all()
    x = torch.randn(4, 3, 6, 2)
    for i, n in enumerate(L.tolist()):
        assert_close(chain.log_prob(x)[:, i], lds.chain(params, n).log_prob(x[:, i, :n]))
    with pytest.raises(ValueError, match="lengths"):
        lds.chain(params, 6, torch.tensor([7])).log_prob(x)


@pytest.mark.parametrize("closed_form", [True, False])
def test_predict_continues_each_padded_sequence_from_its_own_end(closed_form):
    from pyro_sin.models import DeepLatentSequence

    lengths, T, P, D = [9, 4], 12, 3, 2
    y, _, L = ragged_batch(lengths, T, P)
    y = y + 10 * torch.arange(T)[:, None] / T  # frames drift away from zero, so ends differ
    lds = random_lds(D)
    model = DeepLatentSequence(lds, GaussianDecoder(D, P, (8,)), len(lengths))
    concentrated = {k: 1000 * v for k, v in lds.prior_natural().items()}  # q(θ) near a point
    guide = model.make_guide(GaussianEncoder(P, D, (8,)), init_natural=concentrated)
    S, tolerance = 4000, 1e-10 if closed_form else 0.06
    padded = model.predict(guide, y, 2, S, lengths=L, closed_form=closed_form)
    for i, n in enumerate(lengths):
        alone = model.predict(guide, y[i : i + 1, :n], 2, S, closed_form=closed_form)[0]
        assert_close(padded[i], alone, rtol=0, atol=tolerance)
    # from the end of the padding instead, the prediction is far off
    assert (padded[1] - model.predict(guide, y[1:2], 2, S, closed_form=closed_form)[0]).abs().max() > 0.5


def test_sinelbo_agrees_with_trace_elbo_on_padded_sequences():
    """Pyro's own estimator sees the padded model and guide densities: the same bound."""
    from pyro_sin.models import DeepLatentSequence

    y, mask, L = ragged_batch([6, 2, 4], 8, 3)
    model = DeepLatentSequence(random_lds(), GaussianDecoder(2, 3, (8,)), 3)
    guide = model.make_guide(GaussianEncoder(3, 2, (8,)))
    ours = torch.tensor([pyro_sin.SINELBO(num_particles=1000).loss(model, guide, y, mask, L) for _ in range(5)])
    elbo = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs = torch.tensor([elbo.loss(model, guide, y, mask, L) for _ in range(5)])
    se = (ours.var() / 5 + theirs.var() / 5).sqrt()
    assert abs(ours.mean() - theirs.mean()) < 4 * se + 1e-3 * abs(theirs.mean())
