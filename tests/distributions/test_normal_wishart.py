
import pytest
import torch
from torch.testing import assert_close

import pyro.distributions as dist

from pyro_sin.distributions import (
    GaussianStats,
    NormalWishart,
    NormalWishartNatural,
    Wishart,
    conjugate_update,
    dirichlet_expected_log,
    dirichlet_kl,
    expected_gaussian_log_likelihood,
)

from tests.helpers import random_spd


def random_nw(batch=(3,), D=2):
    return NormalWishart(
        loc=torch.randn(batch + (D,)),
        kappa=torch.rand(batch) + 0.5,
        scale_inv=random_spd(batch, D),
        df=D + 1.0 + 3 * torch.rand(batch),
    )


def test_wishart_rsample_is_quiet_and_has_the_right_mean():
    D = 3
    P = random_spd((), D)
    w = Wishart(torch.tensor(6.0), precision_matrix=P)
    samples = w.rsample((40000,))  # pytest turns a warning into an error
    assert_close(samples.mean(0), 6.0 * torch.linalg.inv(P), atol=0.05, rtol=0.03)
    torch_w = torch.distributions.Wishart(torch.tensor(6.0), precision_matrix=P)
    assert_close(w.log_prob(samples[:10]), torch_w.log_prob(samples[:10]))


@pytest.mark.parametrize("D", [1, 2, 3])
def test_expectations_match_monte_carlo(D):
    nw = random_nw((2,), D)
    loc, prec = nw.rsample((200000,))
    E = nw.expectations()
    mc_prec = prec.mean(0)
    mc_prec_loc = (prec @ loc[..., None])[..., 0].mean(0)
    mc_quad = (loc[..., None, :] @ prec @ loc[..., None])[..., 0, 0].mean(0)
    mc_logdet = torch.logdet(prec).mean(0)
    tol = dict(rtol=0.03, atol=0.03)
    assert_close(E.precision, mc_prec, **tol)
    assert_close(E.precision_loc, mc_prec_loc, **tol)
    assert_close(E.loc_precision_loc, mc_quad, **tol)
    assert_close(E.log_det_precision, mc_logdet, **tol)


def test_expectations_are_the_gradient_of_the_log_normalizer():
    nw = random_nw((4,), 3)
    eta = NormalWishartNatural(*(p.detach().clone().requires_grad_() for p in nw.natural_params))
    A = NormalWishart.log_normalizer_natural(eta).sum()
    g_loc, g_kappa, g_scale, g_df = torch.autograd.grad(A, eta)
    E = nw.expectations()
    # T = (Λμ, -½ μᵀΛμ, -½ Λ, ½ log|Λ|)
    assert_close(g_loc, E.precision_loc)
    assert_close(g_kappa, -0.5 * E.loc_precision_loc)
    assert_close(g_scale, -0.5 * E.precision)
    assert_close(g_df, 0.5 * E.log_det_precision)


def test_log_prob_is_the_exponential_family_form_and_torch_densities():
    nw = random_nw((3,), 2)
    loc, prec = nw.rsample((5,))
    eta = nw.natural_params
    T_inner = (
        (eta.loc * (prec @ loc[..., None])[..., 0]).sum(-1)
        - 0.5 * eta.kappa * (loc[..., None, :] @ prec @ loc[..., None])[..., 0, 0]
        - 0.5 * (eta.scale * prec).sum((-1, -2))
        + 0.5 * eta.df * torch.logdet(prec)
    )
    expected = T_inner - nw.log_normalizer()
    torch_density = torch.distributions.Wishart(nw.df, precision_matrix=nw.scale_inv).log_prob(
        prec
    ) + torch.distributions.MultivariateNormal(
        nw.loc, precision_matrix=nw.kappa[:, None, None] * prec
    ).log_prob(loc)
    assert_close(nw.log_prob(loc, prec), torch_density)
    assert_close(expected, torch_density)


def test_natural_round_trip():
    nw = random_nw((5,), 3)
    back = NormalWishart.from_natural(nw.natural_params)
    for a, b in zip((nw.loc, nw.kappa, nw.scale_inv, nw.df), (back.loc, back.kappa, back.scale_inv, back.df)):
        assert_close(a, b)


def test_kl_matches_monte_carlo_and_vanishes_on_itself():
    q, p = random_nw((2,), 2), random_nw((2,), 2)
    loc, prec = q.rsample((400000,))
    mc = (q.log_prob(loc, prec) - p.log_prob(loc, prec)).mean(0)
    assert_close(q.kl_divergence(p), mc, rtol=0.02, atol=0.02)
    assert_close(q.kl_divergence(q), torch.zeros(2), atol=1e-10, rtol=0)
    assert (q.kl_divergence(p) > 0).all()


def test_expected_log_likelihood_matches_monte_carlo():
    D = 2
    nw = random_nw((), D)
    x = torch.randn(7, D)
    w = torch.rand(7)
    stats = GaussianStats(w.sum(), (w[:, None] * x).sum(0), (w[:, None, None] * x[:, :, None] * x[:, None, :]).sum(0))
    loc, prec = nw.rsample((200000,))
    loglik = dist.MultivariateNormal(loc[:, None], precision_matrix=prec[:, None]).log_prob(x)
    mc = (loglik * w).sum(-1).mean(0)
    assert_close(nw.expected_log_likelihood(stats), mc, rtol=0.01, atol=0.02)
    assert_close(expected_gaussian_log_likelihood(nw.expectations(), stats), nw.expected_log_likelihood(stats))


def test_conjugate_update_equals_textbook_posterior():
    D, N = 2, 50
    prior = NormalWishart(torch.randn(D), torch.tensor(0.7), random_spd((), D), torch.tensor(4.5))
    x = torch.randn(N, D) * 2 + 1
    stats = GaussianStats(torch.tensor(float(N)), x.sum(0), x.T @ x)
    post = NormalWishart.from_natural(conjugate_update(prior.natural_params, stats))
    # Bishop (2006), eqs. 10.60-10.63, written with scatter about the sample mean.
    xbar = x.mean(0)
    scatter = (x - xbar).T @ (x - xbar)
    kappa = prior.kappa + N
    m = (prior.kappa * prior.loc + N * xbar) / kappa
    diff = xbar - prior.loc
    scale_inv = prior.scale_inv + scatter + prior.kappa * N / kappa * torch.outer(diff, diff)
    assert_close(post.kappa, kappa)
    assert_close(post.loc, m)
    assert_close(post.scale_inv, scale_inv)
    assert_close(post.df, prior.df + N)


def test_bad_parameters_raise_clear_errors():
    D = 2
    loc, kappa, df = torch.zeros(D), torch.tensor(1.0), torch.tensor(3.0)
    not_pd = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        NormalWishart(loc, kappa, not_pd, df)
    with pytest.raises(ValueError, match="df must exceed"):
        NormalWishart(loc, kappa, torch.eye(D), torch.tensor(0.5))
    with pytest.raises(ValueError, match="kappa must be positive"):
        NormalWishart(loc, torch.tensor(-1.0), torch.eye(D), df)
    with pytest.raises(ValueError, match="finite"):
        NormalWishart(torch.tensor([float("nan"), 0.0]), kappa, torch.eye(D), df)


def test_dirichlet_expected_log_and_kl_match_monte_carlo():
    a, b = torch.rand(4) * 3 + 0.2, torch.rand(4) * 3 + 0.2
    q = dist.Dirichlet(a)
    pi = q.sample((400000,)).clamp_min(1e-300)
    assert_close(dirichlet_expected_log(a), pi.log().mean(0), rtol=0.02, atol=0.02)
    mc_kl = (q.log_prob(pi) - dist.Dirichlet(b).log_prob(pi)).mean()
    assert_close(dirichlet_kl(a, b), mc_kl, rtol=0.03, atol=0.03)
