"""
Recognition networks that emit Gaussian potentials, and a Gaussian decoder.

Both are two-headed MLPs in the style of the SVAE / SAN experiment code: small
initial weights (std 0.01) and a linear shortcut into the first head
(initialised to a scaled random orthonormal map), while the second head (a
precision or a variance, through a softplus) starts as a constant that does
not depend on the input. :func:`mirrored_autoencoder` goes one step further
and starts the decoder's shortcut as the inverse of the encoder's, at a latent
scale matched to the PGM prior: training then starts from a near-identity
autoencoder, which makes SAN converge faster and more reliably than
independent shortcuts (measured in ``benchmarks/``).
"""

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.functional import softplus

import pyro.distributions as dist

from .potential import GaussianPotential


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def _orthonormal_(weight: torch.Tensor) -> torch.Tensor:
    """Fills ``weight`` (out, in) with a random matrix with orthonormal rows or columns."""
    rows, cols = weight.shape
    q, r = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), dtype=weight.dtype, device=weight.device))
    q = q * torch.sign(torch.diagonal(r))  # uniform (Haar) orientation
    with torch.no_grad():
        weight.copy_(q if rows >= cols else q.T)
    return weight


class TwoHeadedMLP(nn.Module):
    """
    ``x ↦ (first, second)`` with ``first = head₁(mlp(x)) + A x`` and
    ``second = softplus(head₂(mlp(x)))``.

    :param int in_dim: input size.
    :param int out_dim: size of each head.
    :param hidden: hidden layer sizes.
    :param float init_second: the initial value of the second head.
    :param float init_std: std of the initial weights and biases of the MLP.
    :param float shortcut_gain: the shortcut starts as ``gain`` times a random
        orthonormal map.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (50, 50),
        init_second: float = 1.0,
        init_std: float = 0.01,
        shortcut_gain: float = 1.0,
        activation=nn.Tanh,
    ):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        layers, width = [], in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), activation()]
            width = size
        self.body = nn.Sequential(*layers)
        self.first = nn.Linear(width, out_dim)
        self.second = nn.Linear(width, out_dim)
        self.shortcut = nn.Linear(in_dim, out_dim, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.shortcut:
                nn.init.normal_(module.weight, std=init_std)
                nn.init.normal_(module.bias, std=init_std)
        _orthonormal_(self.shortcut.weight)
        with torch.no_grad():
            self.shortcut.weight.mul_(shortcut_gain)
            self.second.bias.add_(_inverse_softplus(init_second))

    def forward(self, x):
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"{type(self).__name__} expects inputs with last dimension {self.in_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        hidden = self.body(x)
        return self.first(hidden) + self.shortcut(x), softplus(self.second(hidden))


class GaussianEncoder(TwoHeadedMLP):
    r"""
    Recognition network ``y ↦ ψ(x; h, J)`` with diagonal ``J > 0``.

    At initialisation ``J ≈ init_precision`` and the potential's mean
    ``h / J ≈ Q y / init_scale`` for a random orthonormal ``Q``.

    :param int data_dim: size of ``y``.
    :param int latent_dim: size of ``x``.
    :param hidden: hidden layer sizes (tanh).
    :param float init_precision: the initial, input-independent ``J``.
    :param float init_scale: data units per latent unit at initialisation.
    """

    def __init__(
        self, data_dim, latent_dim, hidden=(50, 50), init_precision=1.0, init_scale=1.0, **kwargs
    ):
        super().__init__(
            data_dim,
            latent_dim,
            hidden,
            init_second=init_precision,
            shortcut_gain=init_precision / init_scale,
            **kwargs,
        )
        self.init_precision, self.init_scale = init_precision, init_scale

    def forward(self, y, mask=None, lengths=None) -> GaussianPotential:
        """
        :param y: data, shape ``(..., data_dim)``.
        :param mask: optional, shape ``y.shape[:-1]``; where zero (a missing
            frame) the potential carries no evidence.
        :param lengths: optional, for sequences ``y`` of shape ``(..., T, data_dim)``
            padded to ``T`` steps: the number of steps of each, passed on in the potential.
        """
        info_vec, precision = super().forward(y)
        return _masked(GaussianPotential(info_vec, precision), mask, lengths)


def _masked(potential: GaussianPotential, mask, lengths=None) -> GaussianPotential:
    if mask is None:
        return potential._replace(lengths=lengths)
    mask = mask.to(potential.info_vec.dtype)[..., None]
    return GaussianPotential(potential.info_vec * mask, potential.precision * mask, lengths)


class SequenceEncoder(nn.Module):
    r"""
    Per-step Gaussian potentials from a bidirectional GRU over a sequence:
    ``ψ_t(x_t; h_t, J_t)`` with ``(h_t, J_t)`` a two-headed MLP of ``y_t`` and the
    GRU's state at ``t``, so each potential sees the whole sequence while the
    output stays one potential per step.

    :param int data_dim: size of ``y_t``.
    :param int latent_dim: size of ``x_t``.
    :param hidden: hidden sizes of the per-step MLP.
    :param int rnn_dim: GRU state size per direction.
    """

    def __init__(self, data_dim, latent_dim, hidden=(50, 50), rnn_dim=32, init_precision=1.0, init_scale=1.0):
        super().__init__()
        self.rnn = nn.GRU(data_dim, rnn_dim, batch_first=True, bidirectional=True)
        self.head = TwoHeadedMLP(
            data_dim + 2 * rnn_dim,
            latent_dim,
            hidden,
            init_second=init_precision,
            shortcut_gain=init_precision / init_scale,
        )
        self.data_dim = data_dim

    def forward(self, y, mask=None, lengths=None) -> GaussianPotential:
        """
        :param y: sequences, shape ``(B, T, data_dim)``.
        :param mask: ``(B, T)``, zero at missing frames.
        :param lengths: ``(B,)``, the number of steps of each sequence when they are
            padded to ``T``: the GRU then runs over each sequence's own steps only.
        """
        if y.dim() != 3 or y.shape[-1] != self.data_dim:
            raise ValueError(f"SequenceEncoder expects (B, T, {self.data_dim}) inputs, got {tuple(y.shape)}")
        if mask is not None:
            y = y * mask.to(y.dtype)[..., None]
        if lengths is None:
            states, _ = self.rnn(y)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(y, lengths.cpu(), batch_first=True, enforce_sorted=False)
            states, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=y.shape[1])
        info_vec, precision = self.head(torch.cat([y, states], -1))
        return _masked(GaussianPotential(info_vec, precision), mask, lengths)


class GaussianDecoder(TwoHeadedMLP):
    r"""
    Decoder ``x ↦ N(y; μ(x), diag σ²(x))``.

    At initialisation ``σ² ≈ init_variance`` and ``μ(x) ≈ init_scale · Q x``.

    :param int latent_dim: size of ``x``.
    :param int data_dim: size of ``y``.
    :param hidden: hidden layer sizes (tanh).
    :param float init_variance: the initial, input-independent ``σ²``.
    :param float init_scale: data units per latent unit at initialisation.
    """

    def __init__(
        self, latent_dim, data_dim, hidden=(50, 50), init_variance=1.0, init_scale=1.0, **kwargs
    ):
        super().__init__(
            latent_dim, data_dim, hidden, init_second=init_variance, shortcut_gain=init_scale, **kwargs
        )

    def forward(self, x):
        """:returns: ``(loc, scale)`` of the likelihood."""
        loc, variance = super().forward(x)
        return loc, variance.sqrt()

    def distribution(self, x) -> dist.Normal:
        """``p(y | x)`` as a Pyro distribution with event dimension 1."""
        loc, scale = self(x)
        return dist.Normal(loc, scale).to_event(1)


def mirrored_autoencoder(
    data_dim: int,
    latent_dim: int,
    hidden: Sequence[int] = (50, 50),
    scale: float = 1.0,
    init_variance: float = 1.0,
):
    r"""
    An encoder and a decoder whose shortcuts start as inverse maps,
    ``x ≈ Q y / s`` and ``y ≈ s Qᵀ x`` (``Q`` a random partial isometry), with
    encoder precision ``J = s²`` so that the posterior spread starts at about one
    data unit.

    :param float scale: ``s``, data units per latent unit; choose it so the data
        span a few units of the latent space, where the PGM prior's
        hyperparameters live (e.g. ``s = std(y) / 2``; see :func:`latent_scale`).
    :returns: ``(GaussianEncoder, GaussianDecoder)``.
    """
    encoder = GaussianEncoder(
        data_dim, latent_dim, hidden, init_precision=scale**2, init_scale=scale
    )
    decoder = GaussianDecoder(latent_dim, data_dim, hidden, init_variance=init_variance)
    with torch.no_grad():
        orthonormal = encoder.shortcut.weight / (encoder.init_precision / scale)
        decoder.shortcut.weight.copy_(scale * orthonormal.T)
    return encoder, decoder


def latent_scale(data: torch.Tensor, latent_std: float = 2.0) -> float:
    """Data units per latent unit that give the data a latent standard deviation of ``latent_std``."""
    return float(data.std(0).mean()) / latent_std
