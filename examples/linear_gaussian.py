r"""
The synthetic linear dynamical system benchmark of Zhao & Linderman, "Revisiting
Structured Variational Autoencoders" (ICML 2023), re-implemented from its published
description: sequences of ``T = 200`` steps from

.. math:: x_0 \sim N(0, I),\quad x_t = A x_{t-1} + w_t,\quad y_t = C x_t + d + v_t,\qquad
          w_t \sim N(0, \sigma_x^2 I),\ v_t \sim N(0, \sigma_y^2 I),

with ``A`` a rotation by ``π/20`` in a random plane (identity on its orthogonal
complement) and ``C``, ``d`` standard normal. Because the system is linear and Gaussian
its exact log-likelihood is known (:meth:`LinearGaussianSystem.distribution`, a Kalman
filter by Pyro's parallel scan), which measures the gap of a variational bound.

Conventions this module fixes where the description is silent: the state ``x_0`` before the
first observation is ``N(0, I)``; the plane of the rotation is spanned by the first two
columns of a random orthogonal matrix; the system's parameters are drawn from their own
seed, so training and test sets (different ``seed``) share the system.
"""

import itertools
import math
from typing import Dict, Iterator, NamedTuple

import torch

import pyro.distributions as dist

from pyro_sin.datasets._device import built_on_cpu

#: The benchmark's grid of (latent, emission) dimensions, (emission, dynamics) noise
#: variances and training-set sizes, each setting in the order the description lists them.
LDS_BENCHMARK_GRID = {
    "dims": ((3, 5), (5, 10), (10, 20)),
    "noise": ((10.0, 0.01), (1.0, 0.1), (0.1, 0.1)),
    "num_sequences": (10, 100, 1000),
}


def lds_benchmark_settings() -> Iterator[Dict[str, float]]:
    """Every setting of :data:`LDS_BENCHMARK_GRID` as keyword arguments of :func:`linear_gaussian_benchmark`."""
    grid = LDS_BENCHMARK_GRID
    settings = itertools.product(grid["dims"], grid["noise"], grid["num_sequences"])
    for (latent, emission), (obs_var, dyn_var), n in settings:
        yield dict(
            latent_dim=latent, emission_dim=emission, emission_noise=obs_var, dynamics_noise=dyn_var, num_sequences=n
        )


class LinearGaussianSystem(NamedTuple):
    """The parameters of a linear Gaussian state-space model (covariances, not precisions)."""

    transition: torch.Tensor  # (D, D)          A
    dynamics_cov: torch.Tensor  # (D, D)        σ_x² I
    emission: torch.Tensor  # (P, D)            C
    emission_bias: torch.Tensor  # (P,)         d
    emission_cov: torch.Tensor  # (P, P)        σ_y² I
    init_loc: torch.Tensor  # (D,)              E[x_0]
    init_cov: torch.Tensor  # (D, D)            Cov[x_0]

    def distribution(self, num_steps: int) -> dist.GaussianHMM:
        """
        ``p(y_{1:T})`` with the states integrated out, as Pyro's :class:`~pyro.distributions.GaussianHMM`
        (event ``(T, P)``).
        """
        return dist.GaussianHMM(
            dist.MultivariateNormal(self.init_loc, self.init_cov),
            self.transition.T,
            dist.MultivariateNormal(torch.zeros_like(self.init_loc), self.dynamics_cov),
            self.emission.T,
            dist.MultivariateNormal(self.emission_bias, self.emission_cov),
            duration=num_steps,
        )


class LinearGaussianSequences(NamedTuple):
    """Observed sequences, their latent states ``x_{1:T}`` and the system that made them."""

    frames: torch.Tensor  # (N, T, P)
    latents: torch.Tensor  # (N, T, D)
    system: LinearGaussianSystem


def random_rotation(dim: int, angle: float, generator: torch.Generator, dtype=None) -> torch.Tensor:
    """A rotation by ``angle`` in a random plane of ``ℝ^dim`` (identity on the rest), shape ``(dim, dim)``."""
    if dim < 2:
        raise ValueError(f"a rotation needs dim >= 2, got {dim}")
    dtype = dtype or torch.get_default_dtype()
    basis, upper = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
    basis = basis * torch.sign(torch.diagonal(upper))  # the QR factor made unique: a uniformly random basis
    plane = torch.eye(dim, dtype=dtype)
    c, s = math.cos(angle), math.sin(angle)
    plane[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=dtype)
    return basis @ plane @ basis.T


@built_on_cpu
def linear_gaussian_benchmark(
    num_sequences: int = 100,
    num_steps: int = 200,
    latent_dim: int = 3,
    emission_dim: int = 5,
    emission_noise: float = 1.0,
    dynamics_noise: float = 0.1,
    seed: int = 0,
    system_seed: int = 0,
    dtype=None,
) -> LinearGaussianSequences:
    r"""
    Sequences of the synthetic LDS benchmark (see the module's docstring).

    :param float emission_noise: the emission noise *variance* ``σ_y²``.
    :param float dynamics_noise: the dynamics noise *variance* ``σ_x²``.
    :param int seed: seeds the sequences.
    :param int system_seed: seeds ``A``, ``C`` and ``d``.
    :returns: :class:`LinearGaussianSequences` with frames ``(N, T, P)`` and latents ``(N, T, D)``.
    """
    if emission_noise <= 0 or dynamics_noise <= 0:
        raise ValueError("the noise variances must be positive")
    dtype = dtype or torch.get_default_dtype()
    D, P = latent_dim, emission_dim
    system_gen = torch.Generator().manual_seed(system_seed)
    A = random_rotation(D, math.pi / 20, system_gen, dtype)
    C = torch.randn(P, D, generator=system_gen, dtype=dtype)
    d = torch.randn(P, generator=system_gen, dtype=dtype)
    eye = torch.eye(D, dtype=dtype)
    system = LinearGaussianSystem(
        A, dynamics_noise * eye, C, d, emission_noise * torch.eye(P, dtype=dtype), torch.zeros(D, dtype=dtype), eye
    )

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_sequences, D, generator=gen, dtype=dtype)  # x_0
    noise = math.sqrt(dynamics_noise) * torch.randn(num_sequences, num_steps, D, generator=gen, dtype=dtype)
    latents = []
    for t in range(num_steps):
        x = x @ A.T + noise[:, t]
        latents.append(x)
    latents = torch.stack(latents, 1)
    frames = latents @ C.T + d
    frames = frames + math.sqrt(emission_noise) * torch.randn(frames.shape, generator=gen, dtype=dtype)
    return LinearGaussianSequences(frames, latents, system)
