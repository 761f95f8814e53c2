"""The switching sequence generators: shapes, seeds and the statistics they promise."""

import math

import torch
from torch.testing import assert_close

from pyro_sin.datasets import bouncing_ball, four_regime_dynamics, four_regime_system, random_observation_map


def assert_variance(samples, variance, sigmas=5):  # (also used by tests/examples/test_linear_gaussian.py)
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
    for make in (bouncing_ball, four_regime_system):
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
