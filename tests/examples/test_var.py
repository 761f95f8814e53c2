import pytest
import torch

from baselines import VectorAutoregression


def simulate_var(coefficients, intercept, noise_scale, N, T, generator):
    p, P = coefficients.shape[:2]
    y = torch.zeros(N, T + 20, P)
    for t in range(p, T + 20):
        lagged = sum(y[:, t - 1 - i] @ coefficients[i].T for i in range(p))
        y[:, t] = intercept + lagged + torch.randn(N, P, generator=generator) @ noise_scale.T
    return y[:, 20:]  # burn-in dropped


def random_var(p, P, generator):
    coefficients = 0.3 * torch.randn(p, P, P, generator=generator) / P**0.5
    intercept = torch.randn(P, generator=generator)
    noise_scale = torch.tril(0.3 * torch.randn(P, P, generator=generator), -1) + torch.diag(
        0.5 + torch.rand(P, generator=generator)
    )
    return coefficients, intercept, noise_scale


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("ridge", [0.0, 3.0])
def test_fit_is_the_dense_least_squares_solution(order, ridge):
    g = torch.Generator().manual_seed(order)
    y = simulate_var(*random_var(order, 3, g), N=5, T=30, generator=g)
    var = VectorAutoregression(order, ridge=ridge).fit(y)
    # the regression written out row by row: y_t on (y_{t-1}, …, y_{t-p}, 1)
    rows, targets = [], []
    for n in range(len(y)):
        for t in range(order, y.shape[1]):
            rows.append(torch.cat([y[n, t - 1 - i] for i in range(order)] + [torch.ones(1)]))
            targets.append(y[n, t])
    X, Y = torch.stack(rows), torch.stack(targets)
    # ridge as extra rows sqrt(λ) e_j for every coefficient (not the intercept)
    extra = (ridge**0.5) * torch.eye(X.shape[1])[:-1]
    solution = torch.linalg.lstsq(torch.cat([X, extra]), torch.cat([Y, torch.zeros(len(extra), 3)])).solution
    expected = torch.stack([solution[3 * i : 3 * (i + 1)].T for i in range(order)])
    assert torch.allclose(var.coefficients, expected, atol=1e-10)
    assert torch.allclose(var.intercept, solution[-1], atol=1e-10)
    residuals = Y - X @ solution
    assert torch.allclose(var.noise_cov, residuals.T @ residuals / len(Y), atol=1e-10)


def test_fit_recovers_the_generating_process():
    g = torch.Generator().manual_seed(0)
    coefficients, intercept, noise_scale = random_var(2, 2, g)
    var = VectorAutoregression(2).fit(simulate_var(coefficients, intercept, noise_scale, N=200, T=100, generator=g))
    assert (var.coefficients - coefficients).abs().max() < 0.03
    assert (var.noise_cov - noise_scale @ noise_scale.T).abs().max() < 0.03


def dense_joint(var, T):
    """Mean (T·P,) and covariance (T·P, T·P) of y_{1:T}, by writing each s_t as a linear map of s_1 and the noises."""
    F, offset, noise = var.companion()
    S = F.shape[0]
    P = var.coefficients.shape[-1]
    # s_t = M_t s_1 + Σ_{k=2}^{t} F^{t-k} (offset + e_k)
    maps, means = [torch.eye(S)], [var.init_loc]
    for _ in range(1, T):
        maps.append(F @ maps[-1])
        means.append(F @ means[-1] + offset)
    cov = torch.zeros(T * S, T * S)
    for t in range(T):
        for u in range(T):
            block = maps[t] @ var.init_cov @ maps[u].T
            for k in range(1, min(t, u) + 1):
                block = block + torch.matrix_power(F, t - k) @ noise @ torch.matrix_power(F, u - k).T
            cov[t * S : (t + 1) * S, u * S : (u + 1) * S] = block
    pick = torch.cat([torch.arange(t * S, t * S + P) for t in range(T)])
    return torch.cat(means)[pick], cov[pick][:, pick]


@pytest.mark.parametrize("order", [1, 2])
def test_smoother_and_likelihood_are_dense_gaussian_conditioning(order):
    g = torch.Generator().manual_seed(10 + order)
    P, T = 2, 9
    var = VectorAutoregression(order).fit(simulate_var(*random_var(order, P, g), N=20, T=40, generator=g))
    y = simulate_var(*random_var(order, P, g), N=3, T=T, generator=g)
    mask = torch.ones(3, T)
    mask[0, 3:6] = 0  # a gap
    mask[1, :2] = 0  # missing start
    mask[1, -1] = 0  # missing end
    mask[2, ::2] = 0  # every other frame
    y_missing = torch.where(mask.bool()[..., None], y, torch.tensor(float("nan")))
    smoothed = var.smooth(y_missing, mask)
    log_likelihood = var.log_likelihood(y_missing, mask)
    mean, cov = dense_joint(var, T)
    for n in range(3):
        seen = mask[n].bool().repeat_interleave(P)
        hidden = ~seen
        flat = y[n].reshape(-1)
        gain = torch.linalg.solve(cov[seen][:, seen], cov[seen][:, hidden]).T
        expected_mean = mean[hidden] + gain @ (flat[seen] - mean[seen])
        expected_cov = cov[hidden][:, hidden] - gain @ cov[seen][:, hidden]
        got_mean = smoothed.mean[n][~mask[n].bool()].reshape(-1)
        assert torch.allclose(got_mean, expected_mean, atol=1e-8)
        missing_steps = (~mask[n].bool()).nonzero()[:, 0]
        for i, t in enumerate(missing_steps):
            block = expected_cov[i * P : (i + 1) * P, i * P : (i + 1) * P]
            assert torch.allclose(smoothed.cov[n, t], block, atol=1e-8)
        assert torch.equal(smoothed.mean[n][mask[n].bool()], y[n][mask[n].bool()])
        observed = torch.distributions.MultivariateNormal(mean[seen], cov[seen][:, seen]).log_prob(flat[seen])
        assert torch.allclose(log_likelihood[n], observed, atol=1e-8)


def test_forecast_is_the_conditional_mean_of_the_future():
    g = torch.Generator().manual_seed(3)
    P, T, H = 2, 6, 3
    var = VectorAutoregression(2).fit(simulate_var(*random_var(2, P, g), N=20, T=40, generator=g))
    y = simulate_var(*random_var(2, P, g), N=2, T=T + H, generator=g)
    mean, cov = dense_joint(var, T + H)
    seen = torch.arange(T * P)
    future = torch.arange(T * P, (T + H) * P)
    for n in range(2):
        flat = y[n].reshape(-1)
        expected = mean[future] + cov[future][:, seen] @ torch.linalg.solve(cov[seen][:, seen], flat[seen] - mean[seen])
        assert torch.allclose(var.forecast(y[n : n + 1, :T], H)[0].reshape(-1), expected, atol=1e-8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="order"):
        VectorAutoregression(0)
    with pytest.raises(RuntimeError, match="not fitted"):
        VectorAutoregression(1).forecast(torch.zeros(1, 3, 2), 2)
    with pytest.raises(ValueError, match="complete"):
        VectorAutoregression(1).fit(torch.full((2, 5, 2), float("nan")))
    with pytest.raises(ValueError, match="collinear"):
        VectorAutoregression(1).fit(torch.ones(2, 5, 2))
    var = VectorAutoregression(1).fit(torch.randn(4, 20, 2))
    with pytest.raises(ValueError, match="channels"):
        var.smooth(torch.zeros(1, 5, 3))


def test_statsmodels_baseline_is_the_same_autoregression_as_ours():
    """
    statsmodels' AR / VAR fitted by AIC, its forecasts and its Kalman smoother (SARIMAX / VARMAX) against our
    least-squares VAR of the same order: the same model, so the same forecasts and the same imputed gap.
    """
    sm = pytest.importorskip("statsmodels.api")
    from baselines.statsmodels_ar import StatsmodelsAutoregression

    sunspots = torch.tensor(sm.datasets.sunspots.load_pandas().data[["SUNACTIVITY"]].to_numpy())
    macro = sm.datasets.macrodata.load_pandas().data[["realgdp", "realcons", "realinv"]].to_numpy()
    for series in (sunspots / 50, torch.tensor(macro).log().diff(dim=0) * 100):
        train, test = series[None, :130], series[130:].unfold(0, 40, 10).transpose(1, 2)[:3]
        theirs = StatsmodelsAutoregression(max_order=12).fit(train)
        ours = VectorAutoregression(theirs.order).fit(train)
        torch.testing.assert_close(theirs.predict(test, 5), ours.forecast(test, 5))
        mask = torch.ones(test.shape[:2])
        mask[:, 20:25] = 0  # more than p frames after the start: its distribution (ours or the stationary one) is moot
        hidden = mask == 0
        imputed = theirs.decode_posterior(test, mask)
        torch.testing.assert_close(imputed[hidden], ours.smooth(test, mask).mean[hidden])
        assert torch.equal(imputed[~hidden], test[~hidden])
