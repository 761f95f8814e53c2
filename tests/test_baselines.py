import pytest
import torch
from torch.testing import assert_close

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.baselines import VAE, BayesianGMM, TwoStageLDS
from pyro_sin.datasets import bouncing_dot
from pyro_sin.nn import mirrored_autoencoder
from pyro_sin.pgm import LinearDynamicalSystem


def test_two_stage_fits_the_dynamics_of_its_latent_means():
    """If the VAE's latent means follow x_t = A x_{t-1} + b exactly, the fit recovers (A, b)."""
    encoder, decoder = mirrored_autoencoder(2, 2, (4,))
    vae = VAE(encoder, decoder, 10)
    A, b = torch.tensor([[0.9, -0.2], [0.2, 0.9]]), torch.tensor([0.1, -0.3])
    x = [torch.randn(50, 2)]
    for _ in range(29):
        x.append(x[-1] @ A.T + b)
    x = torch.stack(x, 1)  # (50, 30, 2)
    # feed sequences whose encoder means are x: invert the (initially linear) encoder exactly
    with torch.no_grad():
        for module in encoder.body:
            if hasattr(module, "weight"):
                module.weight.zero_()
                module.bias.zero_()
        encoder.first.weight.zero_()
        encoder.first.bias.zero_()
        encoder.second.weight.zero_()
        W = encoder.shortcut.weight
        J = encoder(torch.zeros(1, 2)).precision[0]
    y = torch.linalg.solve(W, (x * J).reshape(-1, 2).T).T.reshape(50, 30, 2)
    lds = LinearDynamicalSystem(2, col_precision=1e-6 * torch.eye(3), scale_inv=1e-6 * torch.eye(2))
    fitted = TwoStageLDS(vae, lds).fit_dynamics(y)
    assert_close(fitted.transition[:, :2], A, atol=1e-4, rtol=0)
    assert_close(fitted.transition[:, 2], b, atol=1e-4, rtol=0)


def test_vae_baseline_learns():
    pyro.set_rng_seed(0)
    data = bouncing_dot(32, 10).frames.reshape(-1, 16)
    encoder, decoder = mirrored_autoencoder(16, 2, (20,))
    vae = VAE(encoder, decoder, len(data))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    before = vae.test_mse(data, 10)
    for _ in range(200):
        svi.step(data)
    assert vae.test_mse(data, 10) < 0.5 * before


def three_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    shape = torch.tensor([[1.0, 0.3], [0.0, 0.6]])
    return torch.cat([c + torch.randn(100, 2, generator=g) @ shape for c in centers]), centers


def test_bayesian_gmm_matches_scikit_learn():
    import numpy as np

    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    y, centers = three_clusters()
    prior = dict(concentration=0.5, loc=torch.zeros(2), kappa=0.5, scale_inv=2.5 * torch.eye(2), df=4.5)
    ours = BayesianGMM(3, 2, **prior).initialize(y, locs=centers + 0.5).fit(y, 500, tol=1e-12)
    theirs = sklearn_mixture.BayesianGaussianMixture(
        n_components=3,
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=0.5,
        mean_prior=np.zeros(2),
        mean_precision_prior=0.5,
        covariance_prior=2.5 * np.eye(2),
        degrees_of_freedom_prior=4.5,
        max_iter=2000,
        tol=1e-12,
        random_state=0,
    ).fit(y.numpy())
    q = ours.global_posterior().normal_wishart
    ours_order = torch.argsort(q.loc[:, 0] * 10 + q.loc[:, 1])
    theirs_order = np.argsort(theirs.means_[:, 0] * 10 + theirs.means_[:, 1])
    tol = dict(rtol=1e-5, atol=1e-6)
    assert_close(ours.global_posterior().concentration[ours_order], torch.tensor(theirs.weight_concentration_[theirs_order]), **tol)
    assert_close(q.loc[ours_order], torch.tensor(theirs.means_[theirs_order]), **tol)
    assert_close(q.kappa[ours_order], torch.tensor(theirs.mean_precision_[theirs_order]), **tol)
    assert_close(q.df[ours_order], torch.tensor(theirs.degrees_of_freedom_[theirs_order]), **tol)
    # scikit-learn reports W⁻¹ / ν as "covariances_"
    assert_close((q.scale_inv / q.df[:, None, None])[ours_order], torch.tensor(theirs.covariances_[theirs_order]), **tol)


def test_bayesian_gmm_imputation_is_the_conditional_mean():
    y, centers = three_clusters()
    gmm = BayesianGMM(3, 2).initialize(y, locs=centers).fit(y, 200)
    observed = torch.tensor([True, False])
    imputed = gmm.impute(y[:5], observed)
    weights, comps = gmm._components()
    # brute force: E[y₂ | y₁] by quadrature over y₂
    grid = torch.linspace(-10, 16, 4001)
    points = torch.stack([y[:5, :1].expand(5, len(grid)), grid.expand(5, len(grid))], -1)  # (5, G, 2)
    density = torch.logsumexp(weights.log() + comps.log_prob(points[..., None, :]), -1).exp()
    brute = (density * grid).sum(-1) / density.sum(-1)
    assert_close(imputed[:, 1], brute, rtol=0, atol=1e-4)
    assert_close(imputed[:, 0], y[:5, 0])
