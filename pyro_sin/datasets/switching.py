r"""
Synthetic sequences whose latent state switches between regimes: benchmarks for
segmentation with latent Markov chains (:class:`~pyro_sin.pgm.LatentHMM`) and
switching dynamics. Re-implemented from their published descriptions.
"""

import math
from typing import NamedTuple, Tuple

import torch

from ._device import built_on_cpu


class RegimeSequences(NamedTuple):
    """Sequences with their noise-free versions, latent states and true regimes."""

    frames: torch.Tensor  # (N, T, P)  observations
    clean: torch.Tensor  # (N, T, P)   the observations without noise
    latents: torch.Tensor  # (N, T, D) the continuous latent state
    regimes: torch.Tensor  # (N, T)    the discrete regime, integers in [0, K)


@built_on_cpu
def bouncing_ball(
    num_sequences: int,
    num_steps: int = 100,
    height: float = 10.0,
    max_speed: float = 0.5,
    noise: float = 0.1,
    seed: int = 0,
    dtype=None,
) -> RegimeSequences:
    r"""
    A ball bouncing between two walls at ``0`` and ``height`` (the 1-D bouncing ball of
    the switching-SVAE literature): each sequence starts at ``p_1 ~ U(0, height)`` with a
    velocity ``v ~ U(-max_speed, max_speed)`` that keeps its size and flips its sign at a
    wall; the observation is the position plus ``N(0, noise²)`` noise. The regime is the
    direction of motion (1 moving up, 0 moving down), so two linear regimes
    ``p_{t+1} = p_t ± |v|`` with switches at the walls explain the data exactly.

    :returns: :class:`RegimeSequences` with frames ``(N, T, 1)``, latents
        ``(position, velocity)`` of shape ``(N, T, 2)`` and regimes ``(N, T)``.
    """
    if height <= 0 or max_speed < 0 or noise < 0:
        raise ValueError("bouncing_ball needs height > 0, max_speed >= 0 and noise >= 0")
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.get_default_dtype()
    start = torch.rand(num_sequences, 1, generator=gen, dtype=dtype) * height
    speed = (2 * torch.rand(num_sequences, 1, generator=gen, dtype=dtype) - 1) * max_speed
    # unfold the walls: travel on a circle of circumference 2·height, then fold back
    phase = torch.remainder(start + speed * torch.arange(num_steps, dtype=dtype), 2 * height)
    going_out = phase <= height  # on the first half of the circle the folded motion keeps the sign of v
    position = torch.where(going_out, phase, 2 * height - phase)
    velocity = torch.where(going_out, speed, -speed)
    regimes = (velocity > 0).long()
    clean = position[..., None]
    frames = clean + noise * torch.randn(clean.shape, generator=gen, dtype=dtype)
    return RegimeSequences(frames, clean, torch.stack([position, velocity], -1), regimes)


@built_on_cpu
def four_regime_dynamics(
    angle: float = math.pi / 10, attraction: float = 0.1, attractor: float = 2.0, dtype=None
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    The affine dynamics ``x_t = A_k x_{t-1} + b_k`` of :func:`four_regime_system`:
    regime 0 rotates counter-clockwise by ``angle`` about the origin, regime 1 clockwise;
    regimes 2 and 3 drift in a straight line towards ``(±attractor, 0)``, closing a
    fraction ``attraction`` of the distance per step.

    :returns: ``(A, b)`` of shapes ``(4, 2, 2)`` and ``(4, 2)``.
    """
    dtype = dtype or torch.get_default_dtype()
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -s], [s, c]], dtype=dtype)
    eye = torch.eye(2, dtype=dtype)
    A = torch.stack([rotation, rotation.T, (1 - attraction) * eye, (1 - attraction) * eye])
    b = torch.zeros(4, 2, dtype=dtype)
    b[2, 0], b[3, 0] = attraction * attractor, -attraction * attractor
    return A, b


@built_on_cpu
def random_observation_map(latent_dim: int, obs_dim: int, hidden: int = 32, seed: int = 0, dtype=None):
    r"""
    A fixed random one-hidden-layer map ``y = W₂ tanh(W₁ x + c₁) + c₂`` (weights and
    biases standard normal, ``W₁`` scaled by ``1/√D``), as a function of ``x``.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.get_default_dtype()
    w1 = torch.randn(latent_dim, hidden, generator=gen, dtype=dtype) / math.sqrt(latent_dim)
    c1 = torch.randn(hidden, generator=gen, dtype=dtype)
    w2 = torch.randn(hidden, obs_dim, generator=gen, dtype=dtype) / math.sqrt(hidden)
    c2 = torch.randn(obs_dim, generator=gen, dtype=dtype)

    def observe(x):
        return torch.tanh(x @ w1.to(x) + c1.to(x)) @ w2.to(x) + c2.to(x)

    return observe


@built_on_cpu
def four_regime_system(
    num_sequences: int,
    num_steps: int = 100,
    obs_dim: int = 10,
    stay_probability: float = 0.95,
    dynamics_noise: float = 0.05,
    obs_noise: float = 0.1,
    seed: int = 0,
    map_seed: int = 0,
    dtype=None,
) -> RegimeSequences:
    r"""
    A 2-D switching linear dynamical system with four regimes (rotations in both senses
    and two drifts, :func:`four_regime_dynamics`) and sticky transitions, observed through
    a fixed random nonlinear map (:func:`random_observation_map`, seeded by ``map_seed`` so
    that training and test sets share it):

    .. math:: z_1 \sim U\{0..3\},\ P(z_t = z_{t-1}) = p,\ \text{otherwise uniform over the other three},

    .. math:: x_1 \sim N(0, I),\quad x_t = A_{z_t} x_{t-1} + b_{z_t} + \epsilon_t,\quad
              y_t = g(x_t) + \nu_t,

    with ``ε_t ~ N(0, dynamics_noise² I)`` and ``ν_t ~ N(0, obs_noise² I)``.

    :returns: :class:`RegimeSequences` with frames ``(N, T, obs_dim)``, latents ``(N, T, 2)``.
    """
    if not 0 <= stay_probability <= 1:
        raise ValueError(f"stay_probability must lie in [0, 1], got {stay_probability}")
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.get_default_dtype()
    K = 4
    A, b = four_regime_dynamics(dtype=dtype)
    # a switch moves to one of the other three regimes uniformly
    stays = torch.rand(num_sequences, num_steps, generator=gen) < stay_probability
    jumps = torch.randint(1, K, (num_sequences, num_steps), generator=gen)
    regimes = torch.empty(num_sequences, num_steps, dtype=torch.long)
    regimes[:, 0] = torch.randint(K, (num_sequences,), generator=gen)
    for t in range(1, num_steps):
        regimes[:, t] = torch.where(stays[:, t], regimes[:, t - 1], (regimes[:, t - 1] + jumps[:, t]) % K)
    noise = dynamics_noise * torch.randn(num_sequences, num_steps, 2, generator=gen, dtype=dtype)
    x = torch.randn(num_sequences, 2, generator=gen, dtype=dtype)
    latents = [x]
    for t in range(1, num_steps):
        k = regimes[:, t]
        x = (A[k] @ x[..., None])[..., 0] + b[k] + noise[:, t]
        latents.append(x)
    latents = torch.stack(latents, 1)
    clean = random_observation_map(2, obs_dim, seed=map_seed, dtype=dtype)(latents)
    frames = clean + obs_noise * torch.randn(clean.shape, generator=gen, dtype=dtype)
    return RegimeSequences(frames, clean, latents, regimes)
