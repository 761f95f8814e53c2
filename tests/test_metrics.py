import math

import pytest
import torch
from torch.testing import assert_close

import pyro.distributions as dist
from pyro_sin.metrics import cluster_purity, importance_log_likelihood, normalized_mutual_info, weighted_mse


def test_clustering_scores_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    true = torch.randint(0, 5, (300,), generator=gen)
    pred = torch.where(torch.rand(300, generator=gen) < 0.7, true * 2 % 7, torch.randint(0, 7, (300,), generator=gen))
    nmi = sklearn_metrics.normalized_mutual_info_score(true.numpy(), pred.numpy())
    assert normalized_mutual_info(pred, true) == pytest.approx(nmi, abs=1e-10)
    table = sklearn_metrics.cluster.contingency_matrix(true.numpy(), pred.numpy())
    assert cluster_purity(pred, true) == pytest.approx(table.max(0).sum() / table.sum())
    assert normalized_mutual_info(true, true) == pytest.approx(1.0)
    assert cluster_purity(true, true) == 1.0


def test_weighted_mse_is_the_paper_formula():
    y = torch.randn(4, 3)
    probs = torch.softmax(torch.randn(4, 2), -1)
    recon = torch.randn(5, 4, 2, 3)
    brute = sum(
        probs[n, k] * ((y[n] - recon[s, n, k]) ** 2).sum() / 5 for n in range(4) for k in range(2) for s in range(5)
    ) / 4
    assert_close(weighted_mse(y, probs, recon), brute)
    with pytest.raises(ValueError, match="shape"):
        weighted_mse(y, probs, recon[:, :, :1])


def test_importance_log_likelihood_on_a_conjugate_gaussian():
    """y = x + ε, x ~ N(0, 1), ε ~ N(0, s²): log p(y) = log N(y; 0, 1 + s²)."""
    s, y = 0.5, torch.tensor([0.3, -1.2, 2.0])
    exact = dist.Normal(0.0, math.sqrt(1 + s**2)).log_prob(y)
    post_var = 1 / (1 + 1 / s**2)
    exact_posterior = dist.Normal(post_var * y / s**2, math.sqrt(post_var))
    x = exact_posterior.sample((10,))
    log_joint = dist.Normal(0.0, 1.0).log_prob(x) + dist.Normal(x, s).log_prob(y)
    assert_close(importance_log_likelihood(log_joint, exact_posterior.log_prob(x)), exact)
    wide = dist.Normal(torch.zeros(3), 2.0)
    x = wide.sample((200000,))
    log_joint = dist.Normal(0.0, 1.0).log_prob(x) + dist.Normal(x, s).log_prob(y)
    assert_close(importance_log_likelihood(log_joint, wide.log_prob(x)), exact, atol=0.02, rtol=0)
