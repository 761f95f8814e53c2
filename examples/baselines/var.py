r"""
A linear vector autoregression, the baseline every sequence model should beat:

.. math:: y_t = c + \sum_{i=1}^{p} A_i\, y_{t-i} + e_t,\qquad e_t \sim N(0, Q),

fitted by least squares on the training sequences (its order given, or chosen by AIC). As a state-space model with
the companion state ``s_t = (y_t, y_{t-1}, …, y_{t-p+1})`` observed exactly in its
first block,

.. math:: s_t = F s_{t-1} + (c, 0, …, 0) + (e_t, 0, …, 0),\qquad y_t = (I\ 0 \cdots 0)\, s_t,

with ``s_1 ~ N(m₀, S₀)`` the mean and covariance of the training windows, it gives
exact forecasts, the Kalman smoother's imputation of missing frames and the exact
log-likelihood of the observed frames (prediction-error decomposition). Observations
are exact, so the smoother is the backward recursion of Durbin & Koopman, which
never inverts the (singular) predicted state covariance.
"""

import math
from typing import NamedTuple, Optional

import torch

from pyro_sin.pgm.lds import fit_autoregression, order_by_aic

_LOG_2PI = math.log(2 * math.pi)


class SmoothedFrames(NamedTuple):
    """``E[y_t | observed frames]`` and ``Cov[y_t | observed frames]``."""

    mean: torch.Tensor  # (B, T, P)
    cov: torch.Tensor  # (B, T, P, P)


class _Filtered(NamedTuple):
    predicted_mean: torch.Tensor  # (B, T, S)  a_t = E[s_t | y_{<t}]
    predicted_cov: torch.Tensor  # (B, T, S, S)
    innovation: torch.Tensor  # (B, T, P)  v_t = y_t - E[y_t | y_{<t}] (0 where missing)
    innovation_cov: torch.Tensor  # (B, T, P, P)
    log_likelihood: torch.Tensor  # (B,)
    last_mean: torch.Tensor  # (B, S)  E[s_T | y_{1:T}]


def _check_sequences(y: torch.Tensor, what: str):
    if y.dim() != 3:
        raise ValueError(f"{what}: need sequences of shape (B, T, P), got {tuple(y.shape)}")


class VectorAutoregression:
    r"""
    VAR(``order``) fitted by least squares (:func:`~pyro_sin.pgm.lds.fit_autoregression`, the fit
    SAN-LDS starts from), with forecasts, Kalman-smoother imputation and exact log-likelihoods.

    :param int order: ``p >= 1``, or None: the order with the smallest AIC up to ``max_order``
        (:func:`~pyro_sin.pgm.lds.order_by_aic`), chosen when fitted.
    :param float ridge: an L2 penalty on the coefficients ``A_i`` (not on ``c``); 0 is
        ordinary least squares.
    :param int max_order: the largest order the AIC considers.

    After :meth:`fit`: ``order``, ``coefficients`` ``(p, P, P)`` holds ``A_1 … A_p``, ``intercept``
    ``(P,)`` ``c``, ``noise_cov`` ``(P, P)`` ``Q`` (the residuals' maximum-likelihood
    covariance) and ``init_loc`` / ``init_cov`` the distribution of the first window.
    """

    def __init__(self, order: Optional[int] = 1, ridge: float = 0.0, max_order: int = 12):
        if order is not None and order < 1:
            raise ValueError(f"a VAR needs order >= 1, got {order}")
        if ridge < 0:
            raise ValueError(f"ridge must be non-negative, got {ridge}")
        self.order, self.ridge, self.max_order = order, ridge, max_order
        self.fitted = self.coefficients = None

    @property
    def name(self) -> str:
        return "VAR (AIC)" if self.order is None else f"VAR({self.order})"

    # ----- fitting ------------------------------------------------------------------

    def fit(self, y: torch.Tensor) -> "VectorAutoregression":
        """
        :param torch.Tensor y: complete training sequences, shape ``(N, T, P)`` with ``T > p``.
        :returns: ``self``.
        """
        _check_sequences(y, "VectorAutoregression.fit")
        if not torch.isfinite(y).all():
            raise ValueError("VectorAutoregression.fit needs complete, finite sequences")
        if self.order is None:
            self.order = order_by_aic(y, self.max_order).order
        self.fitted = fit_autoregression(y, self.order, self.ridge)
        self.coefficients, self.intercept, self.noise_cov, self.init_loc, self.init_cov = self.fitted[:5]
        return self

    def _check_fitted(self):
        if self.fitted is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit(y) first")

    # ----- state-space form ---------------------------------------------------------

    def companion(self):
        """
        ``(F, offset, noise)``: the state's transition ``(pP, pP)``, offset ``(pP,)`` and noise covariance
        ``(pP, pP)``.
        """
        self._check_fitted()
        return self.fitted.companion()

    def _filter(self, y: torch.Tensor, mask: Optional[torch.Tensor]) -> _Filtered:
        self._check_fitted()
        _check_sequences(y, self.name)
        B, T, P = y.shape
        if P != self.coefficients.shape[-1]:
            raise ValueError(f"{self.name} was fitted to {self.coefficients.shape[-1]} channels, got {P}")
        observed = torch.ones(B, T, dtype=torch.bool, device=y.device) if mask is None else mask.bool()
        if not torch.isfinite(y[observed]).all():
            raise ValueError(f"{self.name}: the observed frames must be finite")
        y = torch.where(observed[..., None], y, y.new_zeros(()))  # missing frames may hold NaN
        F, offset, noise = self.companion()
        mean = self.init_loc.expand(B, -1)
        cov = self.init_cov.expand(B, -1, -1)
        means, covs, innovations, innovation_covs = [], [], [], []
        log_likelihood = y.new_zeros(B)
        for t in range(T):
            means.append(mean)
            covs.append(cov)
            innovation_cov = cov[:, :P, :P]
            innovation = y[:, t] - mean[:, :P]
            chol = torch.linalg.cholesky(innovation_cov)
            gain = torch.cholesky_solve(cov[:, :P, :], chol).transpose(-1, -2)  # (B, S, P) = C Zᵀ (Z C Zᵀ)⁻¹
            white = torch.linalg.solve_triangular(chol, innovation[..., None], upper=False)[..., 0]
            half_log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            step_log_likelihood = -0.5 * (white.pow(2).sum(-1) + P * _LOG_2PI) - half_log_det
            here = observed[:, t]
            log_likelihood = log_likelihood + torch.where(here, step_log_likelihood, y.new_zeros(()))
            innovation = torch.where(here[:, None], innovation, innovation.new_zeros(()))
            innovations.append(innovation)
            innovation_covs.append(innovation_cov)
            filtered_mean = mean + (gain @ innovation[..., None])[..., 0]
            filtered_cov = cov - gain @ cov[:, :P, :]
            filtered_cov = 0.5 * (filtered_cov + filtered_cov.transpose(-1, -2))
            filtered_mean = torch.where(here[:, None], filtered_mean, mean)
            filtered_cov = torch.where(here[:, None, None], filtered_cov, cov)
            if t == T - 1:
                break
            mean = filtered_mean @ F.T + offset
            cov = F @ filtered_cov @ F.T + noise
        return _Filtered(
            torch.stack(means, 1),
            torch.stack(covs, 1),
            torch.stack(innovations, 1),
            torch.stack(innovation_covs, 1),
            log_likelihood,
            filtered_mean,
        )

    # ----- inference ----------------------------------------------------------------

    @torch.no_grad()
    def log_likelihood(self, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact ``log p(observed frames of y)`` per sequence, shape ``(B,)``; ``mask`` ``(B, T)``, 1 = observed."""
        return self._filter(y, mask).log_likelihood

    @torch.no_grad()
    def smooth(self, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> SmoothedFrames:
        r"""
        The Kalman smoother: ``E[y_t | observed]`` and ``Cov[y_t | observed]`` for every frame
        (observed frames come back as themselves, with zero covariance), by the backward
        recursion ``r_{t-1} = Zᵀ F_t⁻¹ v_t + L_tᵀ r_t``, ``N_{t-1} = Zᵀ F_t⁻¹ Z + L_tᵀ N_t L_t``,
        ``ŝ_t = a_t + C_t r_{t-1}``, ``V_t = C_t - C_t N_{t-1} C_t`` (``L_t = F`` at a missing frame).
        """
        B, T, P = y.shape
        observed = torch.ones(B, T, dtype=torch.bool, device=y.device) if mask is None else mask.bool()
        filtered = self._filter(y, observed)
        F, _, _ = self.companion()
        S = F.shape[0]
        eye = torch.eye(S, dtype=y.dtype, device=y.device)
        r = y.new_zeros(B, S)
        Nmat = y.new_zeros(B, S, S)
        means, covs = [None] * T, [None] * T
        for t in reversed(range(T)):
            a, C = filtered.predicted_mean[:, t], filtered.predicted_cov[:, t]
            chol = torch.linalg.cholesky(filtered.innovation_cov[:, t])
            # Zᵀ F_t⁻¹ v_t and Zᵀ F_t⁻¹ Z are zero outside the first block
            weighted = torch.cholesky_solve(filtered.innovation[:, t, :, None], chol)[..., 0]  # (B, P)
            precision = torch.cholesky_inverse(chol)  # (B, P, P)
            gain = torch.cholesky_solve(C[:, :P, :], chol).transpose(-1, -2)  # (B, S, P)
            update = eye.expand(B, S, S).clone()
            update[:, :, :P] = update[:, :, :P] - gain  # I - K Z
            L_obs = F @ update
            here = observed[:, t]
            L = torch.where(here[:, None, None], L_obs, F.expand(B, S, S))
            r_prev = (L.transpose(-1, -2) @ r[..., None])[..., 0]
            N_prev = L.transpose(-1, -2) @ Nmat @ L
            r_prev[:, :P] = r_prev[:, :P] + torch.where(here[:, None], weighted, weighted.new_zeros(()))
            N_prev[:, :P, :P] = N_prev[:, :P, :P] + torch.where(here[:, None, None], precision, precision.new_zeros(()))
            means[t] = a + (C @ r_prev[..., None])[..., 0]
            cov = C - C @ N_prev @ C
            covs[t] = 0.5 * (cov + cov.transpose(-1, -2))
            r, Nmat = r_prev, N_prev
        mean = torch.stack(means, 1)[..., :P]
        cov = torch.stack(covs, 1)[..., :P, :P]
        # an observed frame is known exactly: return it as such, not up to round-off
        mean = torch.where(observed[..., None], y, mean)
        cov = torch.where(observed[..., None, None], cov.new_zeros(()), cov)
        return SmoothedFrames(mean, cov)

    @torch.no_grad()
    def forecast(self, y: torch.Tensor, horizon: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``E[y_{T+1..T+H} | observed frames]``, shape ``(B, H, P)``."""
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        P = y.shape[-1]
        state = self._filter(y, mask).last_mean
        F, offset, _ = self.companion()
        steps = []
        for _ in range(horizon):
            state = state @ F.T + offset
            steps.append(state[:, :P])
        return torch.stack(steps, 1)

    # ----- the sequence experiments' interface -------------------------------------------

    def decode_posterior(self, y, mask=None, num_samples=None):
        """The smoothed frames (``num_samples`` is ignored: everything is exact)."""
        return self.smooth(y, mask).mean

    def predict(self, y, horizon, num_samples=None):
        return self.forecast(y, horizon)

    def test_log_likelihood(self, y, num_samples=None) -> float:
        return float(self.log_likelihood(y).mean())
