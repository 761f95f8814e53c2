"""
The classic models the regime families contain (pyro_sin.pgm.classic_regimes): EM against hmmlearn
from the same start, recovery of the parameters of sampled data, padding, and BIC.
"""

import itertools

import pytest
import torch
from torch.testing import assert_close

from pyro_sin.pgm.classic_regimes import AutoregressiveHMM, GaussianHMM, chain_counts, select_num_states


def sample_gaussian_hmm(N, T, generator, K=3, D=2, stay=0.9):
    """Sequences of a sticky Gaussian HMM with well-separated states, their states and its parameters."""
    locs = 4.0 * torch.randn(K, D, generator=generator)
    spread = 0.5 + torch.rand(K, 1, 1, generator=generator)
    tril = torch.linalg.cholesky(torch.eye(D) + 0.3 * torch.ones(D, D)) * spread
    transition = torch.full((K, K), (1 - stay) / (K - 1)) + (stay - (1 - stay) / (K - 1)) * torch.eye(K)
    z = [torch.randint(K, (N,), generator=generator)]
    for _ in range(1, T):
        z.append(torch.multinomial(transition[z[-1]], 1, generator=generator)[:, 0])
    z = torch.stack(z, 1)  # (N, T)
    y = locs[z] + (tril[z] @ torch.randn(N, T, D, 1, generator=generator))[..., 0]
    return y, z, (transition, locs, tril @ tril.transpose(-1, -2))


def matched(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The permutation of the estimate's states that brings them nearest the truth's (by their first axis)."""
    K = len(truth)
    best = min(itertools.permutations(range(K)), key=lambda p: (estimate[list(p)] - truth).abs().sum())
    return torch.tensor(best)


def test_em_is_hmmlearns_from_the_same_start():
    """hmmlearn's GaussianHMM (full covariances, no covariance prior) and ours, from one set of parameters."""
    hmm = pytest.importorskip("hmmlearn.hmm")
    y, _, _ = sample_gaussian_hmm(6, 50, torch.Generator().manual_seed(0))
    ours = GaussianHMM(3, iterations=1, min_covar=0.0).fit(y, generator=torch.Generator().manual_seed(1))
    theirs = hmm.GaussianHMM(3, "full", n_iter=10, tol=-float("inf"), init_params="", covars_prior=0.0)
    theirs.startprob_, theirs.transmat_ = ours.init_probs.numpy(), ours.transition_probs.numpy()
    theirs.means_, theirs.covars_ = ours.locs.numpy(), ours.covariances.numpy()
    frames = y.reshape(-1, 2).numpy()
    theirs.fit(frames, [50] * 6)
    for _ in range(10):
        marginals = ours.posterior(y)
        ours._chain_m_step(chain_counts(marginals))
        ours._m_step_emissions(y, marginals.marginals, None)
    assert_close(ours.locs, torch.as_tensor(theirs.means_), rtol=1e-9, atol=1e-9)
    assert_close(ours.covariances, torch.as_tensor(theirs.covars_), rtol=1e-9, atol=1e-9)
    assert_close(ours.transition_probs, torch.as_tensor(theirs.transmat_), rtol=1e-9, atol=1e-9)
    assert_close(ours.log_likelihood(y).sum(), torch.tensor(theirs.score(frames, [50] * 6)), rtol=1e-10, atol=0)


def test_em_recovers_a_sampled_gaussian_hmm():
    g = torch.Generator().manual_seed(0)
    y, z, (transition, locs, covariances) = sample_gaussian_hmm(20, 100, g)
    fit = GaussianHMM(3).fit(y, generator=g)
    order = matched(fit.locs, locs)
    assert_close(fit.locs[order], locs, atol=0.1, rtol=0)
    assert_close(fit.covariances[order], covariances, atol=0.15, rtol=0)
    assert_close(fit.transition_probs[order][:, order], transition, atol=0.03, rtol=0)
    # EM climbs: the likelihood never falls, and ends at least as high as the true parameters'
    assert all(b >= a - 1e-9 for a, b in zip(fit.history, fit.history[1:]))
    truth = GaussianHMM(3)
    truth.init_probs, truth.transition_probs = torch.full((3,), 1 / 3), transition
    truth.locs, truth.covariances = locs, covariances
    assert fit.log_likelihood(y).sum() >= truth.log_likelihood(y).sum()
    # and the states it reads off the data are the true ones
    assert (fit.state_probs(y).argmax(-1) == order.argsort()[z]).double().mean() > 0.99


@pytest.mark.parametrize("model", [GaussianHMM, AutoregressiveHMM])
def test_padding_changes_nothing(model):
    """Whatever the frames after each sequence's end hold, the fit and likelihoods are those of the cut sequences."""
    y, _, _ = sample_gaussian_hmm(4, 30, torch.Generator().manual_seed(0))
    lengths = torch.tensor([30, 12, 25, 7])
    exists = torch.arange(30) < lengths[:, None]  # (N, T)
    start = torch.softmax(torch.randn(4, 30, 3, generator=torch.Generator().manual_seed(1)), -1) * exists[..., None]
    fits = []
    for padding in (torch.nan, 1e6):
        padded = torch.where(exists[..., None], y, padding)
        fits.append(model(3, iterations=5, tol=-1.0).fit(padded, lengths, state_probs=start))
        cut = [padded[n : n + 1, : int(lengths[n])] for n in range(4)]
        per_sequence = torch.cat([fits[-1].log_likelihood(piece) for piece in cut])
        assert_close(fits[-1].log_likelihood(padded, lengths), per_sequence)
    assert_close(fits[0].covariances, fits[1].covariances)
    assert_close(fits[0].transition_probs, fits[1].transition_probs)
    assert torch.isfinite(fits[0].covariances).all()


def test_bic_chooses_the_true_number_of_states():
    y, _, _ = sample_gaussian_hmm(10, 100, torch.Generator().manual_seed(0))
    assert select_num_states(y, (2, 3, 4, 5), generator=torch.Generator().manual_seed(0)).num_states == 3


def test_autoregressive_em_recovers_the_regimes_dynamics():
    """Rotations in both senses at one place: no Gaussian HMM can tell them apart, the regressions do."""
    g = torch.Generator().manual_seed(0)
    N, T, angle = 10, 100, 0.3
    c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
    A = torch.stack([torch.tensor([[c, -s], [s, c]]), torch.tensor([[c, s], [-s, c]])])
    b = torch.tensor([[0.1, 0.0], [0.0, -0.1]])
    regime = torch.randint(2, (N,), generator=g)
    x, regimes = [3 * torch.randn(N, 2, generator=g)], [regime]
    for _ in range(1, T):
        regime = torch.where(torch.rand(N, generator=g) < 0.05, 1 - regime, regime)
        x.append((A[regime] @ x[-1][..., None])[..., 0] + b[regime] + 0.05 * torch.randn(N, 2, generator=g))
        regimes.append(regime)
    x, regimes = torch.stack(x, 1), torch.stack(regimes, 1)
    fit = AutoregressiveHMM(2).fit(x, generator=g)
    truth = torch.cat([A, b[..., None]], -1)
    order = matched(fit.transitions, truth)
    assert_close(fit.transitions[order], truth, atol=0.02, rtol=0)
    assert_close(fit.covariances[order], 0.05**2 * torch.eye(2).expand(2, 2, 2), atol=2e-3, rtol=0)
    inferred = fit.state_probs(x).argmax(-1)[:, 1:]
    assert (inferred == order.argsort()[regimes[:, 1:]]).double().mean() > 0.98
