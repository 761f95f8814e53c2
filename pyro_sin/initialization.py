r"""
Data-driven starting points for SAN training: mixture components placed on
the encoded data by k-means, and a warm-up of the natural-gradient step.

Started from components scattered at random, the natural step of a latent
mixture can grab the data before the networks have learned anything, and
every point ends in one or two components. Placing the components on the
clusters of the encoded data, and holding them still for the first steps
while the networks adapt to them, avoids that.
"""

from typing import Callable, Dict, Optional

import torch

from .distributions import NormalWishart, RegressionStats, regression_conjugate_update
from .pgm.mixture import bayesian_gmm
from .potential import GaussianPotential


def kmeans(points: torch.Tensor, num_clusters: int, generator: Optional[torch.Generator] = None, iterations: int = 50):
    r"""
    Lloyd's k-means from a k-means++ start (each new centre drawn with
    probability proportional to the squared distance to the nearest centre so far).

    :param torch.Tensor points: shape ``(N, D)``.
    :returns: ``(centres, assignment)``, shapes ``(K, D)`` and ``(N,)``.
    """
    N = len(points)
    if not 1 <= num_clusters <= N:
        raise ValueError(f"need 1 <= num_clusters <= {N} points, got {num_clusters}")
    generator = generator or torch.Generator().manual_seed(0)
    first = torch.randint(N, (1,), generator=generator).to(points.device)
    centres = points[first]
    for _ in range(1, num_clusters):
        sq_dist = torch.cdist(points, centres).min(1).values.pow(2)
        if sq_dist.sum() > 0:
            pick = torch.multinomial((sq_dist / sq_dist.sum()).cpu(), 1, generator=generator)
        else:  # fewer distinct points than clusters
            pick = torch.randint(N, (1,), generator=generator)
        centres = torch.cat([centres, points[pick.to(points.device)]])
    assignment = torch.cdist(points, centres).argmin(1)
    for _ in range(iterations):
        one_hot = torch.nn.functional.one_hot(assignment, num_clusters).to(points.dtype)  # (N, K)
        counts = one_hot.sum(0)
        sums = one_hot.T @ points
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        new = torch.cdist(points, centres).argmin(1)
        if torch.equal(new, assignment):
            break
        assignment = new
    return centres, assignment


def normal_wishart_from_points(
    num_components: int,
    points: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    refine: int = 0,
) -> NormalWishart:
    r"""
    ``K`` Normal-Wisharts, one on each k-means cluster of ``points``: ``E[μ_k]`` is the
    cluster's centre and ``E[Λ_k]`` the inverse of its covariance (regularised towards
    the pooled within-cluster covariance), with a weak confidence (``κ = 1``,
    ``ν = 2D + 1``), so that a natural step soon replaces them by what the data say.

    With ``refine > 0`` the k-means clusters are refined by up to ``refine``
    coordinate-ascent sweeps of a variational Bayesian Gaussian mixture started
    from their centres (:func:`~pyro_sin.pgm.mixture.bayesian_gmm`, whose prior
    follows the points' own scale), and the components start on its soft clusters
    ``r_nk``: k-means cuts elongated clusters into round pieces of equal spread, a
    mixture with full covariances does not.

    :param int num_components: ``K``.
    :param points: shape ``(N, D)``.
    :param int refine: the number of mixture sweeps after k-means (``0``: k-means alone).
    :returns: a :class:`~pyro_sin.distributions.NormalWishart` of batch shape ``(K,)``.
    """
    K, D = num_components, points.shape[-1]
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    points = points.detach().reshape(-1, D)
    centres, assignment = kmeans(points, K, generator)
    resp = torch.nn.functional.one_hot(assignment, K).to(points.dtype)  # (N, K)
    if refine and K > 1:
        mixture = bayesian_gmm(points, K, centres, iterations=refine)
        resp = mixture.log_responsibilities(points).exp()
        counts = resp.sum(0)
        # a component the mixture emptied keeps its k-means centre (and borrows the pooled shape below)
        centres = torch.where(counts[:, None] > 1e-6, resp.T @ points / counts.clamp(min=1e-6)[:, None], centres)
    counts = resp.sum(0)  # (K,)
    deviation = points[:, None, :] - centres  # (N, K, D)
    scatter = torch.einsum("nk,nki,nkj->kij", resp, deviation, deviation)  # (K, D, D)
    # pooled within-cluster covariance, kept positive definite
    pooled = scatter.sum(0) / len(points)
    # (points on a subspace, e.g. a latent space wider than the data, or (nearly) identical points, have
    # none in some directions: those get a thousandth of the mean variance, and at least a variance well
    # above the rounding error of the points)
    resolution = 1e3 * torch.finfo(points.dtype).eps * (1 + points.abs().max()) ** 2
    eye = torch.eye(D, dtype=points.dtype, device=points.device)
    pooled = pooled + (1e-3 * pooled.diagonal().mean() + resolution) * eye
    # a cluster of few points borrows its shape from the pooled one (D + 1 pseudo-points)
    covariance = (scatter + (D + 1) * pooled) / (counts + D + 1)[:, None, None]
    covariance = 0.5 * (covariance + covariance.transpose(-1, -2))  # exactly symmetric in any precision
    df = torch.full((K,), 2.0 * D + 1, dtype=points.dtype, device=points.device)
    return NormalWishart(centres, torch.ones_like(df), df[:, None, None] * covariance, df)


def mixture_natural_from_points(
    pgm, points: torch.Tensor, generator: Optional[torch.Generator] = None, refine: int = 0
) -> Dict[str, torch.Tensor]:
    """
    Initial natural parameters of a :class:`~pyro_sin.pgm.GaussianMixture`'s ``q(θ)``:
    equal weights and the components of :func:`normal_wishart_from_points`.

    :param points: latent points, shape ``(N, D)``, e.g. the encoder's means.
    :param int refine: mixture sweeps after k-means (see :func:`normal_wishart_from_points`).
    :returns: a dict for ``SINGuide(..., init_natural=...)``.
    """
    from .pgm import GaussianMixture

    if not isinstance(pgm, GaussianMixture):
        raise TypeError(
            f"components from points initialise a GaussianMixture's conjugate q(θ), not a {type(pgm).__name__} "
            "(a StudentTMixture's components are point estimates trained by Adam: build it without this initialisation)"
        )
    if points.shape[-1] != pgm.latent_dim:
        raise ValueError(f"need latent points of dimension {pgm.latent_dim}, got shape {tuple(points.shape)}")
    components = normal_wishart_from_points(pgm.num_components, points, generator, refine)
    return pgm._pack(torch.ones_like(components.df), components.natural_params)


@torch.no_grad()
def encoded_components(
    pgm, encoder, data, generator: Optional[torch.Generator] = None, refine: int = 0
) -> Dict[str, torch.Tensor]:
    """
    :func:`mixture_natural_from_points` on the means of the encoder's potentials
    for ``data`` (a tensor, or a tuple of encoder inputs).

    :param int refine: mixture sweeps after k-means (see :func:`mixture_natural_from_points`).
    """
    potential = encoder(*data) if isinstance(data, tuple) else encoder(data)
    if not isinstance(potential, GaussianPotential):
        potential = GaussianPotential(*potential)
    return mixture_natural_from_points(pgm, potential.mean, generator, refine)


def _draws_from_potentials(encoder, data, generator: Optional[torch.Generator]) -> torch.Tensor:
    # draws, not the potentials' means: with a latent space wider than the data the means lie on
    # a subspace, and clusters or regressions fitted to them would be singular
    potential = encoder(*data) if isinstance(data, tuple) else encoder(data)
    if not isinstance(potential, GaussianPotential):
        potential = GaussianPotential(*potential)
    noise = torch.randn(potential.info_vec.shape, generator=generator).to(potential.info_vec)
    return potential.mean + noise * potential.precision.rsqrt()


@torch.no_grad()
def encoded_states(hmm, encoder, data, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """
    Initial natural parameters of a :class:`~pyro_sin.pgm.LatentHMM`'s ``q(θ)``: the prior's
    Dirichlets, and the states' Gaussians on the k-means clusters of the encoded frames
    (:func:`normal_wishart_from_points` on draws from the encoder's potentials).

    :param data: training sequences (a tensor, or a tuple of encoder inputs).
    """
    x = _draws_from_potentials(encoder, data, generator)  # (N, T, D)
    states = normal_wishart_from_points(hmm.num_states, x.reshape(-1, hmm.latent_dim), generator)
    return hmm._pack(hmm.prior_init_concentration, hmm.prior_transition_concentration, states.natural_params)


@torch.no_grad()
def encoded_regimes(
    slds, encoder, data, generator: Optional[torch.Generator] = None, iterations: int = 20, pseudo_pairs: float = 10.0
) -> Dict[str, torch.Tensor]:
    r"""
    Initial natural parameters of a :class:`~pyro_sin.pgm.SwitchingLDS`'s ``q(θ)``: the prior's
    Dirichlets, and the regimes' dynamics fitted to the pairs ``(x_{t-1}, x_t)`` of the encoded
    training sequences (draws from the encoder's potentials) by hard EM over regressions: each
    pair goes to the regime whose ``A_k x_{t-1} + b_k`` lies nearest ``x_t`` (starting from
    k-means on the steps ``x_t - x_{t-1}``) and each regime's conjugate posterior is refitted to
    its pairs, until no pair moves. Each regime then keeps at most ``pseudo_pairs (D + 1)`` pairs'
    worth of confidence, so that the natural step soon replaces the start by what the SIN says.

    :param data: training sequences (a tensor, or a tuple of encoder inputs).
    :param int iterations: the most reassignment rounds.
    """
    x = _draws_from_potentials(encoder, data, generator)  # (N, T, D)
    K, D = slds.num_states, slds.latent_dim
    before, after = x[:, :-1].reshape(-1, D), x[:, 1:].reshape(-1, D)  # (M, D)
    inputs = torch.cat([before, torch.ones_like(before[:, :1])], -1)  # (M, D + 1)
    prior = slds.prior().natural_params
    _, assignment = kmeans(after - before, K, generator)

    def regimes(weights):  # (M, K) -> the regimes' conjugate posteriors given weighted pairs
        stats = RegressionStats(
            weights.sum(0),
            torch.einsum("mk,mi,mj->kij", weights, after, inputs),
            torch.einsum("mk,mi,mj->kij", weights, inputs, inputs),
            torch.einsum("mk,mi,mj->kij", weights, after, after),
        )
        return regression_conjugate_update(prior, stats)

    for _ in range(iterations):
        loc = slds.regimes_from_natural(regimes(torch.nn.functional.one_hot(assignment, K).to(x))._asdict()).loc
        distance = (after[:, None, :] - torch.einsum("kij,mj->mki", loc, inputs)).square().sum(-1)  # (M, K)
        moved = distance.argmin(-1)
        if (moved == assignment).all():
            break
        assignment = moved
    weights = torch.nn.functional.one_hot(assignment, K).to(x)
    cap = pseudo_pairs * (D + 1)
    weights = weights * (cap / weights.sum(0).clamp(min=cap))  # at most `cap` pairs per regime
    return slds._pack(slds.prior_init_concentration, slds.prior_transition_concentration, regimes(weights))


def warmup_schedule(natural_lr: float, warmup_steps: int) -> Callable[[int], float]:
    r"""
    ``β_t = 0`` for the first ``warmup_steps`` steps, then ``natural_lr``: for
    :class:`~pyro_sin.optim.NaturalAdam`'s ``natural_lr``, so that the networks
    learn before the natural step moves the mixture components.
    """
    if not 0 < natural_lr <= 1 or warmup_steps < 0:
        raise ValueError("need 0 < natural_lr <= 1 and warmup_steps >= 0")
    return _Warmup(float(natural_lr), int(warmup_steps))


class _Warmup:
    def __init__(self, natural_lr, warmup_steps):
        self.natural_lr, self.warmup_steps = natural_lr, warmup_steps

    def __call__(self, step):
        return 0.0 if step < self.warmup_steps else self.natural_lr


@torch.no_grad()
def place_components(guide, data, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    r"""
    Moves a :class:`~pyro_sin.SINGuide`'s mixture components onto the clusters of the
    data as its encoder sees them now (:func:`encoded_components`): ``λ`` is set in
    place (and the learned factor of ``factor="free"`` restarted from it), so the same
    guide and optimiser carry on. Called after the networks have learned for a while with
    the components held (a pre-training phase), it starts the mixture on an encoding
    that already reflects the data rather than on the initial, nearly linear one.

    :param data: the training data (a tensor, or a tuple of encoder inputs).
    :returns: the new natural parameters.
    """
    natural = encoded_components(guide.pgm, guide.encoder, data, generator)
    domain = guide._natural_domain
    guide.natural.unconstrained().copy_(domain.to_unconstrained(domain.pack(natural)))
    if guide.factor_mode == "free":
        for key, (value, constraint) in guide.pgm.init_free_factor(natural).items():
            getattr(guide.free, key).unconstrained().copy_(torch.distributions.transform_to(constraint).inv(value))
    return natural


def pretrain_components(svi, guide, data, *, iterations: int, **fit_kwargs):
    r"""
    A pre-training phase: ``iterations`` steps of ``svi`` with the mixture components
    held where they are (the natural step must be zero meanwhile, e.g. ``svi``'s
    :class:`~pyro_sin.optim.NaturalAdam` built with ``natural_lr=warmup_schedule(β, iterations)``),
    then :func:`place_components` on what the networks have learned.

    :param fit_kwargs: passed to :func:`~pyro_sin.training.fit` (``batch_size`` at least).
    :returns: the :class:`~pyro_sin.training.History` of the phase.
    """
    from .training import fit

    before = {k: v.detach().clone() for k, v in guide.natural_params().items()} if iterations else None
    history = fit(svi, data, iterations=iterations, **fit_kwargs)
    if before is not None and any(not torch.equal(before[k], v) for k, v in guide.natural_params().items()):
        raise ValueError("pretrain_components: the components moved during pre-training; hold them (natural_lr 0)")
    place_components(guide, data, fit_kwargs.get("generator"))
    return history
