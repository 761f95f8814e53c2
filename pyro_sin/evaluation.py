r"""
Evaluation of a trained latent-variable model, for any likelihood.

Everything here needs only a decoder whose ``distribution(x)`` is a Pyro
distribution over ``y`` with event dimension 1 and batch shape ``x.shape[:-1]``
(a :class:`~pyro_sin.nn.GaussianDecoder`, :class:`~pyro_sin.nn.BernoulliDecoder`,
:class:`~pyro_sin.nn.PoissonDecoder`, or a user's own module): reconstructions
are its ``.mean``, likelihoods its ``.log_prob``, generated data its ``.sample()``.
Latent posteriors and priors enter as distributions (or a log-density callable),
so the same functions serve the latent mixture, the LDS and the baselines.

:func:`conditional_mean` imputes missing features from the observed ones by
conditioning the model on them (importance sampling of the latent variables).

Estimates over a data set come back as an :class:`Estimate`: the mean over
data points, its standard error over data points, and each point's value with
its Monte Carlo standard error. Predictions come back as a :class:`Prediction`
with their Monte Carlo standard error where they were sampled
(:func:`sampled_mean`), or in closed form from Gaussian latent marginals
(:func:`decoded_marginal_mean`).
"""

import math
from typing import Callable, NamedTuple, Optional

import torch

import pyro.distributions as dist

from .metrics import log_mean_exp

#: elements of decoded output held at once; larger evaluations run in chunks of samples
MAX_ELEMENTS = 2**24


class Estimate(NamedTuple):
    """A Monte Carlo estimate of a per-point quantity, summarised over data points."""

    mean: float  # mean over data points
    stderr: float  # standard error of that mean over data points (std / √N)
    per_point: torch.Tensor  # (N,) each point's estimate
    mc_stderr: torch.Tensor  # (N,) Monte Carlo standard error of each point's estimate


class Samples(NamedTuple):
    """Draws from a learned mixture model ``z ~ Cat(π)``, ``x ~ p_z(x)``, ``y ~ p(y | x)``."""

    mean: torch.Tensor  # (S, P) decoder means E[y | x]
    draw: torch.Tensor  # (S, P) draws y ~ p(y | x)
    components: torch.Tensor  # (S,) component ids z
    latent: torch.Tensor  # (S, D) latent draws x


def _summarise(per_point: torch.Tensor, mc_stderr: torch.Tensor) -> Estimate:
    n = per_point.numel()
    stderr = float(per_point.std() / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(per_point.mean()), stderr, per_point, mc_stderr)


def concatenate(estimates) -> Estimate:
    """The :class:`Estimate` of several batches of data points as one (its summary over all of them)."""
    return _summarise(torch.cat([e.per_point for e in estimates]), torch.cat([e.mc_stderr for e in estimates]))


def _sample_chunks(num_samples: int, elements_per_sample: int):
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    chunk = max(1, MAX_ELEMENTS // max(1, elements_per_sample))
    for start in range(0, num_samples, chunk):
        yield min(chunk, num_samples - start)


def decoded_mean(decoder, x: torch.Tensor) -> torch.Tensor:
    """``E[y | x]`` under the decoder's likelihood, shape ``x.shape[:-1] + (P,)``."""
    return decoder.distribution(x).mean


class Prediction(NamedTuple):
    """A predicted mean and the Monte Carlo standard error of each of its entries (zeros in closed form)."""

    mean: torch.Tensor
    mc_stderr: torch.Tensor


def sampled_mean(draws: torch.Tensor) -> Prediction:
    """The mean over the leading (sample) dimension of ``draws`` and its Monte Carlo standard error ``std / √S``."""
    S = draws.shape[0]
    if S < 2:
        return Prediction(draws.mean(0), torch.full_like(draws[0], math.nan))
    return Prediction(draws.mean(0), draws.std(0) / math.sqrt(S))


def _symmetric_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` with ``L Lᵀ = cov``: its columns are the principal axes scaled by their spread."""
    values, vectors = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
    return vectors * values.clamp(min=0).sqrt()[..., None, :]


@torch.no_grad()
def decoded_marginal_mean(decoder, marginals) -> torch.Tensor:
    r"""
    ``E[E[y | x]]`` for ``x`` from Gaussian-mixture marginals ``Σ_k w_k N(m_k, V_k)``
    (a :class:`~pyro_sin.pgm.sequence.LatentMarginals`), without sampling: per component, the
    sigma points ``m`` and ``m ± √3 l_i`` along the principal axes ``l_i`` of ``V`` with weights
    ``1 - D/3`` and ``1/6``,

    .. math:: \mathbb E[f(x)] pprox ig(1 - 	frac D3ig) f(m)
              + 	frac16 \sum_{i=1}^{D} ig(f(m + \sqrt3\, l_i) + f(m - \sqrt3\, l_i)ig),

    the three-point Gauss-Hermite rule along each axis (the unscented transform with
    ``κ = 3 - D``): exact when the decoder's mean ``f`` is a polynomial of degree at most three in
    ``x`` (a linear decoder in particular), second-order accurate otherwise.

    :returns: shape ``marginals.weights.shape[:-1] + (P,)``.
    """
    weights, locs, covs = marginals
    D = locs.shape[-1]
    root = math.sqrt(3.0) * _symmetric_sqrt(covs).transpose(-1, -2)  # (..., K, D, D): row i is √3 l_i
    centre = locs[..., None, :]
    points = torch.cat([centre, centre + root, centre - root], -2)  # (..., K, 2D+1, D)
    point_weights = locs.new_full((2 * D + 1,), 1.0 / 6.0)
    point_weights[0] = 1.0 - D / 3.0
    batch = points.shape[:-3]
    flat = points.reshape((-1,) + points.shape[-3:])  # (n, K, 2D+1, D)
    chunk = max(1, MAX_ELEMENTS // max(1, flat[0].numel() * 64))  # the decoder's hidden layers hold more than x
    means = []
    for start in range(0, len(flat), chunk):
        decoded = decoded_mean(decoder, flat[start : start + chunk])  # (c, K, 2D+1, P)
        means.append(torch.einsum("ckjp,j->ckp", decoded, point_weights))
    component_means = torch.cat(means).reshape(batch + means[0].shape[-2:])  # (..., K, P)
    return (weights[..., None] * component_means).sum(-2)


def cluster(log_probs: torch.Tensor) -> torch.Tensor:
    """Hard assignments ``argmax_k r_nk`` from (log) assignment probabilities ``(..., K)``."""
    return log_probs.argmax(-1)


@torch.no_grad()
def reconstruction_error(
    decoder, y: torch.Tensor, latent, weights: Optional[torch.Tensor] = None, num_samples: int = 100
) -> Estimate:
    r"""
    The weighted reconstruction error (the SAN paper's weighted MSE, for any likelihood),

    .. math:: e_n = \sum_k r_{nk}\; \mathbb E_{q(x \mid y_n, z_n = k)}
              \big\lVert y_n - \mathbb E[y \mid x] \big\rVert^2 ,

    estimated with ``num_samples`` draws from each component's posterior.

    :param decoder: a module with ``distribution(x)``.
    :param torch.Tensor y: data, shape ``(N,) + E`` (``E`` the data's event shape,
        e.g. ``(P,)`` for vectors or ``(T, P)`` for sequences).
    :param latent: the posterior of ``x``, a distribution with batch shape
        ``(N,)``, or ``(N, K)`` with one posterior per component.
    :param torch.Tensor weights: ``r_nk``, shape ``(N, K)``, when ``latent`` has a
        component dimension.
    :returns: an :class:`Estimate` of ``e_n`` (squared errors summed over ``E``).
    """
    batch = latent.batch_shape
    if batch[:1] != y.shape[:1]:
        raise ValueError(f"latent batch shape {tuple(batch)} must start with N = {len(y)}")
    extra = len(batch) - 1
    if (weights is None) != (extra == 0):
        raise ValueError(
            f"weights are needed exactly when the latent posterior has a component dimension; "
            f"got latent batch shape {tuple(batch)} and weights {None if weights is None else tuple(weights.shape)}"
        )
    if weights is not None and weights.shape != batch:
        raise ValueError(f"weights must have shape {tuple(batch)}, got {tuple(weights.shape)}")
    target = y.reshape(y.shape[:1] + (1,) * extra + y.shape[1:])  # aligned with (N, K...)
    errors = []
    for size in _sample_chunks(num_samples, batch[1:].numel() * y.numel()):
        mean = decoded_mean(decoder, latent.sample((size,)))  # (s, N, K..., E)
        error = (mean - target).pow(2).flatten(2 + extra).sum(-1)  # (s, N, K...)
        if weights is not None:
            error = (weights * error).flatten(2).sum(-1)  # (s, N)
        errors.append(error)
    errors = torch.cat(errors)  # (S, N)
    mc_stderr = errors.std(0) / math.sqrt(num_samples) if num_samples > 1 else torch.full_like(errors[0], math.nan)
    return _summarise(errors.mean(0), mc_stderr)


@torch.no_grad()
def log_likelihood(
    y: torch.Tensor,
    likelihood: Callable,
    prior_log_prob: Callable,
    proposal,
    num_samples: int = 100,
) -> Estimate:
    r"""
    An importance-sampled estimate of each point's log marginal likelihood,

    .. math:: \log \hat p(y_n) = \log \frac1S \sum_s \frac{p(y_n \mid x_s)\, p(x_s)}{q(x_s \mid y_n)},
              \qquad x_s \sim q(x \mid y_n).

    Its expectation is a lower bound on ``log p(y_n)`` that tightens as ``S`` grows.
    The Monte Carlo standard error of each point's estimate is the delta method's
    ``√((S Σ_s w̃_s² − 1) / (S − 1))`` with ``w̃`` the normalised weights
    (``S / ESS − 1`` over ``S − 1``); heavy-tailed weights make it optimistic.

    :param torch.Tensor y: data, shape ``(N,) + E``.
    :param likelihood: ``x ↦ p(y | x)``, a distribution whose ``log_prob(y)`` has
        shape ``x``'s sample shape ``+ (N,)`` (e.g. ``decoder.distribution``).
    :param prior_log_prob: ``x ↦ log p(x)``, same shape.
    :param proposal: ``q(x | y)``, a distribution with batch shape ``(N,)``.
    :returns: an :class:`Estimate` of ``log p(y_n)``.
    """
    if proposal.batch_shape != y.shape[:1]:
        raise ValueError(
            f"the proposal's batch shape must be (N,) = {tuple(y.shape[:1])}, got {tuple(proposal.batch_shape)}"
        )
    log_weights = []
    for size in _sample_chunks(num_samples, y.numel()):
        x = proposal.sample((size,))
        log_weights.append(likelihood(x).log_prob(y) + prior_log_prob(x) - proposal.log_prob(x))
    log_weights = torch.cat(log_weights)  # (S, N)
    per_point = log_mean_exp(log_weights, 0)
    if num_samples > 1:
        sum_sq = torch.softmax(log_weights, 0).pow(2).sum(0)
        mc_stderr = ((num_samples * sum_sq - 1).clamp(min=0) / (num_samples - 1)).sqrt()
    else:
        mc_stderr = torch.full_like(per_point, math.nan)
    return _summarise(per_point, mc_stderr)


@torch.no_grad()
def generate(
    decoder,
    weights: torch.Tensor,
    components,
    num_samples: Optional[int] = None,
    component_ids: Optional[torch.Tensor] = None,
) -> Samples:
    """
    Samples of a learned mixture model: ``z ~ Cat(π)`` (or the given ids),
    ``x ~ p_z(x)``, then the decoder's mean and a draw of ``y``.

    :param torch.Tensor weights: ``π``, shape ``(K,)``.
    :param components: the component distributions ``p_k(x)``, batch shape ``(K,)``.
    :param int num_samples: ``S``, when ``z`` is drawn.
    :param torch.Tensor component_ids: components to sample from, shape ``(S,)``,
        instead of drawing ``z``.
    """
    if (num_samples is None) == (component_ids is None):
        raise ValueError("give exactly one of num_samples and component_ids")
    if component_ids is None:
        component_ids = dist.Categorical(weights).sample((num_samples,))
    elif component_ids.dim() != 1 or not ((component_ids >= 0) & (component_ids < len(weights))).all():
        raise ValueError(f"component_ids must be a vector of ids in [0, {len(weights)}), got {component_ids}")
    every = components.sample(component_ids.shape)  # (S, K, D)
    x = every[torch.arange(len(component_ids), device=every.device), component_ids]
    likelihood = decoder.distribution(x)
    return Samples(likelihood.mean, likelihood.sample(), component_ids, x)


class Imputation(NamedTuple):
    """Missing values filled in by their conditional mean given the observed ones."""

    values: torch.Tensor  # (N, P) the data with every missing entry replaced by E[y_m | y_o]
    ess: torch.Tensor  # (N,) effective sample size of each point's importance weights


def _observed_mask(y: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    observed = torch.as_tensor(observed, device=y.device)
    if observed.dtype != torch.bool:
        raise TypeError(f"observed must be a boolean mask, got dtype {observed.dtype}")
    if observed.shape not in (y.shape[-1:], y.shape):
        raise ValueError(
            f"observed must have shape {tuple(y.shape[-1:])} or {tuple(y.shape)}, got {tuple(observed.shape)}"
        )
    return observed.expand(y.shape)


def _feature_log_probs(likelihood, y: torch.Tensor) -> torch.Tensor:
    """``log p(y_d | x)`` feature by feature, ``(..., N, P)``, for a likelihood independent across features."""
    if not (isinstance(likelihood, dist.Independent) and likelihood.reinterpreted_batch_ndims == 1):
        raise TypeError(
            "imputation needs a likelihood that factorises over the features (a distribution "
            f"wrapped by .to_event(1)), got {type(likelihood).__name__}"
        )
    return likelihood.base_dist.log_prob(y)


@torch.no_grad()
def conditional_mean(
    y: torch.Tensor,
    observed: torch.Tensor,
    likelihood: Callable,
    prior,
    proposal=None,
    num_samples: int = 1000,
) -> Imputation:
    r"""
    The missing features of each point imputed by their conditional mean under a
    latent-variable model, given only its observed features,

    .. math:: \mathbb E[y_m \mid y_o] = \frac{\mathbb E_{r}\big[w(x)\, \mathbb E[y_m \mid x]\big]}
              {\mathbb E_{r}[w(x)]}, \qquad
              w(x) = \frac{p(x)\, p(y_o \mid x)}{r(x)},

    by self-normalised importance sampling. ``p(y_o | x)`` is the likelihood of the
    observed features alone (the likelihood must factorise over features), so the
    missing ones play no part in weighting the latent draws. The proposal ``r`` is the
    prior, or the defensive mixture ``½ p(x) + ½ q(x)`` when a point-wise proposal ``q``
    is given (e.g. the encoder's posterior of a filled-in point), which keeps the
    weights bounded by twice the prior's.

    :param torch.Tensor y: data, shape ``(N, P)``; the values of missing entries are ignored.
    :param torch.Tensor observed: boolean, ``(P,)`` or ``(N, P)``: True where a feature is observed.
    :param likelihood: ``x ↦ p(y | x)``, e.g. ``decoder.distribution``; a distribution with
        event dimension 1 made of independent features.
    :param prior: ``p(x)``, a distribution with batch shape ``()`` (e.g. the latent mixture).
    :param proposal: optional ``q(x | y)``, a distribution with batch shape ``(N,)``.
    :param int num_samples: latent draws per point.
    :returns: an :class:`Imputation`.
    """
    observed = _observed_mask(y, observed)
    if proposal is not None and proposal.batch_shape != y.shape[:1]:
        raise ValueError(
            f"the proposal's batch shape must be (N,) = {tuple(y.shape[:1])}, got {tuple(proposal.batch_shape)}"
        )
    if prior.batch_shape != torch.Size():
        raise ValueError(f"the prior must have batch shape (), got {tuple(prior.batch_shape)}")
    half = math.log(0.5)
    log_norms, log_sq_norms, means = [], [], []
    for size in _sample_chunks(num_samples, y.numel()):
        x = prior.sample((size, len(y)))  # (s, N, D)
        log_prior = prior.log_prob(x)
        log_proposal = log_prior
        if proposal is not None:
            from_proposal = torch.rand(x.shape[:2], device=x.device) < 0.5
            x = torch.where(from_proposal[..., None], proposal.sample((size,)), x)
            log_prior = prior.log_prob(x)
            log_proposal = torch.logaddexp(half + log_prior, half + proposal.log_prob(x))
        p_y = likelihood(x)
        log_obs = _feature_log_probs(p_y, y).masked_fill(~observed, 0.0).sum(-1)  # (s, N)
        log_w = log_obs + log_prior - log_proposal
        log_norm = torch.logsumexp(log_w, 0)  # (N,)
        log_norms.append(log_norm)
        log_sq_norms.append(torch.logsumexp(2 * log_w, 0))
        means.append((torch.softmax(log_w, 0)[..., None] * p_y.mean).sum(0))  # (N, P)
    log_norms = torch.stack(log_norms)  # (chunks, N)
    share = torch.softmax(log_norms, 0)  # each chunk's share of the total weight
    conditional = (share[..., None] * torch.stack(means)).sum(0)
    ess = torch.exp(2 * torch.logsumexp(log_norms, 0) - torch.logsumexp(torch.stack(log_sq_norms), 0))
    return Imputation(torch.where(observed, y, conditional), ess)
