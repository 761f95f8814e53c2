"""
Recognition networks that emit Gaussian potentials, and decoders for Gaussian,
Bernoulli and Poisson likelihoods.

All are two-headed MLPs in the style of the SVAE / SAN experiment code: small
initial weights (std 0.01) and a linear shortcut into the first head
(initialised to a scaled random orthonormal map), while the second head (a
precision or a variance, through a softplus) starts as a constant that does
not depend on the input; the Bernoulli and Poisson decoders have one
parameter per feature and drop the second head. :func:`mirrored_autoencoder`
goes one step further and starts the decoder's shortcut as the inverse of the
encoder's, at a latent scale matched to the PGM prior: training then starts
from a near-identity autoencoder, which makes SAN converge faster and more
reliably than independent shortcuts (measured in ``benchmarks/``).
"""

import math
from typing import Optional, Sequence

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
    :param bool second_head: ``False`` drops the second head (for one-parameter
        likelihoods); ``forward`` then returns ``first`` alone.
    :param float body_gain: when given, the hidden layers start with weights of std
        ``body_gain / √fan_in`` (LeCun's scale) instead of ``init_std``, while the heads
        keep ``init_std``: the network still starts as its shortcut, but its hidden
        features are not all near zero, so the heads' gradients are not products of
        small weights and the network bends away from the linear map from the first
        steps (with every weight small it sits near a saddle point and stays almost
        linear for thousands of steps).
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
        second_head: bool = True,
        body_gain: Optional[float] = None,
    ):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        layers, width = [], in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), activation()]
            width = size
        self.body = nn.Sequential(*layers)
        self.first = nn.Linear(width, out_dim)
        self.second = nn.Linear(width, out_dim) if second_head else None
        self.shortcut = nn.Linear(in_dim, out_dim, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.shortcut:
                nn.init.normal_(module.weight, std=init_std)
                nn.init.normal_(module.bias, std=init_std)
        if body_gain is not None:
            if not body_gain > 0:
                raise ValueError(f"body_gain must be positive, got {body_gain}")
            for module in self.body.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=body_gain / math.sqrt(module.in_features))
        _orthonormal_(self.shortcut.weight)
        with torch.no_grad():
            self.shortcut.weight.mul_(shortcut_gain)
            if second_head:
                self.second.bias.add_(_inverse_softplus(init_second))

    def forward(self, x):
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"{type(self).__name__} expects inputs with last dimension {self.in_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        hidden = self.body(x)
        first = self.first(hidden) + self.shortcut(x)
        if self.second is None:
            return first
        return first, softplus(self.second(hidden))


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


def _floor_buffer(value, size: int, name: str) -> torch.Tensor:
    """A non-negative, finite floor (a float or a per-feature tensor) as a ``(size,)`` tensor."""
    floor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if floor.dim() > 1 or floor.numel() not in (1, size):
        raise ValueError(f"{name} must be a float or a tensor of shape ({size},), got shape {tuple(floor.shape)}")
    if not (torch.isfinite(floor).all() and (floor >= 0).all()):
        raise ValueError(f"{name} must be finite and non-negative, got {floor}")
    return floor.expand(size).clone()


class GaussianDecoder(TwoHeadedMLP):
    r"""
    Decoder ``x ↦ N(y; μ(x), diag σ²(x))`` with a floor on the standard deviation,

    .. math:: \sigma_d^2(x) = \mathrm{softplus}(\mathrm{head}_2(x))_d + \sigma_{\min,d}^2 .

    Without a floor a decoder can shrink ``σ_d`` without bound on a feature it
    reproduces (almost) exactly, e.g. a constant pixel, and the likelihood
    then diverges; the floor keeps ``σ_d ≥ σ_min,d`` smoothly.

    At initialisation ``σ² ≈ init_variance + min_scale²`` and ``μ(x) ≈ init_scale · Q x``.

    :param int latent_dim: size of ``x``.
    :param int data_dim: size of ``y``.
    :param hidden: hidden layer sizes (tanh).
    :param float init_variance: the initial, input-independent learned part of ``σ²``.
    :param float init_scale: data units per latent unit at initialisation.
    :param min_scale: ``σ_min`` in data units, a float or a tensor of shape
        ``(data_dim,)`` (default 0: no floor).
    """

    def __init__(
        self, latent_dim, data_dim, hidden=(50, 50), init_variance=1.0, init_scale=1.0, min_scale=0.0, **kwargs
    ):
        super().__init__(
            latent_dim, data_dim, hidden, init_second=init_variance, shortcut_gain=init_scale, **kwargs
        )
        self.register_buffer("min_scale", _floor_buffer(min_scale, data_dim, "min_scale"))

    def forward(self, x):
        """:returns: ``(loc, scale)`` of the likelihood."""
        loc, variance = super().forward(x)
        return loc, (variance + self.min_scale.pow(2)).sqrt()

    def distribution(self, x) -> dist.Normal:
        """``p(y | x)`` as a Pyro distribution with event dimension 1."""
        loc, scale = self(x)
        return dist.Normal(loc, scale).to_event(1)


class BernoulliDecoder(TwoHeadedMLP):
    r"""
    Decoder ``x ↦ Π_d Bernoulli(y_d; σ(ℓ_d(x)))`` for binary data (e.g. binarised
    pixels), with logits ``ℓ(x)`` from the first head; there is no second head.

    At initialisation ``ℓ(x) ≈ init_scale · Q x``.

    :param int latent_dim: size of ``x``.
    :param int data_dim: size of ``y``.
    :param hidden: hidden layer sizes (tanh).
    :param float init_scale: logit units per latent unit at initialisation.
    """

    def __init__(self, latent_dim, data_dim, hidden=(50, 50), init_scale=1.0, **kwargs):
        super().__init__(latent_dim, data_dim, hidden, shortcut_gain=init_scale, second_head=False, **kwargs)

    def forward(self, x):
        """:returns: the logits ``ℓ(x)``."""
        return super().forward(x)

    def distribution(self, x) -> dist.Bernoulli:
        """``p(y | x)`` as a Pyro distribution with event dimension 1."""
        return dist.Bernoulli(logits=self(x)).to_event(1)


class PoissonDecoder(TwoHeadedMLP):
    r"""
    Decoder ``x ↦ Π_d Poisson(y_d; λ_d(x))`` for counts, with rates

    .. math:: \lambda_d(x) = \mathrm{softplus}(\mathrm{head}_1(x))_d + \lambda_{\min}.

    The softplus grows linearly, not exponentially, so a large pre-activation
    cannot overflow, and for large counts the rate is close to the first head
    itself, which lets :func:`mirrored_autoencoder` start it near the data;
    ``λ_min > 0`` keeps ``log λ`` finite where the head is very negative.
    There is no second head.

    :param int latent_dim: size of ``x``.
    :param int data_dim: size of ``y``.
    :param hidden: hidden layer sizes (tanh).
    :param float init_scale: data units per latent unit at initialisation.
    :param float min_rate: ``λ_min`` (default ``1e-6``).
    """

    def __init__(self, latent_dim, data_dim, hidden=(50, 50), init_scale=1.0, min_rate=1e-6, **kwargs):
        super().__init__(latent_dim, data_dim, hidden, shortcut_gain=init_scale, second_head=False, **kwargs)
        if not min_rate > 0:
            raise ValueError(f"min_rate must be positive, got {min_rate}")
        self.min_rate = float(min_rate)

    def forward(self, x):
        """:returns: the rates ``λ(x)``."""
        return softplus(super().forward(x)) + self.min_rate

    def distribution(self, x) -> dist.Poisson:
        """``p(y | x)`` as a Pyro distribution with event dimension 1."""
        return dist.Poisson(self(x)).to_event(1)


DECODERS = {"gaussian": GaussianDecoder, "bernoulli": BernoulliDecoder, "poisson": PoissonDecoder}


def make_decoder(likelihood: str, latent_dim: int, data_dim: int, hidden=(50, 50), **kwargs) -> TwoHeadedMLP:
    """
    The decoder for a likelihood by name.

    :param str likelihood: ``"gaussian"``, ``"bernoulli"`` or ``"poisson"``.
    :param kwargs: passed to the decoder's constructor.
    """
    if likelihood not in DECODERS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[likelihood](latent_dim, data_dim, hidden, **kwargs)


def mirrored_autoencoder(
    data_dim: int,
    latent_dim: int,
    hidden: Sequence[int] = (50, 50),
    scale: float = 1.0,
    init_variance: float = 1.0,
    likelihood: str = "gaussian",
    posterior_scale: float = 1.0,
    basis=None,
    **decoder_kwargs,
):
    r"""
    An encoder and a decoder whose shortcuts start as inverse maps,
    ``x ≈ Q y / s`` and ``y ≈ s Qᵀ x`` (``Q`` a random partial isometry, or ``basis``), with
    encoder precision ``J = (s / posterior_scale)²`` so that the posterior spread
    starts at about ``posterior_scale`` data units (one by default). For a Bernoulli decoder the
    shortcut ``s Qᵀ x`` starts the logits; for a Poisson decoder, the (softplus) rates.

    :param float scale: ``s``, data units per latent unit; choose it so the data
        span a few units of the latent space, where the PGM prior's
        hyperparameters live (e.g. ``s = std(y) / 2``; see :func:`latent_scale`).
    :param float init_variance: the Gaussian decoder's initial variance.
    :param float posterior_scale: the encoder's initial posterior standard deviation, in data units.
    :param torch.Tensor basis: ``Q`` itself, shape ``(latent_dim, data_dim)`` with orthonormal
        rows (e.g. the data's first principal directions, see
        :func:`~pyro_sin.standardize.principal_directions`); random by default.
    :param str likelihood: the decoder's likelihood, ``"gaussian"`` (default),
        ``"bernoulli"`` or ``"poisson"`` (see :func:`make_decoder`).
    :param decoder_kwargs: further arguments of the decoder (e.g. ``min_scale``).
    :returns: ``(GaussianEncoder, decoder)``.
    """
    encoder = GaussianEncoder(
        data_dim, latent_dim, hidden, init_precision=(scale / posterior_scale) ** 2, init_scale=scale
    )
    if likelihood == "gaussian":
        decoder_kwargs = {"init_variance": init_variance, **decoder_kwargs}
    decoder = make_decoder(likelihood, latent_dim, data_dim, hidden, **decoder_kwargs)
    with torch.no_grad():
        if basis is not None:
            encoder.shortcut.weight.copy_((encoder.init_precision / scale) * _check_basis(basis, latent_dim, data_dim))
        orthonormal = encoder.shortcut.weight / (encoder.init_precision / scale)
        decoder.shortcut.weight.copy_(scale * orthonormal.T)
    return encoder, decoder


def _check_basis(basis, latent_dim: int, data_dim: int) -> torch.Tensor:
    basis = torch.as_tensor(basis, dtype=torch.get_default_dtype())
    if basis.shape != (latent_dim, data_dim):
        raise ValueError(f"basis must have shape ({latent_dim}, {data_dim}), got {tuple(basis.shape)}")
    gram = basis @ basis.T
    if not torch.allclose(gram, torch.eye(latent_dim, dtype=gram.dtype, device=gram.device), atol=1e-4):
        raise ValueError("basis must have orthonormal rows")
    return basis


def latent_scale(data: torch.Tensor, latent_std: float = 2.0) -> float:
    """
    Data units per latent unit that give the data a latent standard deviation of
    ``latent_std``; data without spread (constant) count as spanning ``max(|y|, 1)``.
    """
    spread = float(data.std(0, unbiased=False).mean())
    if not spread > 0:
        spread = max(float(data.abs().max()), 1.0)
    return spread / latent_std
