"""The LDS family's classic start: a VAR by least squares and AIC, in companion form, inside SAN-LDS."""

import pytest
import torch

import pyro
from pyro.infer import SVI

from pyro_sin.elbo import SINELBO
from pyro_sin.models import DeepLatentSequence
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm.lds import autoregressive_start, fit_autoregression, lagged_windows, order_by_aic
from pyro_sin.training import fit

from baselines import VectorAutoregression  # the VAR's exact state-space likelihood (tests/examples/test_var.py)

#: what the start's two small noises (lags and decoder, 0.01 each) may cost against the VAR, in nats per frame
#: (measured: 3e-5 here, 0.0015 on the sunspot series, whose AR(9) innovations are smaller)
STEP_0_TOLERANCE = 0.002


def simulated_var3(N, T, seed):
    """Two channels of a stationary VAR(3) with slow, oscillating memory."""
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[[1.2, 0.2], [-0.1, 0.9]], [[-0.5, 0.0], [0.1, -0.2]], [[0.1, -0.1], [0.0, 0.1]]])
    y = torch.zeros(N, T + 50, 2)
    for t in range(3, T + 50):
        y[:, t] = 0.5 + sum(y[:, t - 1 - i] @ A[i].T for i in range(3)) + 0.3 * torch.randn(N, 2, generator=g)
    return 3.0 + 2.0 * y[:, 50:]  # data units that are not standardised


def heldout_log_likelihood(model, guide, y, num_samples=64):
    """The mean log-likelihood per frame, on common random numbers: the same draws whatever the parameters."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model.test_log_likelihood(guide, y, num_samples) / y.shape[1]


def test_aic_chooses_the_generating_order_and_lagged_windows_stack_the_past():
    y = simulated_var3(20, 100, seed=0)
    selection = order_by_aic(y, max_order=6)
    assert selection.order == 3 and sorted(selection.scores) == [1, 2, 3, 4, 5, 6]
    windows = lagged_windows(y, 3)  # (N, T - 2, 6): (y_t, y_{t-1}, y_{t-2})
    assert torch.equal(windows[:, 0], torch.cat([y[:, 2], y[:, 1], y[:, 0]], -1))
    assert order_by_aic(y[:, :8], max_order=12).order <= 7  # no more lags than the sequences allow


def test_least_squares_and_aic_agree_with_statsmodels():
    """The univariate AR (AutoReg) and the VAR of statsmodels on its own data sets: coefficients, noise, AIC order."""
    sm = pytest.importorskip("statsmodels.api")
    from statsmodels.tsa.api import VAR
    from statsmodels.tsa.ar_model import AutoReg, ar_select_order

    sunspots = torch.tensor(sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy())
    y = sunspots[:206].reshape(1, -1, 1)
    ours = fit_autoregression(y, 9)
    theirs = AutoReg(y.reshape(-1).numpy(), lags=9, trend="c").fit()
    torch.testing.assert_close(ours.intercept, torch.as_tensor(theirs.params[:1]))
    torch.testing.assert_close(ours.coefficients.reshape(-1), torch.as_tensor(theirs.params[1:]))
    torch.testing.assert_close(ours.noise_cov.reshape(()), torch.as_tensor(theirs.sigma2))
    assert order_by_aic(y, 12).order == max(ar_select_order(y.reshape(-1).numpy(), 12, ic="aic").ar_lags)

    macro = sm.datasets.macrodata.load_pandas().data[["realgdp", "realcons", "realinv"]].to_numpy()
    x = torch.tensor(macro).log().diff(dim=0)[None]  # quarterly growth, (1, 202, 3)
    ours = fit_autoregression(x, 2)
    theirs = VAR(x[0].numpy()).fit(2)
    torch.testing.assert_close(ours.intercept, torch.as_tensor(theirs.intercept))
    torch.testing.assert_close(ours.coefficients, torch.as_tensor(theirs.coefs))
    torch.testing.assert_close(ours.noise_cov, torch.as_tensor(theirs.sigma_u_mle))
    for data in (x, x[:, :120]):
        assert order_by_aic(data, 8).order == VAR(data[0].numpy()).select_order(8).selected_orders["aic"]


def test_the_start_is_the_companion_form_of_the_var():
    y = simulated_var3(10, 60, seed=1)
    start = autoregressive_start(y, lag_noise=0.02, decoder_noise=0.03)
    assert start.selection.order == 3 and start.prior.latent_dim == 6
    F, offset, noise = start.autoregression.companion()
    q = start.prior.global_posterior(start.natural)
    params = start.prior.point_estimate(q)
    torch.testing.assert_close(params.transition, torch.cat([F, offset[:, None]], -1))
    expected_noise = noise + torch.diag(torch.tensor([0.0, 0.0] + [0.02**2] * 4))
    torch.testing.assert_close(torch.linalg.inv(params.noise_precision), expected_noise)
    # the networks are the emission (the first block) and its likelihood message, in standardised units
    u = torch.randn(4, 2)
    potential = start.encoder.encoder(u)
    torch.testing.assert_close(potential.info_vec[:, :2], u / 0.03**2)
    torch.testing.assert_close(potential.precision[:, :2], torch.full((4, 2), 0.03**-2))
    assert (potential.precision[:, 2:] < 1e-5).all() and (potential.info_vec[:, 2:] == 0).all()
    x = torch.randn(4, 6)
    loc, scale = start.decoder.decoder(x)
    torch.testing.assert_close(loc, x[:, :2])
    torch.testing.assert_close(scale, torch.full((4, 2), 0.03), rtol=1e-4, atol=0)


def test_from_its_start_san_lds_has_the_vars_held_out_likelihood_and_training_never_ends_below_it():
    """
    The AR model SAN-LDS could not reach: from the companion start its held-out log-likelihood at step 0 is the VAR's
    (to STEP_0_TOLERANCE nats per frame: the lags' and the decoder's small noises), its forecast the VAR's, and
    training with fit(select=held-out log-likelihood) never ends below that.
    """
    train, heldout = simulated_var3(12, 60, seed=2), simulated_var3(8, 40, seed=3)
    start = autoregressive_start(train)
    var = VectorAutoregression(start.selection.order).fit(train)
    model = DeepLatentSequence(start.prior, start.decoder, len(train))
    guide = model.make_guide(start.encoder, init_natural=start.natural)
    at_start = heldout_log_likelihood(model, guide, heldout)
    exact = float(var.log_likelihood(heldout).mean()) / heldout.shape[1]
    assert abs(at_start - exact) < STEP_0_TOLERANCE
    torch.testing.assert_close(model.predict(guide, heldout, 8), var.forecast(heldout, 8), atol=0.02, rtol=0)

    svi = SVI(model, guide, NaturalAdam({"lr": 1e-3}, natural_lr=0.1), SINELBO(num_particles=2, max_plate_nesting=1))
    history = fit(
        svi,
        train,
        iterations=30,
        batch_size=6,
        progress=False,
        evaluate=lambda: {"heldout": heldout_log_likelihood(model, guide, heldout)},
        eval_every=10,
        select="heldout",
    )
    assert history.evals[0]["heldout"] == pytest.approx(at_start)
    assert heldout_log_likelihood(model, guide, heldout) >= at_start


def test_bad_arguments_are_refused_with_their_names():
    y = simulated_var3(2, 30, seed=4)
    with pytest.raises(ValueError, match="lag_noise"):
        autoregressive_start(y, lag_noise=0.0)
    with pytest.raises(ValueError, match="complete"):
        autoregressive_start(torch.full((2, 30, 2), float("nan")))
    with pytest.raises(ValueError, match="order >= 1"):
        fit_autoregression(y, 0)
    with pytest.raises(ValueError, match="max_order"):
        order_by_aic(y, 0)
    pyro.clear_param_store()
