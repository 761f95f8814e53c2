import itertools

import pytest
import torch
from torch.testing import assert_close

from pyro_sin.distributions.markov_chain import MarkovChain
from pyro_sin.ops.markov import (
    forward_backward,
    log_matmul_exp,
    markov_log_normalizer,
    sequential_log_matmul_exp,
)


def random_chain(batch, T, K, homogeneous=False):
    init = torch.randn(batch + (K,))
    trans = torch.randn(batch + ((1 if homogeneous else T - 1), K, K))
    evidence = 2 * torch.randn(batch + (T, K))
    return init, trans, evidence


def brute_force(init, trans, evidence, lengths=None):
    """log Z, q(z_t) and q(z_{t-1}, z_t) by listing all K^L paths of each sequence."""
    B, T, K = evidence.shape
    trans = trans.expand(B, T - 1, K, K)
    log_z = torch.empty(B)
    marg = torch.zeros(B, T, K)
    pair = torch.zeros(B, T - 1, K, K)
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        paths = list(itertools.product(range(K), repeat=L))
        weights = []
        for z in paths:
            w = init[b, z[0]] + evidence[b, 0, z[0]]
            for t in range(1, L):
                w = w + trans[b, t - 1, z[t - 1], z[t]] + evidence[b, t, z[t]]
            weights.append(w)
        weights = torch.stack(weights)
        log_z[b] = torch.logsumexp(weights, 0)
        probs = (weights - log_z[b]).exp()
        for p, z in zip(probs, paths):
            for t in range(L):
                marg[b, t, z[t]] += p
            for t in range(1, L):
                pair[b, t - 1, z[t - 1], z[t]] += p
    return log_z, marg, pair


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("T, K", [(1, 3), (2, 2), (5, 3), (6, 2)])
@pytest.mark.parametrize("padded", [False, True])
def test_forward_backward_matches_brute_force_enumeration(T, K, parallel, padded):
    init, trans, evidence = random_chain((3,), T, K)
    lengths = torch.tensor([T, max(T - 2, 1), 1]) if padded else None
    result = forward_backward(init, trans, evidence, lengths, parallel)
    log_z, marg, pair = brute_force(init, trans, evidence, lengths)
    assert_close(result.log_normalizer, log_z)
    assert_close(result.marginals, marg)
    assert_close(result.pair_marginals, pair)
    assert_close(result.transition_counts, pair.sum(1))
    assert_close(markov_log_normalizer(init, trans, evidence, lengths, parallel), log_z)


def test_homogeneous_transitions_broadcast_over_time():
    init, trans, evidence = random_chain((2,), 5, 3, homogeneous=True)
    result = forward_backward(init, trans, evidence)
    log_z, marg, pair = brute_force(init, trans, evidence)
    assert_close(result.log_normalizer, log_z)
    assert_close(result.pair_marginals, pair)


def test_padding_values_change_nothing():
    init, trans, evidence = random_chain((2,), 7, 3)
    lengths = torch.tensor([4, 7])
    other = evidence.clone()
    other[0, 4:] = 100 * torch.randn(3, 3)
    other_trans = trans.clone()
    other_trans[0, 3:] = 50.0
    a = forward_backward(init, trans, evidence, lengths)
    b = forward_backward(init, other_trans, other, lengths)
    for x, y in zip(a, b):
        assert_close(x, y)
    assert (a.marginals[0, 4:] == 0).all() and (a.pair_marginals[0, 3:] == 0).all()


def test_structural_zeros_keep_gradients_finite():
    """A left-to-right chain: -inf transitions have zero mass and no NaN gradient."""
    K, T = 3, 6
    trans = torch.full((1, K, K), float("-inf"))
    for j in range(K):
        trans[0, j, j] = 0.0
        if j + 1 < K:
            trans[0, j, j + 1] = -0.5
    init = torch.tensor([0.0, float("-inf"), float("-inf")])
    evidence = torch.randn(2, T, K, requires_grad=True)
    result = forward_backward(init, trans, evidence)
    log_z, marg, pair = brute_force(init.expand(2, K), trans, evidence.detach())
    assert_close(result.log_normalizer, log_z)
    assert_close(result.marginals, marg)
    chain = MarkovChain(init, trans, T, log_evidence=evidence)
    (result.log_normalizer.sum() + result.marginals[..., 1].sum() + chain.entropy().sum()).backward()
    assert torch.isfinite(evidence.grad).all()


def test_marginals_are_differentiable_and_match_finite_differences():
    init, trans, evidence = random_chain((2,), 4, 2)
    evidence.requires_grad_()

    def f(e):
        return forward_backward(init, trans, e).marginals

    assert torch.autograd.gradcheck(f, (evidence,))


def test_log_matmul_exp_and_parallel_product():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert_close(log_matmul_exp(a, b), (a.exp() @ b.exp()).log())
    mats = torch.randn(7, 3, 3)
    dense = mats[0].exp()
    for m in mats[1:]:
        dense = dense @ m.exp()
    assert_close(sequential_log_matmul_exp(mats), dense.log())
    # a large offset, far beyond exp's range, is carried exactly
    assert_close(log_matmul_exp(a + 1000, b - 2000), log_matmul_exp(a, b) - 1000)


@pytest.mark.parametrize("padded", [False, True])
def test_sampled_paths_have_the_enumerated_path_probabilities(padded):
    T, K = 4, 2
    init, trans, evidence = random_chain((2,), T, K)
    lengths = torch.tensor([4, 2]) if padded else None
    chain = MarkovChain(init, trans, T, log_evidence=evidence, lengths=lengths)
    S = 200000
    z = chain.sample((S,))
    assert z.shape == (S, 2, T)
    for b in range(2):
        L = T if lengths is None else int(lengths[b])
        codes = (z[:, b, :L] * K ** torch.arange(L - 1, -1, -1)).sum(-1)
        freq = torch.bincount(codes, minlength=K**L).double() / S
        paths = torch.tensor(list(itertools.product(range(K), repeat=L)))
        padded_paths = torch.cat([paths, paths.new_zeros(len(paths), T - L)], -1)
        probs = chain.log_prob(padded_paths[:, None, :].expand(-1, 2, T))[:, b].exp()
        assert_close(probs.sum(), torch.tensor(1.0))
        assert_close(freq, probs, atol=4 * (probs * (1 - probs) / S).sqrt().max().item(), rtol=0)
        if L < T:
            assert (z[:, b, L:] == 0).all()


def test_markov_chain_entropy_and_enumeration():
    T, K = 3, 3
    init, trans, evidence = random_chain((2,), T, K)
    chain = MarkovChain(init, trans, T, log_evidence=evidence)
    paths = chain.enumerate_support(expand=False)
    assert paths.shape == (K**T, 1, T)
    log_p = chain.log_prob(paths)  # (K^T, 2)
    assert_close(log_p.exp().sum(0), torch.ones(2))
    assert_close(chain.entropy(), -(log_p.exp() * log_p).sum(0))
    expanded = chain.expand((4, 2))
    assert_close(expanded.log_prob(paths[:, None]), log_p[:, None].expand(-1, 4, 2))
    with pytest.raises(ValueError, match="K\\^T"):
        MarkovChain(init, trans[..., :1, :, :], 20, log_evidence=torch.zeros(2, 20, K)).enumerate_support()


def test_markov_chain_entropy_keeps_its_accuracy_in_single_precision():
    # a hundred steps whose evidence is hundreds of nats and shifted by thousands, as the
    # per-step evidence of a deep model's encoder is: log Z is then ~1e5 while H is ~10
    T, K = 100, 4
    init, trans, evidence = random_chain((8,), T, K)
    evidence = 1000.0 + 3.0 * evidence
    exact = MarkovChain(init, trans, T, log_evidence=evidence).entropy()
    single = MarkovChain(init.float(), trans.float(), T, log_evidence=evidence.float()).entropy()
    assert (exact > 1).all()
    assert_close(single.double(), exact, atol=1e-3, rtol=1e-4)


def test_normalised_prior_chain_is_ancestral_sampling():
    """Without evidence and with normalised weights the chain is p(z) = π(z_1) Π P(z_t | z_{t-1})."""
    K, T = 3, 5
    pi = torch.distributions.Dirichlet(torch.ones(K)).sample()
    P = torch.distributions.Dirichlet(torch.ones(K)).sample((K,))
    chain = MarkovChain(pi.log(), P.log()[None], T)
    assert_close(chain.marginals.log_normalizer, torch.tensor(0.0), atol=1e-12, rtol=0)
    marg = pi
    for t in range(T):
        assert_close(chain.marginals.marginals[t], marg)
        marg = marg @ P
    z = torch.tensor([0, 2, 2, 1, 0])
    expected = pi[0].log() + sum(P[z[t - 1], z[t]].log() for t in range(1, T))
    assert_close(chain.log_prob(z), expected)
