"""A linear-Gaussian Markov chain as a distribution over whole sequences."""

import math

import torch
from torch.distributions import constraints

import pyro.distributions as dist
from pyro.distributions.util import broadcast_shape


class GaussianChain(dist.TorchDistribution):
    r"""
    ``x_1 ~ N(μ₀, P₀⁻¹)``, ``x_t | x_{t-1} ~ N(A x_{t-1} + b, Λ⁻¹)`` for
    ``t = 2..T``, as one distribution with event shape ``(T, D)``.

    Sequences padded to ``T`` steps take their ``lengths``: the steps after a
    sequence's end do not exist; samples and the mean hold zeros there, and the
    density covers the steps up to the end.

    :param torch.Tensor init_loc: ``μ₀``, shape ``(..., D)``.
    :param torch.Tensor init_precision: ``P₀``, shape ``(..., D, D)``.
    :param torch.Tensor transition_matrix: ``A``, shape ``(..., D, D)``.
    :param torch.Tensor transition_bias: ``b``, shape ``(..., D)``.
    :param torch.Tensor noise_precision: ``Λ``, shape ``(..., D, D)``.
    :param int num_steps: ``T``.
    :param torch.Tensor lengths: optional number of steps of each sequence, an
        integer tensor of batch shape with values in ``[1, T]``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(
        self,
        init_loc,
        init_precision,
        transition_matrix,
        transition_bias,
        noise_precision,
        num_steps: int,
        lengths=None,
        validate_args=None,
    ):
        D = init_loc.shape[-1]
        if num_steps < 1:
            raise ValueError(f"num_steps must be positive, got {num_steps}")
        batch_shape = broadcast_shape(
            init_loc.shape[:-1],
            init_precision.shape[:-2],
            transition_matrix.shape[:-2],
            transition_bias.shape[:-1],
            noise_precision.shape[:-2],
            () if lengths is None else lengths.shape,
        )
        self.init_loc = init_loc.expand(batch_shape + (D,))
        self.init_precision = init_precision.expand(batch_shape + (D, D))
        self.transition_matrix = transition_matrix.expand(batch_shape + (D, D))
        self.transition_bias = transition_bias.expand(batch_shape + (D,))
        self.noise_precision = noise_precision.expand(batch_shape + (D, D))
        self.num_steps = num_steps
        self.lengths = None if lengths is None else lengths.expand(batch_shape)
        super().__init__(batch_shape, torch.Size((num_steps, D)), validate_args=validate_args)
        if self._validate_args and lengths is not None:
            if lengths.is_floating_point() or not ((lengths >= 1) & (lengths <= num_steps)).all():
                raise ValueError(f"GaussianChain lengths must be integers in [1, {num_steps}], got {lengths}")

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        D = self.event_shape[-1]
        new = GaussianChain(
            self.init_loc.expand(batch_shape + (D,)),
            self.init_precision.expand(batch_shape + (D, D)),
            self.transition_matrix.expand(batch_shape + (D, D)),
            self.transition_bias.expand(batch_shape + (D,)),
            self.noise_precision.expand(batch_shape + (D, D)),
            self.num_steps,
            None if self.lengths is None else self.lengths.expand(batch_shape),
            validate_args=False,
        )
        new._validate_args = self._validate_args
        return new

    def _mean_of_next(self, x_prev):
        return (self.transition_matrix @ x_prev[..., None])[..., 0] + self.transition_bias

    @property
    def step_mask(self):
        """``(..., T)``, True where a step exists; None when every step does."""
        if self.lengths is None:
            return None
        return torch.arange(self.num_steps, device=self.lengths.device) < self.lengths[..., None]

    def _after_end_to_zero(self, x):
        mask = self.step_mask
        return x if mask is None else torch.where(mask[..., None], x, x.new_zeros(()))

    @property
    def mean(self):
        """``E[x_t]``: ``μ₀``, then ``E[x_t] = A E[x_{t-1}] + b``; shape ``(..., T, D)``."""
        steps = [self.init_loc]
        for _ in range(1, self.num_steps):
            steps.append(self._mean_of_next(steps[-1]))
        return self._after_end_to_zero(torch.stack(steps, -2))

    def rsample(self, sample_shape=torch.Size()):
        init = dist.MultivariateNormal(self.init_loc, precision_matrix=self.init_precision)
        noise = dist.MultivariateNormal(
            torch.zeros_like(self.init_loc), precision_matrix=self.noise_precision
        )
        shape = torch.Size(sample_shape)
        steps = [init.rsample(shape)]
        for _ in range(1, self.num_steps):
            steps.append(self._mean_of_next(steps[-1]) + noise.rsample(shape))
        return self._after_end_to_zero(torch.stack(steps, -2))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        D = self.event_shape[-1]
        init = dist.MultivariateNormal(self.init_loc, precision_matrix=self.init_precision)
        result = init.log_prob(value[..., 0, :])
        if self.num_steps > 1:
            x_prev, x_next = value[..., :-1, :], value[..., 1:, :]
            mean = (self.transition_matrix[..., None, :, :] @ x_prev[..., None])[..., 0] + self.transition_bias[
                ..., None, :
            ]
            diff = x_next - mean  # (..., T - 1, D)
            quad = (diff[..., None, :] @ self.noise_precision[..., None, :, :] @ diff[..., None])[..., 0, 0]
            log_det = torch.logdet(self.noise_precision)
            per_step = -0.5 * quad + 0.5 * (log_det - D * math.log(2 * math.pi))[..., None]  # (..., T - 1)
            if self.lengths is not None:
                per_step = torch.where(self.step_mask[..., 1:], per_step, per_step.new_zeros(()))
            result = result + per_step.sum(-1)
        return result
