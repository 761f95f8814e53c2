import pytest
import torch
from torch.testing import assert_close

import pyro.distributions as dist

from pyro_sin.distributions import (
    MatrixNormal,
    MatrixNormalWishart,
    MatrixNormalWishartNatural,
    RegressionStats,
    regression_conjugate_update,
)

from tests.helpers import random_spd


def random_mnw(batch=(2,), D=2, P=3):
    return MatrixNormalWishart(
        torch.randn(batch + (D, P)), random_spd(batch, P), random_spd(batch, D), D + 1.0 + 3 * torch.rand(batch)
    )


def vec(x):
    """Column-stacking vec of the last two dims."""
    return x.transpose(-1, -2).reshape(x.shape[:-2] + (-1,))


def test_matrix_normal_density_and_samples_match_the_vectorised_normal():
    D, P = 2, 3
    M, R, C = torch.randn(D, P), random_spd((), D), random_spd((), P)
    mn = MatrixNormal(M, R, C)
    # vec(X) ~ N(vec(M), C⁻¹ ⊗ R⁻¹)
    mvn = dist.MultivariateNormal(vec(M), precision_matrix=torch.kron(C, R))
    x = mn.rsample((200000,))
    assert_close(mn.log_prob(x[:5]), mvn.log_prob(vec(x[:5])))
    assert_close(vec(x).mean(0), vec(M), atol=0.02, rtol=0)
    cov = torch.cov(vec(x).T)
    assert_close(cov, torch.linalg.inv(torch.kron(C, R)), atol=0.03, rtol=0.03)


@pytest.mark.parametrize("D,P", [(1, 1), (2, 3), (3, 2)])
def test_expectations_match_monte_carlo(D, P):
    mnw = random_mnw((2,), D, P)
    B, prec = mnw.rsample((200000,))
    E = mnw.expectations()
    tol = dict(rtol=0.03, atol=0.03)
    assert_close(E.precision, prec.mean(0), **tol)
    assert_close(E.precision_loc, (prec @ B).mean(0), **tol)
    assert_close(E.loc_precision_loc, (B.transpose(-1, -2) @ prec @ B).mean(0), **tol)
    assert_close(E.log_det_precision, torch.logdet(prec).mean(0), **tol)


def test_expectations_are_the_gradient_of_the_log_normalizer():
    mnw = random_mnw((3,), 2, 3)
    eta = MatrixNormalWishartNatural(*(p.detach().clone().requires_grad_() for p in mnw.natural_params))
    A = MatrixNormalWishart.log_normalizer_natural(eta).sum()
    g_cross, g_col, g_scale, g_df = torch.autograd.grad(A, eta)
    E = mnw.expectations()
    sym = lambda g: 0.5 * (g + g.transpose(-1, -2))  # noqa: E731  (the natural matrices are symmetric)
    assert_close(g_cross, E.precision_loc)
    assert_close(sym(g_col), -0.5 * E.loc_precision_loc)
    assert_close(sym(g_scale), -0.5 * E.precision)
    assert_close(g_df, 0.5 * E.log_det_precision)


def test_density_is_the_exponential_family_form():
    mnw = random_mnw((2,), 2, 3)
    B, prec = mnw.rsample((4,))
    eta = mnw.natural_params
    inner = (
        (eta.cross * (prec @ B)).sum((-1, -2))
        - 0.5 * (eta.col_precision * (B.transpose(-1, -2) @ prec @ B)).sum((-1, -2))
        - 0.5 * (eta.scale * prec).sum((-1, -2))
        + 0.5 * eta.df * torch.logdet(prec)
    )
    wishart = torch.distributions.Wishart(mnw.df, precision_matrix=mnw.scale_inv)
    # vec(B) | Λ ~ N(vec(M), K⁻¹ ⊗ Λ⁻¹)
    normal = dist.MultivariateNormal(vec(mnw.loc), precision_matrix=_kron_batch(mnw.col_precision, prec))
    torch_density = wishart.log_prob(prec) + normal.log_prob(vec(B))
    assert_close(mnw.log_prob(B, prec), torch_density)
    assert_close(inner - mnw.log_normalizer(), torch_density)


def _kron_batch(a, b):
    """Batched Kronecker product a ⊗ b."""
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(out.shape[:-4] + (a.shape[-2] * b.shape[-2], a.shape[-1] * b.shape[-1]))


def test_kl_matches_monte_carlo():
    q, p = random_mnw((2,), 2, 2), random_mnw((2,), 2, 2)
    B, prec = q.rsample((300000,))
    mc = (q.log_prob(B, prec) - p.log_prob(B, prec)).mean(0)
    assert_close(q.kl_divergence(p), mc, rtol=0.02, atol=0.02)
    assert_close(q.kl_divergence(q), torch.zeros(2), atol=1e-10, rtol=0)


def test_conjugate_update_is_bayesian_linear_regression():
    """Posterior of x = B u + ε against the textbook formulas (e.g. Minka, 'Bayesian linear regression')."""
    D, P, N = 2, 3, 40
    prior = random_mnw((), D, P)
    u = torch.randn(N, P)
    x = u @ torch.randn(P, D) + 0.3 * torch.randn(N, D)
    stats = RegressionStats(torch.tensor(float(N)), x.T @ u, u.T @ u, x.T @ x)
    post = MatrixNormalWishart.from_natural(regression_conjugate_update(prior.natural_params, stats))
    K = prior.col_precision + u.T @ u
    M = (prior.loc @ prior.col_precision + x.T @ u) @ torch.linalg.inv(K)
    S = prior.scale_inv + x.T @ x + prior.loc @ prior.col_precision @ prior.loc.T - M @ K @ M.T
    assert_close(post.col_precision, K)
    assert_close(post.loc, M)
    assert_close(post.scale_inv, S)
    assert_close(post.df, prior.df + N)


def test_expected_log_likelihood_matches_monte_carlo():
    mnw = random_mnw((), 2, 3)
    u, x = torch.randn(5, 3), torch.randn(5, 2)
    stats = RegressionStats(torch.tensor(5.0), x.T @ u, u.T @ u, x.T @ x)
    B, prec = mnw.rsample((200000,))
    mean = (B[:, None] @ u[None, :, :, None])[..., 0]  # (S, 5, D)
    mc = dist.MultivariateNormal(mean, precision_matrix=prec[:, None]).log_prob(x).sum(-1).mean(0)
    assert_close(mnw.expected_log_likelihood(stats), mc, rtol=0.01, atol=0.05)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="positive definite"):
        MatrixNormalWishart(torch.zeros(2, 2), -torch.eye(2), torch.eye(2), torch.tensor(3.0))
    with pytest.raises(ValueError, match="df must exceed"):
        MatrixNormalWishart(torch.zeros(2, 2), torch.eye(2), torch.eye(2), torch.tensor(0.5))
