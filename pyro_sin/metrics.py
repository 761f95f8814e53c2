"""Evaluation metrics: weighted reconstruction error, importance-sampled
log-likelihood, clustering agreement with true labels (NMI, adjusted Rand
index, accuracy under the best matching of clusters to classes, purity), and
the coverage of the data by a generative model's samples and their precision."""

import math

import torch


def weighted_mse(y: torch.Tensor, probs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    r"""
    The SAN paper's test error (docs/mathematics.rst, *Evaluation and the paper's settings*),

    .. math:: \frac1N\sum_n \sum_k r_{nk}\,\frac1S\sum_s \lVert y_n - \hat y_{nks}\rVert^2,

    :param torch.Tensor y: data, shape ``(N, D)``.
    :param torch.Tensor probs: ``r_nk``, shape ``(N, K)``.
    :param torch.Tensor reconstructions: decoder means ``ŷ``, shape ``(S, N, K, D)``.
    :returns: a scalar tensor.
    """
    if reconstructions.shape[1:] != probs.shape + y.shape[-1:]:
        raise ValueError(
            f"reconstructions must have shape (S, N, K, D) = (S, {tuple(probs.shape)}, "
            f"{y.shape[-1]}), got {tuple(reconstructions.shape)}"
        )
    sq_err = (reconstructions - y[:, None, :]).pow(2).sum(-1).mean(0)  # (N, K)
    return (probs * sq_err).sum(-1).mean()


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def importance_log_likelihood(log_joint: torch.Tensor, log_proposal: torch.Tensor) -> torch.Tensor:
    r"""
    ``log p(y_n) ≈ log (1/S) Σ_s p(y_n, x_s) / q(x_s | y_n)`` per data point.

    :param torch.Tensor log_joint: ``log p(y_n, x_s)``, shape ``(S, N)``.
    :param torch.Tensor log_proposal: ``log q(x_s | y_n)``, shape ``(S, N)``.
    :returns: shape ``(N,)``.
    """
    return log_mean_exp(log_joint - log_proposal, 0)


def _contingency(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    pred = torch.unique(pred, return_inverse=True)[1]
    true = torch.unique(true, return_inverse=True)[1]
    table = torch.zeros(int(pred.max()) + 1, int(true.max()) + 1, dtype=torch.float64, device=pred.device)
    table.index_put_((pred, true.to(pred.device)), torch.ones_like(pred, dtype=torch.float64), accumulate=True)
    return table


def cluster_purity(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of points whose cluster's majority label is their own label."""
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must share a shape, got {tuple(pred.shape)} and {tuple(true.shape)}")
    table = _contingency(pred, true)
    return float(table.max(1).values.sum() / table.sum())


def normalized_mutual_info(pred: torch.Tensor, true: torch.Tensor) -> float:
    r"""``NMI = I(pred; true) / ((H(pred) + H(true)) / 2)`` (arithmetic normalisation)."""
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must share a shape, got {tuple(pred.shape)} and {tuple(true.shape)}")
    joint = _contingency(pred, true)
    joint = joint / joint.sum()
    p_pred, p_true = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = (joint[nz] * (joint[nz] / (p_pred[:, None] * p_true[None, :])[nz]).log()).sum()
    entropy = lambda p: -(p[p > 0] * p[p > 0].log()).sum()  # noqa: E731
    h_pred, h_true = entropy(p_pred), entropy(p_true)
    if h_pred + h_true == 0:
        return 1.0
    return float(mutual / (0.5 * (h_pred + h_true)))


def _check_labels(pred: torch.Tensor, true: torch.Tensor):
    if pred.shape != true.shape or pred.dim() != 1:
        raise ValueError(
            f"pred and true must be label vectors of one shape, got {tuple(pred.shape)} and {tuple(true.shape)}"
        )
    if len(pred) == 0:
        raise ValueError("cannot score an empty labelling")


def adjusted_rand_index(pred: torch.Tensor, true: torch.Tensor) -> float:
    r"""
    The Rand index corrected for chance (Hubert & Arabie, 1985): with ``n_ij``
    the contingency table, ``a_i``, ``b_j`` its margins and ``C(m) = m(m-1)/2``,

    .. math:: \mathrm{ARI} = \frac{\sum_{ij} C(n_{ij}) - E}{\tfrac12\big(\sum_i C(a_i) + \sum_j C(b_j)\big) - E},
              \qquad E = \frac{\sum_i C(a_i)\,\sum_j C(b_j)}{C(n)}.

    1 for identical partitions (up to relabelling), about 0 for independent ones.
    """
    _check_labels(pred, true)
    table = _contingency(pred, true)
    pairs = lambda m: (m * (m - 1) / 2).sum()  # noqa: E731
    together = pairs(table)
    pred_pairs, true_pairs = pairs(table.sum(1)), pairs(table.sum(0))
    expected = pred_pairs * true_pairs / pairs(table.sum())
    maximum = 0.5 * (pred_pairs + true_pairs)
    if maximum == expected:  # both partitions trivial (one cluster, or all singletons)
        return 1.0
    return float((together - expected) / (maximum - expected))


def clustering_accuracy(pred: torch.Tensor, true: torch.Tensor) -> float:
    r"""
    The fraction of points labelled correctly under the best one-to-one matching
    of clusters to classes (the Hungarian algorithm on the contingency table);
    with more clusters than classes the unmatched clusters count as errors.
    """
    _check_labels(pred, true)
    # scipy's assignment solver: exact, O(K³), and well tested
    from scipy.optimize import linear_sum_assignment

    table = _contingency(pred, true)
    table = table.cpu()
    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    return float(table[torch.as_tensor(rows), torch.as_tensor(cols)].sum() / table.sum())


def clustering_scores(pred: torch.Tensor, true: torch.Tensor) -> dict:
    """
    NMI, adjusted Rand index, clustering accuracy and purity of ``pred`` against ``true``.

    :param pred: cluster ids, shape ``(N,)`` (a tensor, array or list of integers).
    :param true: class labels, shape ``(N,)``.
    """
    pred, true = torch.as_tensor(pred).cpu(), torch.as_tensor(true).cpu()
    if pred.shape != true.shape or pred.dim() != 1:
        raise ValueError(
            f"need predictions and labels of one shape (N,), got {tuple(pred.shape)} and {tuple(true.shape)}"
        )
    return {
        "nmi": normalized_mutual_info(pred, true),
        "ari": adjusted_rand_index(pred, true),
        "accuracy": clustering_accuracy(pred, true),
        "purity": cluster_purity(pred, true),
    }


def _share_within(points: torch.Tensor, others: torch.Tensor, radius: float) -> float:
    """The share of ``points`` with one of ``others`` within Euclidean distance ``radius``."""
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if len(points) == 0 or len(others) == 0:
        return 0.0
    others = others.to(points)
    # exact differences (the matrix-product shortcut puts a point ~1e-7 away from itself)
    exact = "donot_use_mm_for_euclid_dist"
    nearest = torch.cat([torch.cdist(rows, others, compute_mode=exact).min(-1).values for rows in points.split(1024)])
    return float((nearest <= radius).to(points.dtype).mean())


def _check_points(data: torch.Tensor, samples: torch.Tensor):
    if data.dim() != 2 or samples.dim() != 2 or data.shape[-1] != samples.shape[-1]:
        raise ValueError(f"need data (N, P) and samples (S, P), got {tuple(data.shape)} and {tuple(samples.shape)}")


def sample_coverage(data: torch.Tensor, samples: torch.Tensor, radius: float = 1.0) -> float:
    r"""
    The share of data points with a generated sample within Euclidean distance ``radius``,

    .. math:: \frac1N \sum_n \mathbb 1\big[\min_s \lVert y_n - \hat y_s \rVert \le r\big],

    a check that the samples of a generative model reach every part of the data
    (a model that misses a region scores below one, however well it fits the rest).
    Its other side is :func:`sample_precision`.

    :param torch.Tensor data: shape ``(N, P)``.
    :param torch.Tensor samples: shape ``(S, P)``.
    :param float radius: ``r``, in the data's units.
    """
    _check_points(data, samples)
    return _share_within(data, samples, radius)


def sample_precision(data: torch.Tensor, samples: torch.Tensor, radius: float = 1.0) -> float:
    r"""
    The share of generated samples with a data point within Euclidean distance ``radius``,

    .. math:: \frac1S \sum_s \mathbb 1\big[\min_n \lVert \hat y_s - y_n \rVert \le r\big],

    the other side of :func:`sample_coverage`'s nearest-neighbour test: coverage asks
    whether the samples reach every part of the data, precision whether they stay on
    it (a model that spreads its samples over empty space scores below one, however
    much of the data they cover).

    :param torch.Tensor data: shape ``(N, P)``.
    :param torch.Tensor samples: shape ``(S, P)``; none gives 0.
    :param float radius: ``r``, in the data's units.
    """
    _check_points(data, samples)
    return _share_within(samples, data, radius)
