r"""
The classic model the LDS family contains, and SAN-LDS started from it.

A vector autoregression of order ``p`` on ``P`` channels,

.. math:: u_t = c + \sum_{i=1}^{p} A_i\, u_{t-i} + e_t,\qquad e_t \sim N(0, \Sigma),

is fitted by least squares, its order chosen by AIC (:func:`order_by_aic`). In companion form,
with the state ``x_t = (u_t, u_{t-1}, …, u_{t-p+1})`` of dimension ``D = pP``,

.. math:: x_t = F x_{t-1} + (c, 0, …, 0) + w_t,\qquad u_t = (I\ 0 \cdots 0)\, x_t,

it is a linear dynamical system whose emission is the first block. :func:`autoregressive_start`
builds SAN-LDS around it: a :class:`~pyro_sin.pgm.lds.LinearDynamicalSystem` with latent dimension
``pP``, ``q(B, Λ)`` a Matrix-Normal-Wishart centred on ``[F c]``, an encoder and a decoder whose
linear paths are the emission and its exact likelihood message, and whose nonlinear parts start at
zero. Its held-out log-likelihood at step 0 is then the autoregression's, but for two small noises
the VAR does not have:

* the companion's noise ``w_t`` is singular (the lower blocks are copies), and a Wishart needs a
  full-rank precision: the lower blocks get the variance ``lag_noise²``, each lag a slightly
  blurred copy;
* the decoder's noise ``decoder_noise²`` on the observed block (its floor: a Gaussian decoder
  without one can shrink onto a channel it reproduces exactly).

Both change the one-step prediction variance by about ``ΔΣ = decoder_noise² (I + Σ_i A_i A_iᵀ) +
lag_noise² Σ_i A_i A_iᵀ``, so the held-out log-likelihood by about ``½ tr(Σ⁻¹ ΔΣ)`` nats per frame
either way: at the defaults, ``0.01`` of each channel's spread, measured at 0.0015 nats per frame
on the sunspot series (AR(9), the VAR's exact likelihood against SAN-LDS's importance-sampled one,
in float64) and ``3e-5`` on the simulated VAR(3) of ``tests/pgm/test_lds_classic.py``, whose forecasts
then agree with the VAR's to ``1e-3``.
"""

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from ...distributions import MatrixNormalWishart, RegressionStats
from ...nn import GaussianDecoder, GaussianEncoder
from ...standardize import Standardization, StandardizedDecoder, StandardizedEncoder, as_float_tensor
from .prior import LinearDynamicalSystem

#: the encoder's precision on the lags it cannot see (a frame informs only the first block): as good as none
_NO_EVIDENCE = 1e-6


class Autoregression(NamedTuple):
    """A fitted VAR(p): ``u_t = c + Σ_i A_i u_{t-i} + e_t``, ``e_t ~ N(0, Σ)``."""

    coefficients: torch.Tensor  # (p, P, P)  A_1 … A_p
    intercept: torch.Tensor  # (P,)  c
    noise_cov: torch.Tensor  # (P, P)  Σ, the residuals' maximum-likelihood covariance
    init_loc: torch.Tensor  # (pP,)  mean of the training windows (u_t, …, u_{t-p+1})
    init_cov: torch.Tensor  # (pP, pP)  their covariance
    num_rows: int  # regression rows (one per predicted frame)

    @property
    def order(self) -> int:
        return self.coefficients.shape[0]

    @property
    def state_dim(self) -> int:
        """``pP``, the companion state's dimension."""
        return self.coefficients.shape[0] * self.coefficients.shape[1]

    def companion(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(F, offset, noise)``: the companion transition ``(pP, pP)``, offset and (singular) noise covariance."""
        p, P = self.coefficients.shape[:2]
        S, like = p * P, self.coefficients
        F = like.new_zeros(S, S)
        F[:P] = torch.cat(list(self.coefficients), -1)
        F[P:, : S - P] = torch.eye(S - P, dtype=like.dtype, device=like.device)
        offset = like.new_zeros(S)
        offset[:P] = self.intercept
        noise = like.new_zeros(S, S)
        noise[:P, :P] = self.noise_cov
        return F, offset, noise


class OrderSelection(NamedTuple):
    """The order an information criterion chose, and the criterion of every order tried."""

    order: int
    scores: Dict[int, float]  # order -> criterion (smaller is better)


def _check_sequences(y: torch.Tensor, what: str) -> torch.Tensor:
    y = as_float_tensor(y)
    if y.dim() != 3:
        raise ValueError(f"{what}: need sequences of shape (N, T, P), got {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError(f"{what} needs complete, finite sequences")
    return y


def lagged_windows(y: torch.Tensor, order: int) -> torch.Tensor:
    """``(N, T-p+1, pP)``: the windows ``(u_t, u_{t-1}, …, u_{t-p+1})`` of every sequence, for ``t >= p``."""
    T = y.shape[1]
    return torch.cat([y[:, order - 1 - i : T - i] for i in range(order)], -1)


def fit_autoregression(y: torch.Tensor, order: int, ridge: float = 0.0, first_target: Optional[int] = None):
    r"""
    VAR(``order``) by least squares on the sequences ``y``, each predicted from its own past.

    :param torch.Tensor y: complete training sequences, shape ``(N, T, P)`` with ``T > order``.
    :param float ridge: an L2 penalty on the ``A_i`` (not on ``c``); 0 is ordinary least squares.
    :param int first_target: the first step of each sequence that is predicted (default ``order``);
        a larger one fits every order on the same frames (:func:`order_by_aic`).
    :returns: an :class:`Autoregression`.
    """
    y = _check_sequences(y, "fit_autoregression")
    p, (T, P) = order, y.shape[1:]
    first_target = p if first_target is None else first_target
    if p < 1:
        raise ValueError(f"a VAR needs order >= 1, got {p}")
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    if not p <= first_target < T:
        raise ValueError(f"VAR({p}) needs sequences longer than {first_target} steps, got {T}")
    windows = lagged_windows(y, p)  # (N, T-p+1, pP); windows[:, k] ends at step k + p - 1
    inputs = windows[:, first_target - p : -1].reshape(-1, p * P)  # (u_{t-1}, …, u_{t-p})
    targets = y[:, first_target:].reshape(-1, P)  # u_t
    design = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], -1)  # (n, pP + 1)
    penalty = torch.full((p * P + 1,), float(ridge), dtype=y.dtype, device=y.device)
    penalty[-1] = 0.0
    try:
        chol = torch.linalg.cholesky(design.T @ design + torch.diag(penalty))
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            f"VAR({p}): the lagged frames are collinear (too few training steps for {p * P} "
            "regressors, or constant channels); pass ridge > 0"
        ) from error
    solution = torch.cholesky_solve(design.T @ targets, chol)  # (pP + 1, P)
    residuals = targets - design @ solution
    flat = windows.reshape(-1, p * P)
    init_loc = flat.mean(0)
    centred = flat - init_loc
    return Autoregression(
        coefficients=solution[:-1].T.reshape(P, p, P).transpose(0, 1).contiguous(),
        intercept=solution[-1],
        noise_cov=residuals.T @ residuals / len(residuals),
        init_loc=init_loc,
        init_cov=centred.T @ centred / len(flat),
        num_rows=len(residuals),
    )


def _largest_order(y: torch.Tensor, max_order: int) -> int:
    """The largest order up to ``max_order`` that leaves more regression rows than regressors."""
    N, T, P = y.shape
    order = min(max_order, T - 1)
    while order > 1 and N * (T - order) <= order * P + 1 + P:
        order -= 1
    return max(order, 1)


def order_by_aic(y: torch.Tensor, max_order: int = 12) -> OrderSelection:
    r"""
    The VAR order ``1 … max_order`` (fewer where the sequences are too short) with the smallest

    .. math:: \mathrm{AIC}(p) = n \log\lvert\hat\Sigma_p\rvert + 2 P (pP + 1),

    every order fitted on the same frames (those after the first ``max_order`` of each sequence),
    as statsmodels' ``VAR.select_order`` and ``ar_select_order`` do.

    :param torch.Tensor y: training sequences ``(N, T, P)``.
    """
    y = _check_sequences(y, "order_by_aic")
    if max_order < 1:
        raise ValueError(f"max_order must be at least 1, got {max_order}")
    largest = _largest_order(y, max_order)
    P = y.shape[-1]
    scores = {}
    for p in range(1, largest + 1):
        fitted = fit_autoregression(y.double(), p, first_target=largest)
        log_det = torch.linalg.slogdet(fitted.noise_cov)[1]
        scores[p] = float(fitted.num_rows * log_det + 2 * P * (p * P + 1))
    return OrderSelection(min(scores, key=scores.get), scores)


def regression_statistics(windows: torch.Tensor) -> RegressionStats:
    """``Σ (1, x_t uᵀ, u uᵀ, x_t x_tᵀ)``, ``u = (x_{t-1}, 1)``, over consecutive windows ``(N, W, D)``."""
    previous, following = windows[:, :-1].reshape(-1, windows.shape[-1]), windows[:, 1:].reshape(-1, windows.shape[-1])
    inputs = torch.cat([previous, previous.new_ones(len(previous), 1)], -1)
    count = torch.tensor(float(len(inputs)), dtype=windows.dtype, device=windows.device)
    return RegressionStats(count, following.T @ inputs, inputs.T @ inputs, following.T @ following)


class AutoregressiveStart(NamedTuple):
    """SAN-LDS around a fitted VAR (:func:`autoregressive_start`), for :class:`~pyro_sin.models.DeepLatentSequence`."""

    prior: LinearDynamicalSystem  # latent dimension pP, p(B, Λ) centred on the companion form
    natural: Dict[str, torch.Tensor]  # λ of q(B, Λ): init_natural of the guide
    encoder: StandardizedEncoder  # per frame; its linear path is the emission's likelihood message
    decoder: StandardizedDecoder  # its linear path is the emission (the first block)
    autoregression: Autoregression  # fitted to the standardised data
    selection: Optional[OrderSelection]  # the order's AIC, when it was chosen from the data


def _inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    return value + torch.log(-torch.expm1(-value))


def companion_autoencoder(
    standardization: Standardization,
    order: int,
    hidden: Sequence[int] = (50, 50),
    decoder_noise: float = 0.01,
) -> Tuple[StandardizedEncoder, StandardizedDecoder]:
    r"""
    Per-frame networks on the companion state ``x = (u_t, …, u_{t-p+1})`` of standardised frames
    ``u``: the decoder's mean is ``u_t = (I 0 ⋯ 0) x`` and its noise ``decoder_noise`` (also its
    floor); the encoder's potential is that likelihood's message, ``h = (u / σ², 0)``,
    ``J = (1 / σ², ≈0)`` (a frame says nothing about the lags). The nonlinear parts (the heads on the
    hidden layers) start at zero, so the networks are exactly these linear maps at step 0; their
    hidden layers start at LeCun's scale, so the heads' gradients are not products of small weights.

    :returns: ``(encoder, decoder)`` reading and answering in data units.
    """
    P = standardization.loc.shape[-1]
    D = order * P
    noise = torch.tensor(float(decoder_noise))
    if not noise > 0:
        raise ValueError(f"decoder_noise must be positive, got {decoder_noise}")
    encoder = GaussianEncoder(P, D, hidden, body_gain=1.0)
    decoder = GaussianDecoder(D, P, hidden, min_scale=float(noise), body_gain=1.0)
    with torch.no_grad():
        for net in (encoder, decoder):
            for head in (net.first, net.second):
                head.weight.zero_()
            net.first.bias.zero_()
            net.shortcut.weight.zero_()
        precision = noise.pow(-2)
        encoder.shortcut.weight[:P].copy_(precision * torch.eye(P))
        encoder.second.bias.copy_(_inverse_softplus(torch.tensor(_NO_EVIDENCE)))
        encoder.second.bias[:P] = _inverse_softplus(precision)
        decoder.shortcut.weight[:, :P].copy_(torch.eye(P))
        decoder.second.bias.copy_(_inverse_softplus(1e-6 * noise.pow(2)))  # the variance is the floor's, to 1e-6
    device = standardization.loc.device
    return (
        StandardizedEncoder(encoder, standardization).to(device),
        StandardizedDecoder(decoder, standardization).to(device),
    )


def _block_diagonal_noise(noise_cov: torch.Tensor, state_dim: int, lag_variance: float) -> torch.Tensor:
    P = noise_cov.shape[-1]
    full = lag_variance * torch.eye(state_dim, dtype=noise_cov.dtype, device=noise_cov.device)
    full[:P, :P] = noise_cov
    return full


def autoregressive_start(
    y: torch.Tensor,
    order: Optional[int] = None,
    *,
    max_order: int = 12,
    hidden: Sequence[int] = (50, 50),
    lag_noise: float = 0.01,
    decoder_noise: float = 0.01,
    prior_strength: Optional[float] = None,
    name: str = "x",
) -> AutoregressiveStart:
    r"""
    SAN-LDS started from the VAR it contains, fitted to the training sequences ``y``.

    The frames are standardised channel by channel (:class:`~pyro_sin.standardize.Standardization`);
    the VAR's order is ``order`` or the AIC's choice up to ``max_order`` (:func:`order_by_aic`), and
    the latent dimension ``pP``. The LDS's dynamics:

    * ``p(B, Λ)``: a Matrix-Normal-Wishart centred on the companion ``[F c]`` with ``E[Λ]⁻¹ =``
      ``diag(Σ, ε₀² I)``, the strength of ``prior_strength`` transitions (default ``pP + 2``, the
      fewest that give ``E[Λ]`` a finite mean), ``K₀`` that many times the windows' mean ``u uᵀ``;
    * ``q(B, Λ)``: that prior updated with the companion windows of the training sequences, the
      conjugate posterior were the latents those windows: centred on ``[F c]`` (the least-squares
      fit), with the confidence of the ``n`` training transitions, ``E[Λ]⁻¹ = diag(Σ, lag_noise² I)``
      (``ε₀`` is chosen for that);
    * ``x_1 ~ N(m₀, S₀ + lag_noise² I)``, the windows' mean and covariance (as the VAR's
      state-space form starts).

    Everything is built in the dtype of ``y``. Prefer float64: the start's potentials and lag
    noise have precisions of ``1e4`` (at the defaults), and in float32 the information-form
    Kalman filter then loses about 0.07 nats per frame of the held-out likelihood (measured on
    the sunspot series against the VAR's exact one; 0.0015 in float64).

    :param torch.Tensor y: complete training sequences ``(N, T, P)`` in data units.
    :param int order: the VAR's order ``p``; by default chosen by AIC.
    :param float lag_noise: the standard deviation of the lags' copy noise (standardised units).
    :param float decoder_noise: the decoder's noise and floor (standardised units).
    :param hidden: the networks' hidden layers.
    :param str name: the latent site's name.
    :returns: an :class:`AutoregressiveStart`.
    """
    y = _check_sequences(y, "autoregressive_start")
    for what, value in (("lag_noise", lag_noise), ("decoder_noise", decoder_noise)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what} must be positive and finite, got {value}")
    standardization = Standardization.fit(y, per_feature=True).to(y.device)
    u = standardization(y)
    selection = None
    if order is None:
        selection = order_by_aic(u, max_order)
        order = selection.order
    fitted = fit_autoregression(u.double(), order)  # in double: the normal equations square the condition
    D = fitted.state_dim
    F, offset, _ = fitted.companion()
    lag_variance = float(lag_noise) ** 2
    stats = regression_statistics(lagged_windows(u.double(), order))
    n = float(stats.count)
    df = float(D + 2 if prior_strength is None else prior_strength)
    if not df > D - 1:
        raise ValueError(f"prior_strength must exceed pP - 1 = {D - 1}, got {prior_strength}")
    transition = torch.cat([F, offset[:, None]], -1)  # (D, D + 1)
    mean_outer = stats.input_outer / n
    prior_noise = _block_diagonal_noise(fitted.noise_cov, D, lag_variance * (df + n) / df)
    # q = prior + the windows' statistics, in closed form: the least-squares fit is [F c], so the mean stays there
    # and the residuals add n Σ to the first block only
    posterior_noise = _block_diagonal_noise(fitted.noise_cov, D, lag_variance)
    posterior = MatrixNormalWishart(
        transition, (df + n) * mean_outer, (df + n) * posterior_noise, torch.tensor(df + n, dtype=F.dtype)
    )
    dtype = y.dtype
    prior = LinearDynamicalSystem(
        D,
        name,
        init_loc=fitted.init_loc.to(dtype),
        init_precision=torch.linalg.inv(fitted.init_cov + lag_variance * torch.eye(D, dtype=F.dtype)).to(dtype),
        transition_loc=transition.to(dtype),
        col_precision=(df * mean_outer).to(dtype),
        scale_inv=(df * prior_noise).to(dtype),
        df=df,
    ).to(dtype=dtype, device=y.device)
    natural = {key: value.to(dtype=dtype, device=y.device) for key, value in posterior.natural_params._asdict().items()}
    encoder, decoder = companion_autoencoder(standardization, order, hidden, decoder_noise)
    encoder, decoder = encoder.to(dtype), decoder.to(dtype)
    fitted = Autoregression(*(v.to(dtype) if torch.is_tensor(v) else v for v in fitted))
    return AutoregressiveStart(prior, natural, encoder, decoder, fitted, selection)
