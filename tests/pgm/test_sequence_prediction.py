"""The sequence priors' prediction interface (forecast, proposal, latent_log_prob) against closed forms."""

import math

import torch

import pyro.distributions as dist

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


def _untrained_san_lds(latent_dim=4, seed=0):
    """SAN-LDS as the harness builds it, before any training, on standardised random-walk-like sequences."""
    import pyro

    from pyro_sin.models import DeepLatentSequence
    from pyro_sin.standardize import standardized_autoencoder

    pyro.clear_param_store()
    torch.manual_seed(seed)
    y = torch.randn(16, 48, 3).cumsum(1)
    y = (y - y.mean((0, 1))) / y.std((0, 1))
    encoder, decoder = standardized_autoencoder(y.reshape(-1, 3), latent_dim, (50, 50), init_noise=0.3)
    model = DeepLatentSequence(LinearDynamicalSystem(latent_dim), decoder, len(y))
    return model, model.make_guide(encoder), y


def test_an_untrained_lds_forecasts_at_the_data_scale():
    """
    Before training q(θ) is the broad prior: forecasts that drew the dynamics from it reached a horizon-8 mean squared
    error of 1e5 on standardised data. The forecast is now the mean under the posterior-mean dynamics (A = I at first).
    """
    for seed in range(3):
        model, guide, y = _untrained_san_lds(seed=seed)
        context, future = y[:, :40], y[:, 40:]
        for closed_form in (True, False):  # the closed form and the sampled route
            forecast = model.predict(guide, context, 8, 200, closed_form=closed_form)
            assert torch.isfinite(forecast).all()
            assert (forecast - future).pow(2).mean() < 10, (seed, closed_form)


def test_the_default_forecast_and_imputation_are_deterministic():
    """The default point predictions are closed-form: two calls give the same numbers (50 draws gave 1.59 and 1.70)."""
    model, guide, y = _untrained_san_lds()
    mask = torch.ones(y.shape[:2])
    mask[:, 20:25] = 0
    assert torch.equal(model.predict(guide, y, 8), model.predict(guide, y, 8))
    assert torch.equal(model.decode_posterior(guide, y, mask), model.decode_posterior(guide, y, mask))
    prediction = model.predict(guide, y, 8, return_stderr=True)
    assert torch.equal(prediction.mc_stderr, torch.zeros_like(prediction.mean))


def test_closed_form_predictions_are_the_means_of_the_sampled_ones_for_a_linear_decoder():
    """With a linear decoder the closed form is exact: the sampled predictions agree within their Monte Carlo error."""
    from pyro_sin.models import DeepLatentSequence
    from pyro_sin.nn import GaussianDecoder, GaussianEncoder

    g = torch.Generator().manual_seed(5)
    D, P, B, T, H = 2, 3, 4, 10, 3
    decoder = GaussianDecoder(D, P, (8,))
    with torch.no_grad():
        decoder.first.weight.zero_()  # the mean is the shortcut alone: linear
    A = torch.tensor([[0.9, -0.2], [0.2, 0.9]])
    q = LDSGlobalPosterior(
        MatrixNormalWishart(
            torch.cat([A, torch.tensor([[0.3], [-0.1]])], -1),
            CONFIDENT * torch.eye(D + 1),
            CONFIDENT * 0.1 * torch.eye(D),
            torch.tensor(CONFIDENT),
        )
    )
    lds = LinearDynamicalSystem(D)
    model = DeepLatentSequence(lds, decoder, B)
    guide = model.make_guide(GaussianEncoder(P, D, (8,)), init_natural=lds.natural_domain().unpack(
        lds.natural_domain().pack(q.matrix_normal_wishart.natural_params._asdict())
    ))
    y = torch.randn(B, T, P, generator=g)
    mask = torch.ones(B, T)
    mask[:, 3:6] = 0
    torch.manual_seed(0)
    for closed, sampled in (
        (model.predict(guide, y, H), model.predict(guide, y, H, 20000, closed_form=False, return_stderr=True)),
        (
            model.decode_posterior(guide, y, mask),
            model.decode_posterior(guide, y, mask, 20000, closed_form=False, return_stderr=True),
        ),
    ):
        assert (closed - sampled.mean).abs().max() < 5 * sampled.mc_stderr.max() + 1e-3


def test_decoded_marginal_mean_is_exact_for_cubic_decoders():
    """The sigma-point rule integrates every polynomial of degree three or less in x exactly."""
    from pyro_sin.evaluation import decoded_marginal_mean
    from pyro_sin.pgm.sequence import LatentMarginals

    g = torch.Generator().manual_seed(6)
    D = 3
    loc = torch.randn(2, D, generator=g, dtype=torch.float64)
    root = torch.randn(2, D, D, generator=g, dtype=torch.float64)
    cov = root @ root.transpose(-1, -2) + 0.1 * torch.eye(D, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64)

    class Cubic:
        def distribution(self, x):
            z = x @ w
            mean = torch.stack([z, z**2, z**3 + x[..., 0] * x[..., 1]], -1)
            return dist.Normal(mean, 1.0).to_event(1)

    m, s2 = loc @ w, torch.einsum("i,bij,j->b", w, cov, w)  # z ~ N(m, s2)
    expected = torch.stack([m, m**2 + s2, m**3 + 3 * m * s2 + loc[:, 0] * loc[:, 1] + cov[:, 0, 1]], -1)
    torch.testing.assert_close(decoded_marginal_mean(Cubic(), LatentMarginals.gaussian(loc, cov)), expected)
    # a mixture: the weighted mean of its components'
    mixture = LatentMarginals(torch.tensor([0.25, 0.75], dtype=torch.float64), loc, cov)
    torch.testing.assert_close(decoded_marginal_mean(Cubic(), mixture), 0.25 * expected[0] + 0.75 * expected[1])
