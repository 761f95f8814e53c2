import itertools
import math

import pytest
import torch
from torch.testing import assert_close

import pyro.distributions as dist

from pyro_sin.metrics import (
    adjusted_rand_index,
    cluster_purity,
    clustering_accuracy,
    clustering_scores,
    importance_log_likelihood,
    normalized_mutual_info,
    weighted_mse,
)


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


def random_labellings(seed, n, num_pred, num_true):
    """A noisy relabelling of random classes: partly informative, partly random."""
    gen = torch.Generator().manual_seed(seed)
    true = torch.randint(0, num_true, (n,), generator=gen)
    permuted = torch.randperm(max(num_pred, num_true), generator=gen)[true] % num_pred
    noise = torch.randint(0, num_pred, (n,), generator=gen)
    pred = torch.where(torch.rand(n, generator=gen) < 0.6, permuted, noise)
    return pred, true


@pytest.mark.parametrize("num_pred,num_true", [(3, 3), (5, 3), (2, 6), (10, 10), (1, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_adjusted_rand_index_matches_scikit_learn(num_pred, num_true, seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    pred, true = random_labellings(seed, 200, num_pred, num_true)
    expected = sklearn_metrics.adjusted_rand_score(true.numpy(), pred.numpy())
    assert adjusted_rand_index(pred, true) == pytest.approx(expected, abs=1e-12)


def test_adjusted_rand_index_extremes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(labels, labels) == 1.0
    assert adjusted_rand_index((labels + 1) % 3 * 7, labels) == pytest.approx(1.0)
    assert adjusted_rand_index(torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)) == 1.0
    assert adjusted_rand_index(torch.arange(6), torch.arange(6)) == 1.0
    gen = torch.Generator().manual_seed(0)
    independent = [
        adjusted_rand_index(torch.randint(0, 4, (500,), generator=gen), torch.randint(0, 4, (500,), generator=gen))
        for _ in range(20)
    ]
    assert abs(sum(independent) / 20) < 0.01


def brute_force_accuracy(pred, true):
    """Best accuracy over every one-to-one map from clusters to classes."""
    clusters, classes = pred.unique().tolist(), true.unique().tolist()
    best = 0
    slots = classes + [None] * max(0, len(clusters) - len(classes))  # None: an unmatched cluster
    for image in itertools.permutations(slots, len(clusters)):
        mapping = dict(zip(clusters, image))
        best = max(best, sum(mapping[p] == t for p, t in zip(pred.tolist(), true.tolist())))
    return best / len(pred)


@pytest.mark.parametrize("num_pred,num_true", [(3, 3), (5, 3), (2, 5), (4, 4), (1, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_clustering_accuracy_is_the_best_one_to_one_matching(num_pred, num_true, seed):
    pred, true = random_labellings(seed, 60, num_pred, num_true)
    assert clustering_accuracy(pred, true) == pytest.approx(brute_force_accuracy(pred, true))


def test_clustering_accuracy_against_scikit_learn_contingency_and_scipy():
    """scikit-learn has no Hungarian accuracy; its contingency table and scipy's solver give one."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from scipy.optimize import linear_sum_assignment

    for num_pred, num_true in [(10, 10), (12, 10), (7, 10)]:
        pred, true = random_labellings(num_pred, 500, num_pred, num_true)
        table = sklearn_metrics.cluster.contingency_matrix(true.numpy(), pred.numpy())
        rows, cols = linear_sum_assignment(-table)
        assert clustering_accuracy(pred, true) == pytest.approx(table[rows, cols].sum() / 500)
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    assert clustering_accuracy((labels + 2) % 3, labels) == 1.0


def test_clustering_scores_and_bad_labels():
    pred, true = random_labellings(0, 100, 4, 3)
    scores = clustering_scores(pred, true)
    assert set(scores) == {"nmi", "ari", "accuracy", "purity"}
    assert scores["accuracy"] <= scores["purity"]
    # arrays and lists score as tensors do
    assert clustering_scores(pred.numpy(), true.tolist()) == scores
    with pytest.raises(ValueError, match="shape"):
        clustering_scores(pred[:5], true)
    with pytest.raises(ValueError, match="shape"):
        adjusted_rand_index(pred[:5], true)
    with pytest.raises(ValueError, match="shape"):
        clustering_accuracy(pred[:, None], true[:, None])
