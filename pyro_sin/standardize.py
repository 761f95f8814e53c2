r"""
An affine standardisation fitted from the training data and carried by the
networks, so that the package, not the user, copes with the data's units.

.. math:: u = (y - m) / s,\qquad y = m + s\,u

The encoder sees ``u``; a Gaussian decoder predicts ``u`` and reports its
distribution in data units, ``N(m + s μ(x), diag(s σ(x))²)``. Every network
then works at the scale its initialisation assumes, whatever the units of the
data: multiplying the data by ``c`` multiplies ``m`` and ``s`` by ``c`` and
leaves every network input, latent variable and gradient unchanged (exactly
so when ``c`` is a power of two), while the likelihood gains the constant
``-D log c``.
"""

import warnings
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

import pyro.distributions as dist

from .potential import GaussianPotential


def as_float_tensor(data, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    ``data`` (a tensor, a numpy array, a pandas DataFrame or a nested list) as a tensor, of torch's
    default dtype unless it holds floats already; an array-like given with ``like`` (e.g. a network's
    parameter) takes its dtype and device (a tensor stays as it is: a mismatch is the caller's to report).
    """
    if like is not None and not torch.is_tensor(data):
        return as_float_tensor(data).to(dtype=like.dtype, device=like.device)
    if not torch.is_tensor(data):
        try:
            # a copy (a DataFrame's values may be read-only), of a list of rows too, in row-major order
            # (a DataFrame's are column-major: the same numbers would sum in another order)
            data = np.array(data, order="C")
        except ValueError as error:  # rows of different lengths
            raise TypeError(f"the data must be numbers in a table of one width: {error}") from None
        if data.dtype == object:
            raise TypeError("the data must be numbers in a table of one width (got ragged or non-numeric values)")
    data = torch.as_tensor(data)
    return data if data.is_floating_point() else data.to(torch.get_default_dtype())


#: one column's spread this many times the median column's swamps the others under one common scale
DOMINANT_RATIO = 1e6


def _warn_of_extreme_columns(loc: torch.Tensor, std: torch.Tensor, dtype: torch.dtype, per_feature: bool) -> None:
    """
    Warns of the columns that standardisation cannot serve: one whose spread swamps the others under
    one common scale, and one whose values are constant to the precision of ``dtype`` while the others
    vary (a large offset, e.g. ``1e12 + O(1)`` in float32, leaves no trace of the variation).
    """
    varying = std > 0
    if varying.sum() < 1:
        return
    typical = std[varying].median()
    # a column's rounding step at its offset; one that spans a few steps at most carries none of its variation
    resolution = torch.finfo(dtype).eps * loc.abs()
    lost = (std <= 64 * resolution) & (resolution > 1e-3 * typical)
    if lost.any():
        columns = lost.nonzero().flatten().tolist()
        listed = ", ".join(f"{j} (mean {float(loc[j]):.6g}, spread {float(std[j]):.3g})" for j in columns[:5])
        warnings.warn(
            f"Standardization: column(s) {listed} are constant to {dtype}'s precision at their offset, "
            "so their variation, if any, is lost: centre them (subtract their mean) before converting to "
            f"{dtype}, or pass float64 data",
            RuntimeWarning,
            stacklevel=3,
        )
    if not per_feature and varying.sum() > 1 and std.max() > DOMINANT_RATIO * typical:
        j = int(std.argmax())
        warnings.warn(
            f"Standardization: column {j}'s spread ({float(std[j]):.3g}) is {float(std[j] / typical):.2g} times the "
            "median column's: with one scale for every column (per_feature=False) the other columns vanish "
            "in its units. Pass per_feature=True for columns in different units",
            RuntimeWarning,
            stacklevel=3,
        )


def check_table(data: torch.Tensor, what: str = "data", min_rows: int = 1) -> torch.Tensor:
    """Refuses ``data`` that are not a table ``(N, P)`` of at least ``min_rows`` rows, saying how to make one."""
    if data.dim() == 1:
        raise ValueError(
            f"{what} must be a table of shape (N, P), got a vector of shape {tuple(data.shape)}: "
            "reshape it to (N, 1) for one feature (data.reshape(-1, 1))"
        )
    if data.dim() != 2:
        raise ValueError(f"{what} must be a table of shape (N, P), got shape {tuple(data.shape)}")
    if len(data) < min_rows or data.shape[1] == 0:
        raise ValueError(f"{what} needs at least {min_rows} row(s) and one column, got shape {tuple(data.shape)}")
    return data


class Standardization(nn.Module):
    r"""
    ``u = (y - loc) / scale`` feature by feature, with ``loc`` and ``scale`` buffers
    (they move with ``.to(device)`` and are saved in the state dict, but are not trained).

    :param torch.Tensor loc: ``m``, shape ``(D,)``.
    :param torch.Tensor scale: ``s > 0``, shape ``(D,)``.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        loc, scale = torch.as_tensor(loc), torch.as_tensor(scale)
        if loc.dim() != 1 or scale.shape != loc.shape:
            raise ValueError(
                f"loc and scale must be vectors of one shape, got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if not (torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("loc must be finite and scale finite and positive")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    @classmethod
    def fit(cls, data: torch.Tensor, per_feature: bool = False, min_relative_scale: float = 0.1, spread: float = 1.0):
        r"""
        Fits ``m`` = the mean of every feature and ``s`` from the spread of the data.

        With ``per_feature=False`` (the default) ``s`` is one number for all
        features, the root-mean-square of their standard deviations, which keeps
        the relative sizes of the features (pixels of an image, coordinates of a
        point); with ``per_feature=True`` each feature gets its own standard
        deviation, floored at ``min_relative_scale`` times the median standard
        deviation of the features that vary, so that a (nearly) constant feature is not
        blown up into outliers and a feature in huge units does not floor the others.
        Data with no spread at all get ``s = max(|m|, 1)``. The standardised data
        then have a root-mean-square spread of ``spread``.

        A :class:`RuntimeWarning` names a feature whose spread exceeds the median's by more than
        :data:`DOMINANT_RATIO` under ``per_feature=False``, and one that is constant to its dtype's
        precision at its offset while others vary (e.g. ``1e12 + O(1)`` in float32).

        :param torch.Tensor data: shape ``(..., D)``; every leading dimension counts as data points.
        """
        data = as_float_tensor(data)
        if data.dim() < 1 or data.shape[-1] == 0:
            raise ValueError(f"need data of shape (..., D), got {tuple(data.shape)}")
        rows = data.reshape(-1, data.shape[-1])
        if not torch.isfinite(rows).all():
            raise ValueError("cannot standardise data that contain NaN or inf")
        rows = rows.double()  # the statistics in double: a large offset does not swamp the spread
        loc = rows.mean(0)
        variance = (rows - loc).pow(2).mean(0)  # (D,)
        _warn_of_extreme_columns(loc, variance.sqrt(), data.dtype, per_feature)
        # one column in huge units must not floor the others: per feature, the floor is relative
        # to the median spread
        # to the median spread of the columns that vary (a constant column must not floor them at its offset)
        varying = variance[variance > 0]
        if per_feature:
            typical = (varying.median() if len(varying) else variance.sum()).sqrt()
        else:
            typical = variance.mean().sqrt()
        if typical == 0:  # (nearly all) constant data: any positive unit will do; keep it in the data's units
            typical = loc.abs().max().clamp(min=1.0)
        if per_feature:
            scale = variance.sqrt().clamp(min=float(min_relative_scale) * typical)
        else:
            scale = typical.expand(loc.shape)
        return cls(loc.to(data.dtype), (scale / spread).to(data.dtype))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``(y - m) / s``."""
        self.check(y)
        return (y - self.loc) / self.scale

    def check(self, y):
        """A clear error for data that do not match the data the standardisation was fitted to."""
        if not torch.is_tensor(y):
            raise TypeError(f"the networks take a torch.Tensor, got {type(y).__name__}: convert with torch.as_tensor")
        if y.dim() < 1 or y.shape[-1] != self.loc.shape[-1]:
            raise ValueError(
                f"the networks were built for data with {self.loc.shape[-1]} features, "
                f"got data of shape {tuple(y.shape)}"
            )
        if y.dtype != self.loc.dtype or y.device != self.loc.device:
            raise ValueError(
                f"the data are {y.dtype} on {y.device} but the networks are {self.loc.dtype} on "
                f"{self.loc.device}: convert the data (y.to(...)), or set torch.set_default_dtype "
                "before building the networks"
            )

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """``m + s u``."""
        return self.loc + self.scale * u


class StandardizedEncoder(nn.Module):
    """
    An encoder that reads standardised data: ``encoder((y - m) / s, *rest)``.

    :param torch.nn.Module encoder: emits potentials for standardised data.
    :param Standardization standardization: ``(m, s)`` of the data.
    """

    def __init__(self, encoder: nn.Module, standardization: Standardization):
        super().__init__()
        self.encoder = encoder
        self.standardization = standardization

    @property
    def out_dim(self):
        return self.encoder.out_dim

    def forward(self, y, *args, **kwargs) -> GaussianPotential:
        return self.encoder(self.standardization(y), *args, **kwargs)


class StandardizedDecoder(nn.Module):
    r"""
    A location-scale decoder trained in standardised units and reporting its
    distribution in data units: ``y | x ~ N(m + s μ(x), diag(s σ(x))²)``.

    A floor on ``σ`` (:class:`~pyro_sin.nn.GaussianDecoder`'s ``min_scale``) thus
    becomes a floor relative to the data's scale.

    :param torch.nn.Module decoder: ``x ↦ (μ, σ)`` in standardised units.
    :param Standardization standardization: ``(m, s)`` of the data.
    """

    def __init__(self, decoder: nn.Module, standardization: Standardization):
        super().__init__()
        self.decoder = decoder
        self.standardization = standardization

    def forward(self, x):
        """:returns: ``(loc, scale)`` of the likelihood in data units."""
        loc, scale = self.decoder(x)
        return self.standardization.inverse(loc), self.standardization.scale * scale

    def distribution(self, x) -> dist.Normal:
        """``p(y | x)`` in data units, with event dimension 1."""
        loc, scale = self(x)
        return dist.Normal(loc, scale).to_event(1)


def standardized_autoencoder(
    data: torch.Tensor,
    latent_dim: int,
    hidden: Sequence[int] = (50, 50),
    *,
    likelihood: str = "gaussian",
    spread: float = 1.0,
    latent_std: float = 2.0,
    min_scale: float = 0.05,
    init_noise: float = 0.15,
    per_feature: bool = False,
    shortcut: str = "auto",
    **decoder_kwargs,
):
    r"""
    :func:`~pyro_sin.nn.mirrored_autoencoder` for data in any units: the
    networks work on the standardised data ``u = (y - m) / s``
    (:meth:`Standardization.fit`, root-mean-square spread ``spread``), which
    span about ``latent_std`` units of the latent space at initialisation, and a
    Gaussian decoder answers in data units with its standard deviation floored at
    ``min_scale`` times the data's spread. A Bernoulli or Poisson decoder reads the
    latent space as before and models the data as given.

    :param torch.Tensor data: the training data, shape ``(N, D)``.
    :param str likelihood: ``"gaussian"``, ``"bernoulli"`` or ``"poisson"``.
    :param float spread: the spread of the networks' inputs and outputs; with the
        networks' initial weights and a learning rate fixed, it sets how fast the
        encoder learns relative to the decoder.
    :param float latent_std: latent standard deviation of the data at initialisation.
    :param float min_scale: floor on the Gaussian decoder's standard deviation, relative
        to the data's spread.
    :param float init_noise: the initial spread of the encoder's posterior and of the
        Gaussian decoder's noise, relative to the data's spread.
    :param bool per_feature: standardise each feature by its own spread (see
        :meth:`Standardization.fit`).
    :param str shortcut: the subspace the networks' linear shortcuts start on:
        ``"pca"``, the standardised data's first ``latent_dim`` principal directions
        (:func:`principal_directions`), so that the initial encoding keeps as much of the
        data's spread as a linear map can; ``"random"``, a random one; ``"auto"`` (default),
        ``"pca"`` when ``latent_dim`` is smaller than both the data's dimension and its
        number of points (a square map keeps everything whatever its orientation).
    :returns: ``(StandardizedEncoder, decoder)``.
    """
    from .nn import mirrored_autoencoder

    if shortcut not in ("auto", "pca", "random"):
        raise ValueError(f"shortcut must be 'auto', 'pca' or 'random', got {shortcut!r}")
    # the networks are built in torch's default dtype, and so is their standardisation
    data = check_table(as_float_tensor(data).to(torch.get_default_dtype()), "standardized_autoencoder's data", 2)
    standardization = Standardization.fit(data, per_feature=per_feature, spread=spread).to(data.device)
    if shortcut == "auto":
        shortcut = "pca" if latent_dim < min(data.shape[-1], len(data)) else "random"
    basis = principal_directions(standardization(data), latent_dim) if shortcut == "pca" else None
    if likelihood == "gaussian":
        decoder_kwargs = {
            "min_scale": min_scale * spread,
            "init_variance": (init_noise * spread) ** 2,
            **decoder_kwargs,
        }
    encoder, decoder = mirrored_autoencoder(
        data.shape[-1],
        latent_dim,
        hidden,
        scale=spread / latent_std,
        likelihood=likelihood,
        posterior_scale=init_noise * spread,
        basis=basis,
        **decoder_kwargs,
    )
    encoder = StandardizedEncoder(encoder, standardization)
    if likelihood == "gaussian":
        decoder = StandardizedDecoder(decoder, standardization)
    return encoder.to(data.device), decoder.to(data.device)


def principal_directions(data: torch.Tensor, num_directions: int) -> torch.Tensor:
    r"""
    The first ``num_directions`` principal directions of ``data`` (the right singular
    vectors of the centred data with the largest singular values), as orthonormal rows.

    :param torch.Tensor data: shape ``(N, P)``.
    :returns: shape ``(num_directions, P)``, on the CPU in the default dtype.
    :raises ValueError: when ``num_directions`` exceeds ``min(N, P)``.
    """
    data = data.detach().reshape(-1, data.shape[-1])
    if not 1 <= num_directions <= min(data.shape):
        raise ValueError(f"need 1 <= num_directions <= min(N, P) = {min(data.shape)}, got {num_directions}")
    centred = (data - data.mean(0)).cpu().double()  # in double: the directions of small spread stay accurate
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:num_directions].to(torch.get_default_dtype())


class LinearStart(NamedTuple):
    """What :func:`ppca_autoencoder` built: the networks and the probabilistic PCA they start as."""

    encoder: StandardizedEncoder
    decoder: StandardizedDecoder
    directions: torch.Tensor  # (D, P): the principal directions of the standardised data, orthonormal rows
    variances: torch.Tensor  # (D,): the data's variance along each of them
    noise: float  # σ²: the decoder's initial noise variance, in standardised units


def ppca_autoencoder(
    data: torch.Tensor,
    latent_dim: int,
    hidden: Sequence[int] = (50, 50),
    *,
    per_feature: bool = True,
    noise: Optional[float] = None,
    noise_floor: float = 0.1,
    body_gain: float = 1.0,
) -> LinearStart:
    r"""
    A Gaussian decoder and an encoder whose linear paths start as probabilistic PCA of the
    standardised data ``u = (y - m) / s`` (:meth:`Standardization.fit`), with their nonlinear
    parts starting at zero beside them: the heads' weights are zero and the hidden layers
    start at LeCun's scale (``body_gain``, see :class:`~pyro_sin.nn.TwoHeadedMLP`), so the
    heads learn from the first step.

    With ``U_D`` the first ``D`` principal directions of ``u`` and ``λ_d`` the variances along
    them, the decoder starts as

    .. math:: u = \bar u + U_D\,(\Lambda_D - \sigma^2 I)^{1/2}\,x + \epsilon,\qquad
              \epsilon \sim N(0, \sigma^2 I),

    and the encoder's potential as that decoder's exact likelihood of ``x``: a diagonal
    precision ``J = (Λ_D - σ²)/σ²`` and mean ``x̂ = (Λ_D - σ²)^{-1/2} U_Dᵀ (u - ū)``. The data are
    then white in the latent space, and a model with a latent Gaussian mixture is, at its
    start, the mixture of probabilistic PCA components ``N(ū + W μ_k, W Σ_k Wᵀ + σ² I)``
    (``W = U_D (Λ_D - σ² I)^{1/2}``); with ``D`` the data's dimension, a Gaussian mixture of the
    data themselves. ``σ²`` defaults to the mean variance of the discarded directions
    (probabilistic PCA's maximum-likelihood noise), or a hundredth of the smallest variance when
    none is discarded, and at least ``10⁻⁴`` of the mean variance; the decoder's noise standard
    deviation is floored at ``noise_floor`` times its initial value (it can learn to shrink, not
    to vanish).

    :param torch.Tensor data: the training data, shape ``(N, P)``.
    :param int latent_dim: ``D``, at most ``P``.
    :param bool per_feature: standardise each feature by its own spread (for tables whose
        columns come in different units; see :meth:`Standardization.fit`).
    :param float noise: ``σ²`` in standardised units, instead of the default.
    :param float noise_floor: the decoder's least noise standard deviation, relative to ``σ``.
    :returns: a :class:`LinearStart`.
    """
    from .nn import GaussianDecoder, GaussianEncoder, _inverse_softplus

    data = check_table(as_float_tensor(data), "ppca_autoencoder's data", 2)  # networks in the data's dtype
    N, P = data.shape
    if not 1 <= latent_dim <= P:
        raise ValueError(f"latent_dim must lie in [1, {P}] (the data's dimension), got {latent_dim}")
    standardization = Standardization.fit(data, per_feature=per_feature).to(data)
    u = standardization(data).double()  # the spectrum in double: small variances stay accurate
    centre = u.mean(0)
    covariance = (u - centre).T @ (u - centre) / N
    variances, directions = torch.linalg.eigh(0.5 * (covariance + covariance.T))
    variances, directions = variances.flip(0).clamp(min=0), directions.flip(1)  # descending
    D = latent_dim
    if noise is None:
        noise = float(variances[D:].mean()) if D < P else 0.01 * float(variances[-1])
    noise = max(float(noise), 1e-4 * float(variances.mean()), torch.finfo(data.dtype).tiny)
    gain = (variances[:D] - noise).clamp(min=1e-3 * noise)  # (D,): W = U_D diag(√gain)
    basis = directions[:, :D]  # (P, D)
    dtype = data.dtype
    encoder = GaussianEncoder(P, D, hidden, body_gain=body_gain).to(dtype)
    floor = noise_floor * noise**0.5
    decoder = GaussianDecoder(D, P, hidden, init_variance=noise - floor**2, min_scale=floor, body_gain=body_gain)
    decoder = decoder.to(dtype)
    with torch.no_grad():
        for net in (encoder, decoder):  # the nonlinear part starts at zero (its hidden layers do not)
            net.first.weight.zero_()
            net.second.weight.zero_()
        reading = (gain.sqrt() / noise)[:, None] * basis.T  # h = J x̂ = diag(√gain / σ²) U_Dᵀ (u - ū)
        encoder.shortcut.weight.copy_(reading.to(dtype))
        encoder.first.bias.copy_((-reading @ centre).to(dtype))
        encoder.second.bias.copy_(torch.tensor([_inverse_softplus(float(j)) for j in gain / noise], dtype=dtype))
        decoder.shortcut.weight.copy_((basis * gain.sqrt()).to(dtype))
        decoder.first.bias.copy_(centre.to(dtype))
        decoder.second.bias.fill_(_inverse_softplus(noise - floor**2))  # σ² with the floor's share
    encoder = StandardizedEncoder(encoder, standardization).to(data.device)
    decoder = StandardizedDecoder(decoder, standardization).to(data.device)
    to = dict(dtype=dtype, device=data.device)
    return LinearStart(encoder, decoder, basis.T.to(**to), variances[:D].to(**to), noise)
