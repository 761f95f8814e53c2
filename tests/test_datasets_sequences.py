"""The switching and linear-Gaussian sequence generators: shapes, seeds and the statistics they promise."""

import math

import pytest
import torch
from torch.testing import assert_close

from pyro_sin.datasets import (
    LDS_BENCHMARK_GRID,
    bouncing_ball,
    four_regime_dynamics,
    four_regime_system,
    lds_benchmark_settings,
    linear_gaussian_benchmark,
    random_observation_map,
)


def assert_variance(samples, variance, sigmas=5):
    """The sample variance of zero-mean Gaussian draws within its sampling error (sd σ²√(2/n))."""
    n = samples.numel()
    estimate = samples.pow(2).mean()
    assert abs(estimate - variance) < sigmas * variance * math.sqrt(2 / n), (float(estimate), variance)


def test_bouncing_ball_stays_between_the_walls_and_its_regime_is_the_direction():
    data = bouncing_ball(200, seed=3)
    N, T = 200, 100
    assert data.frames.shape == (N, T, 1) and data.latents.shape == (N, T, 2) and data.regimes.shape == (N, T)
    position, velocity = data.latents.unbind(-1)
    assert (position >= 0).all() and (position <= 10).all()
    speed = velocity.abs()
    assert (speed <= 0.5).all() and (speed == speed[:, :1]).all()  # the speed never changes
    assert (data.regimes == (velocity > 0).long()).all()
    # away from a bounce the ball moves by its velocity; a regime switch happens only at a wall
    step = position[:, 1:] - position[:, :-1]
    same = data.regimes[:, 1:] == data.regimes[:, :-1]
    assert_close(step[same], velocity[:, 1:][same])
    to_wall = torch.minimum(position, 10 - position)
    near_wall = (to_wall[:, :-1] <= speed[:, 1:]) | (to_wall[:, 1:] <= speed[:, 1:])
    assert (~same).any() and near_wall[~same].all()
    # velocities spread over [-0.5, 0.5] and the noise has the stated level
    assert velocity[:, 0].min() < -0.4 and velocity[:, 0].max() > 0.4
    assert_variance(data.frames - data.clean, 0.1**2)


def test_generators_are_seeded():
    for make in (bouncing_ball, four_regime_system, linear_gaussian_benchmark):
        a, b, c = make(4, seed=1), make(4, seed=1), make(4, seed=2)
        assert torch.equal(a.frames, b.frames)
        assert not torch.equal(a.frames, c.frames)


def test_four_regime_system_has_sticky_uniform_regimes_and_the_stated_noise():
    N, T, stay = 300, 100, 0.95
    data = four_regime_system(N, T, stay_probability=stay, seed=0)
    assert data.frames.shape == (N, T, 10) and data.latents.shape == (N, T, 2)
    z = data.regimes
    kept = (z[:, 1:] == z[:, :-1]).double()
    n = kept.numel()
    assert abs(kept.mean() - stay) < 5 * math.sqrt(stay * (1 - stay) / n)
    # a switch goes to each of the three other regimes alike; regimes are used alike
    prev, nxt = z[:, :-1][kept == 0], z[:, 1:][kept == 0]
    offsets = torch.bincount((nxt - prev) % 4, minlength=4)[1:].double()
    expected = offsets.sum() / 3
    assert ((offsets - expected).abs() < 5 * expected.sqrt()).all()
    counts = torch.bincount(z.flatten(), minlength=4).double() / z.numel()
    assert (counts - 0.25).abs().max() < 0.05
    # the latents follow the regimes' affine dynamics up to the dynamics noise
    A, b = four_regime_dynamics()
    k = z[:, 1:]
    predicted = (A[k] @ data.latents[:, :-1, :, None])[..., 0] + b[k]
    assert_variance(data.latents[:, 1:] - predicted, 0.05**2)
    assert_variance(data.frames - data.clean, 0.1**2)
    assert data.latents.norm(dim=-1).max() < 10  # bounded: rotations keep the radius, drifts contract


def test_four_regime_observation_map_is_shared_across_seeds():
    a, b = four_regime_system(3, 20, seed=0), four_regime_system(3, 20, seed=5)
    observe = random_observation_map(2, 10, seed=0)
    assert_close(a.clean, observe(a.latents))
    assert_close(b.clean, observe(b.latents))
    other = four_regime_system(3, 20, seed=5, map_seed=1)
    assert not torch.allclose(other.clean, b.clean)


def test_four_regime_dynamics_rotate_both_ways_and_drift_to_two_points():
    A, b = four_regime_dynamics(angle=0.3, attraction=0.1, attractor=2.0)
    assert_close(A[0] @ A[1], torch.eye(2))  # opposite rotations
    assert_close(torch.det(A[0]), torch.tensor(1.0))
    for k, point in ((2, torch.tensor([2.0, 0.0])), (3, torch.tensor([-2.0, 0.0]))):
        assert_close(A[k] @ point + b[k], point)  # the drift's fixed point


@pytest.mark.parametrize("dims", LDS_BENCHMARK_GRID["dims"])
def test_lds_benchmark_shapes_and_rotation(dims):
    D, P = dims
    data = linear_gaussian_benchmark(10, latent_dim=D, emission_dim=P)
    assert data.frames.shape == (10, 200, P) and data.latents.shape == (10, 200, D)
    A = data.system.transition
    assert_close(A @ A.T, torch.eye(D))
    # eigenvalues e^{±iπ/20} and D - 2 ones: trace and determinant say so
    assert_close(torch.trace(A), torch.tensor(D - 2 + 2 * math.cos(math.pi / 20)))
    assert_close(torch.det(A), torch.tensor(1.0))


@pytest.mark.parametrize("emission_noise, dynamics_noise", LDS_BENCHMARK_GRID["noise"])
def test_lds_benchmark_recovers_its_stated_noise_levels(emission_noise, dynamics_noise):
    data = linear_gaussian_benchmark(
        100, latent_dim=3, emission_dim=5, emission_noise=emission_noise, dynamics_noise=dynamics_noise
    )
    s = data.system
    x = data.latents
    assert_variance(x[:, 1:] - x[:, :-1] @ s.transition.T, dynamics_noise)
    assert_variance(data.frames - x @ s.emission.T - s.emission_bias, emission_noise)
    # C and d are standard normal
    params = torch.cat([s.emission.flatten(), s.emission_bias])
    assert abs(params.mean()) < 5 / math.sqrt(len(params)) and 0.3 < params.std() < 1.7


def test_lds_benchmark_system_is_shared_across_seeds_and_its_likelihood_is_exact():
    a, b = linear_gaussian_benchmark(3, 4, seed=0), linear_gaussian_benchmark(3, 4, seed=1)
    for x, y in zip(a.system, b.system):
        assert torch.equal(x, y)
    # p(y_{1:T}) by Pyro's Kalman filter against the dense joint Gaussian of y_{1:T}
    s, T = a.system, 4
    D, P = s.transition.shape[0], s.emission.shape[0]
    powers = [torch.linalg.matrix_power(s.transition, t) for t in range(T + 1)]
    # x_t = A^t x_0 + Σ_{u<=t} A^{t-u} w_u, so Cov[x_t, x_r] = A^t P₀ A^rᵀ + Σ_{u<=min} A^{t-u} Q A^{r-u}ᵀ
    cov_x = torch.zeros(T * D, T * D)
    for t in range(1, T + 1):
        for r in range(1, T + 1):
            block = powers[t] @ s.init_cov @ powers[r].T
            for u in range(1, min(t, r) + 1):
                block = block + powers[t - u] @ s.dynamics_cov @ powers[r - u].T
            cov_x[(t - 1) * D : t * D, (r - 1) * D : r * D] = block
    C = torch.block_diag(*[s.emission] * T)
    cov_y = C @ cov_x @ C.T + torch.block_diag(*[s.emission_cov] * T)
    mean_y = (torch.stack([s.emission @ powers[t] @ s.init_loc for t in range(1, T + 1)]) + s.emission_bias).flatten()
    dense = torch.distributions.MultivariateNormal(mean_y, cov_y)
    assert_close(s.distribution(T).log_prob(a.frames), dense.log_prob(a.frames.reshape(3, T * P)))


def test_lds_benchmark_grid_lists_every_setting():
    settings = list(lds_benchmark_settings())
    assert len(settings) == 27
    assert dict(latent_dim=3, emission_dim=5, emission_noise=1.0, dynamics_noise=0.1, num_sequences=100) in settings
