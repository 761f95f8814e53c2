"""The sequence priors' prediction interface (forecast, proposal, latent_log_prob) against closed forms."""

import math

import torch

from pyro_sin.distributions import MatrixNormalWishart, NormalWishart
from pyro_sin.pgm import LatentHMM, LinearDynamicalSystem, SwitchingLDS
from pyro_sin.pgm.hmm import HMMGlobalPosterior
from pyro_sin.pgm.lds import LDSGlobalPosterior
from pyro_sin.pgm.slds import SLDSGlobalPosterior
from pyro_sin.potential import GaussianPotential

CONFIDENT = 1e7  # pseudo-counts that make q(θ) a point mass for Monte Carlo purposes


def random_potential(B, T, D, generator):
    return GaussianPotential(torch.randn(B, T, D, generator=generator), 0.5 + torch.rand(B, T, D, generator=generator))


def test_lds_forecast_mean_is_the_dynamics_applied_to_the_smoothed_last_state():
    g = torch.Generator().manual_seed(0)
    D, B, T, H, S = 2, 3, 6, 4, 20000
    lds = LinearDynamicalSystem(D)
    A = torch.tensor([[0.9, -0.3], [0.3, 0.9]])
    b = torch.tensor([0.5, -0.2])
    noise_precision = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    q = LDSGlobalPosterior(
        MatrixNormalWishart(
            torch.cat([A, b[:, None]], -1),
            CONFIDENT * torch.eye(D + 1),
            CONFIDENT * torch.linalg.inv(noise_precision),
            torch.tensor(CONFIDENT),
        )
    )
    posterior = lds.posterior(random_potential(B, T, D, g), lds.tied_factor(q))
    torch.manual_seed(0)
    future = lds.forecast(q, posterior, H, S)  # (S, B, H, D)
    assert future.shape == (S, B, H, D)
    mean = posterior.marginal_means()[:, -1]
    for h in range(H):
        mean = mean @ A.T + b
        assert torch.allclose(future[:, :, h].mean(0), mean, atol=0.05)


def test_hmm_forecast_mean_follows_the_chain_from_the_last_state_marginal():
    g = torch.Generator().manual_seed(1)
    K, D, B, T, H, S = 3, 2, 2, 5, 3, 40000
    hmm = LatentHMM(K, D)
    transition = torch.softmax(torch.randn(K, K, generator=g), -1)
    locs = 2 * torch.randn(K, D, generator=g)
    normal_wishart = NormalWishart(
        locs, torch.full((K,), CONFIDENT), CONFIDENT * torch.eye(D).expand(K, D, D), torch.full((K,), CONFIDENT)
    )
    q = HMMGlobalPosterior(torch.ones(K), CONFIDENT * transition, normal_wishart)
    lengths = torch.tensor([T, 3])  # the second sequence ends after 3 steps
    potential = random_potential(B, T, D, g)._replace(lengths=lengths)
    posterior = hmm.posterior(potential, hmm.tied_factor(q))
    torch.manual_seed(0)
    future = hmm.forecast(q, posterior, H, S, lengths)
    assert future.shape == (S, B, H, D)
    probs = posterior.state_probs[torch.arange(B), lengths - 1]  # q(z_T) at each sequence's own end
    for h in range(H):
        probs = probs @ transition
        assert torch.allclose(future[:, :, h].mean(0), probs @ locs, atol=0.05)


def test_hmm_proposal_is_a_normalised_density():
    """
    The proposal is q(x_{1:T}) with the states summed out: a normalised density with the posterior's batch and
    event shapes.
    """
    g = torch.Generator().manual_seed(2)
    hmm = LatentHMM(2, 1)
    posterior = hmm.posterior(random_potential(2, 3, 1, g), hmm.tied_factor(hmm.global_posterior(hmm.init_natural())))
    proposal = hmm.proposal(posterior)
    assert proposal.batch_shape == (2,) and proposal.event_shape == (3, 1)
    # the density integrates to one: a grid over x in R^3 (one sequence, three 1-D steps)
    grid = torch.linspace(-10, 10, 81)
    cube = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3, 1)
    density = proposal.log_prob(cube[:, None].expand(-1, 2, 3, 1)).exp()  # (G, 2)
    volume = (grid[1] - grid[0]) ** 3
    assert torch.allclose(density.sum(0) * volume, torch.ones(2), atol=1e-3)


def confident_slds_posterior(K, D, generator):
    """A switching LDS, a q(θ) that is a point mass for Monte Carlo purposes, and the true θ."""
    transition = torch.softmax(2 * torch.randn(K, K, generator=generator), -1)
    angles = torch.rand(K, generator=generator) * math.pi / 2
    rotations = torch.stack(
        [torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -2
    )  # (K, 2, 2)
    transitions = torch.cat([0.9 * rotations, torch.randn(K, D, 1, generator=generator)], -1)  # (K, D, D + 1)
    noise_precisions = torch.tensor([[4.0, 1.0], [1.0, 3.0]]).expand(K, D, D)
    matrix_normal_wishart = MatrixNormalWishart(
        transitions,
        CONFIDENT * torch.eye(D + 1).expand(K, D + 1, D + 1),
        CONFIDENT * torch.linalg.inv(noise_precisions),
        torch.full((K,), CONFIDENT),
    )
    q = SLDSGlobalPosterior(torch.ones(K), CONFIDENT * transition, matrix_normal_wishart)
    return SwitchingLDS(K, D), q, transition, transitions


def test_slds_forecast_mean_follows_the_regimes_from_the_mean_field_last_step():
    r"""
    Under the mean field ``z_T`` and ``x_T`` are independent, so ``m_k(t) = E[x_t 1{z_t = k}]`` obeys
    ``m_k(t+1) = A_k Σ_j P_jk m_j(t) + b_k p_k(t+1)`` from ``m_k(T) = q(z_T = k) E_q[x_T]``, and the
    forecast mean is ``Σ_k m_k``; each sequence continues from its own end.
    """
    g = torch.Generator().manual_seed(3)
    K, D, B, T, H, S = 3, 2, 2, 6, 4, 40000
    slds, q, transition, transitions = confident_slds_posterior(K, D, g)
    lengths = torch.tensor([T, 4])
    potential = random_potential(B, T, D, g)._replace(lengths=lengths)
    posterior = slds.posterior(potential, slds.tied_factor(q))
    torch.manual_seed(0)
    future = slds.forecast(q, posterior, H, S, lengths)
    assert future.shape == (S, B, H, D)
    last = torch.arange(B), lengths - 1
    probs = posterior.state_probs[last]  # (B, K)
    m = probs[..., None] * posterior.marginal_means()[last][:, None, :]  # (B, K, D)
    A, b = transitions[..., :D], transitions[..., D]
    for h in range(H):
        probs = probs @ transition
        m = torch.einsum("kij,bkj->bki", A, torch.einsum("jk,bjd->bkd", transition, m)) + probs[..., None] * b
        assert torch.allclose(future[:, :, h].mean(0), m.sum(-2), atol=0.05)
    # without lengths, every sequence continues from its last step
    alone = slds.forecast(q, slds.posterior(random_potential(1, T, D, g), slds.tied_factor(q)), H, 8)
    assert alone.shape == (8, 1, H, D)


def test_slds_proposal_is_the_mean_field_continuous_block_as_a_normalised_density():
    """The proposal's draws have the continuous block's moments, and its density integrates to one."""
    g = torch.Generator().manual_seed(4)
    slds = SwitchingLDS(2, 1, transition_concentration=1 + 5 * torch.eye(2))
    factor = slds.tied_factor(slds.global_posterior(slds.init_natural()))
    posterior = slds.posterior(random_potential(2, 3, 1, g), factor)
    proposal = slds.proposal(posterior)
    assert proposal.batch_shape == (2,) and proposal.event_shape == (3, 1)
    torch.manual_seed(0)
    draws = proposal.sample((20000,))
    assert torch.allclose(draws.mean(0), posterior.marginal_means(), atol=0.03)
    assert torch.allclose(draws.var(0), posterior.marginal_covariances()[..., 0], atol=0.03)
    grid = torch.linspace(-10, 10, 81)
    cube = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3, 1)
    density = proposal.log_prob(cube[:, None].expand(-1, 2, 3, 1)).exp()  # (G, 2)
    volume = (grid[1] - grid[0]) ** 3
    assert torch.allclose(density.sum(0) * volume, torch.ones(2), atol=1e-3)
