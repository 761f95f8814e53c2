"""The synthetic linear-Gaussian benchmark's generator: shapes, seeds, noise levels and its exact likelihood."""

import math

import pytest
import torch
from torch.testing import assert_close

from linear_gaussian import LDS_BENCHMARK_GRID, lds_benchmark_settings, linear_gaussian_benchmark
from tests.test_datasets_sequences import assert_variance


def test_generator_is_seeded():
    a, b, c = (linear_gaussian_benchmark(4, seed=seed) for seed in (1, 1, 2))
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, c.frames)


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
