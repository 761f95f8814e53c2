"""The sequence priors' prediction interface (forecast, proposal, latent_log_prob) against closed forms."""

import torch

from pyro_sin.distributions import MatrixNormalWishart, NormalWishart
from pyro_sin.pgm import LatentHMM, LinearDynamicalSystem
from pyro_sin.pgm.hmm import HMMGlobalPosterior
from pyro_sin.pgm.lds import LDSGlobalPosterior
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
            torch.cat([A, b[:, None]], -1), CONFIDENT * torch.eye(D + 1), CONFIDENT * torch.linalg.inv(noise_precision), torch.tensor(CONFIDENT)
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
    """The proposal is q(x_{1:T}) with the states summed out: a normalised density with the posterior's batch and event shapes."""
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
