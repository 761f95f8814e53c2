r"""
The autoregression a time-series user already has: statsmodels' ``AutoReg`` (one channel) or
``VAR`` (several), its order chosen by AIC up to ``max_order`` (``ar_select_order`` /
``VAR.select_order``), fitted by least squares; forecasts by its own ``predict`` / ``forecast``
from each context, and gap imputation by statsmodels' Kalman smoother of that same model
(``SARIMAX`` with the AR's parameters for one channel, ``VARMAX`` with the VAR's for several),
started from its stationary distribution.

statsmodels fits one series: several training sequences are joined end to end, as a user would,
which adds a few spurious transitions (``order`` per join) to the regression. Everything here is
deterministic: no seed changes a number.

Needs statsmodels (the extra ``[examples]``).
"""

import contextlib
import warnings
from typing import Optional

import numpy as np
import torch


@contextlib.contextmanager
def _quiet():
    """statsmodels' warnings about frequencies, convergence and start parameters say nothing about fixed parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class StatsmodelsAutoregression:
    """
    :param int max_order: the largest order the AIC considers (fewer where the series is too short).
    :param int order: a fixed order instead of the AIC's choice.
    """

    def __init__(self, max_order: int = 12, order: Optional[int] = None):
        self.max_order, self.order = max_order, order
        self.results = None

    @property
    def name(self) -> str:
        return "statsmodels AR/VAR (AIC)"

    def fit(self, train: torch.Tensor) -> "StatsmodelsAutoregression":
        """:param torch.Tensor train: training sequences ``(N, T, P)``, joined end to end."""
        from statsmodels.tsa.api import VAR
        from statsmodels.tsa.ar_model import AutoReg, ar_select_order

        series = train.detach().cpu().double().reshape(-1, train.shape[-1]).numpy()
        self.channels, self.dtype, self.device = series.shape[-1], train.dtype, train.device
        with _quiet():
            if self.channels == 1:
                if self.order is None:
                    self.order = max(ar_select_order(series[:, 0], self.max_order, ic="aic", trend="c").ar_lags or [1])
                self.results = AutoReg(series[:, 0], lags=self.order, trend="c").fit()
                params = self.results.params
                self.intercept, self.coefficients = params[:1], params[1:].reshape(self.order, 1, 1)
                self.noise_cov = np.array([[self.results.sigma2]])
            else:
                model = VAR(series)
                if self.order is None:
                    self.order = max(int(model.select_order(self.max_order, trend="c").selected_orders["aic"]), 1)
                self.results = model.fit(self.order, trend="c")
                self.intercept, self.coefficients = self.results.intercept, self.results.coefs
                self.noise_cov = self.results.sigma_u_mle
        return self

    def _tensor(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)

    # ----- the sequence harness's interface --------------------------------------------------

    def predict(self, y: torch.Tensor, horizon: int, num_samples=None) -> torch.Tensor:
        """statsmodels' forecast of ``horizon`` frames after each context ``(B, T, P)``: ``(B, horizon, P)``."""
        from statsmodels.tsa.ar_model import AutoReg

        contexts = y.detach().cpu().double().numpy()
        with _quiet():
            if self.channels == 1:
                T = contexts.shape[1]
                params, last = self.results.params, T + horizon - 1
                forecasts = [AutoReg(c[:, 0], lags=self.order, trend="c").predict(params, T, last) for c in contexts]
                forecasts = np.asarray(forecasts)[..., None]
            else:
                forecasts = [self.results.forecast(c[-self.order :], horizon) for c in contexts]
        return self._tensor(forecasts)

    def _state_space(self, series: np.ndarray):
        """The fitted AR as statsmodels' state-space model of one series (NaN where missing), parameters fixed."""
        from statsmodels.tsa.statespace.sarimax import SARIMAX
        from statsmodels.tsa.statespace.varmax import VARMAX

        if self.channels == 1:
            model = SARIMAX(series[:, 0], order=(self.order, 0, 0), trend="c")
            params = np.concatenate([self.intercept, self.coefficients.reshape(-1), self.noise_cov.reshape(-1)])
        else:
            model = VARMAX(series, order=(self.order, 0), trend="c")
            rows = np.concatenate(list(self.coefficients), -1)  # (P, pP): row i holds A_1[i], …, A_p[i]
            chol = np.linalg.cholesky(self.noise_cov)
            params = np.concatenate([self.intercept, rows.reshape(-1), chol[np.tril_indices(self.channels)]])
        return model, params

    def decode_posterior(self, y: torch.Tensor, mask: Optional[torch.Tensor] = None, num_samples=None) -> torch.Tensor:
        """The Kalman smoother's ``E[y_t | observed frames]`` of every frame (observed ones as they are)."""
        if mask is None:
            return y
        frames = y.detach().cpu().double().numpy().copy()
        frames[~mask.bool().cpu().numpy()] = np.nan
        smoothed = []
        with _quiet():
            for series in frames:
                model, params = self._state_space(series)
                smoothed.append(model.smooth(params, cov_type="none").smoother_results.smoothed_forecasts.T)  # (T, P)
        return torch.where(mask.bool()[..., None], y, self._tensor(smoothed))

    def test_log_likelihood(self, y, num_samples=None) -> float:
        return float("nan")
