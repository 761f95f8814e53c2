r"""
The generic pieces of data-driven starts for SAN training (each family's own start is its
:meth:`~pyro_sin.pgm.base.StructuredPrior.encoded_start`), and a warm-up of the natural step.

Started at random, the natural step of a latent mixture can grab the data before the networks
have learned anything, and every point ends in one or two components; components placed on the
clusters of the encoded data, and held still while the networks adapt to them, avoid that.
"""

from typing import Callable, Optional

import torch

from .distributions import NormalWishart
from .potential import GaussianPotential
from .training import fit


def kmeans(points: torch.Tensor, num_clusters: int, generator: Optional[torch.Generator] = None, iterations: int = 50):
    r"""
    Lloyd's k-means from a k-means++ start (each new centre drawn with
    probability proportional to the squared distance to the nearest centre so far).

    :param torch.Tensor points: shape ``(N, D)``.
    :returns: ``(centres, assignment)``, shapes ``(K, D)`` and ``(N,)``.
    """
    N = len(points)
    if not 1 <= num_clusters <= N:
        raise ValueError(f"K={num_clusters} clusters need at least {num_clusters} points (and K >= 1), got {N}")
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


def best_kmeans(points: torch.Tensor, num_clusters: int, generator: Optional[torch.Generator] = None, n_init: int = 10):
    r"""
    The best of ``n_init`` runs of :func:`kmeans` by within-cluster sum of squares
    ``Σ_n ‖x_n - c_{a_n}‖²`` (as scikit-learn's ``KMeans(n_init=...)`` chooses).

    :returns: ``(centres, assignment)``, shapes ``(K, D)`` and ``(N,)``.
    """
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    best = None
    for _ in range(n_init):
        centres, assignment = kmeans(points, num_clusters, generator)
        inertia = float((points - centres[assignment]).pow(2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres, assignment)
    return best[1], best[2]


def normal_wishart_from_clusters(
    points: torch.Tensor, centres: torch.Tensor, responsibilities: torch.Tensor
) -> NormalWishart:
    r"""
    ``K`` Normal-Wisharts, one on each (soft) cluster of ``points``: ``E[μ_k]`` is the
    cluster's centre and ``E[Λ_k]`` the inverse of its covariance (regularised towards
    the pooled within-cluster covariance), with a weak confidence (``κ = 1``,
    ``ν = 2D + 1``), so that a natural step soon replaces them by what the data say.

    :param points: shape ``(N, D)``.
    :param centres: shape ``(K, D)``.
    :param responsibilities: each point's share in each cluster, shape ``(N, K)``.
    :returns: a :class:`~pyro_sin.distributions.NormalWishart` of batch shape ``(K,)``.
    """
    K, D = centres.shape
    counts = responsibilities.sum(0)  # (K,)
    deviation = points[:, None, :] - centres  # (N, K, D)
    scatter = torch.einsum("nk,nki,nkj->kij", responsibilities, deviation, deviation)  # (K, D, D)
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


def normal_wishart_from_points(
    num_components: int, points: torch.Tensor, generator: Optional[torch.Generator] = None
) -> NormalWishart:
    """
    :func:`normal_wishart_from_clusters` on the k-means clusters of ``points``
    (shape ``(..., D)``, flattened to ``(N, D)``): a start for the ``K`` Gaussians of a
    mixture or an HMM.
    """
    points = points.detach().reshape(-1, points.shape[-1])
    centres, assignment = kmeans(points, num_components, generator)
    one_hot = torch.nn.functional.one_hot(assignment, num_components).to(points.dtype)
    return normal_wishart_from_clusters(points, centres, one_hot)


def encode(encoder, data) -> GaussianPotential:
    """The encoder's potentials for ``data`` (a tensor, or a tuple of encoder inputs)."""
    potential = encoder(*data) if isinstance(data, tuple) else encoder(data)
    return potential if isinstance(potential, GaussianPotential) else GaussianPotential(*potential)


def draws_from_potentials(encoder, data, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw from each of the encoder's potentials for ``data``, shape of their means."""
    # draws, not the potentials' means: with a latent space wider than the data the means lie on
    # a subspace, and clusters or regressions fitted to them would be singular
    potential = encode(encoder, data)
    noise = torch.randn(potential.info_vec.shape, generator=generator).to(potential.info_vec)
    return potential.mean + noise * potential.precision.rsqrt()


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


def pretrain_components(svi, guide, data, *, iterations: int, **fit_kwargs):
    r"""
    A pre-training phase: ``iterations`` steps of ``svi`` with ``λ`` held where it is
    (the natural step must be zero meanwhile, e.g. ``svi``'s
    :class:`~pyro_sin.optim.NaturalAdam` built with ``natural_lr=warmup_schedule(β, iterations)``),
    then the family's data-driven start on what the networks have learned
    (:meth:`~pyro_sin.pgm.base.StructuredPrior.encoded_start`, set in place by
    :meth:`~pyro_sin.guide.SINGuide.set_natural`, so the same guide and optimiser carry on):
    started on an encoding that already reflects the data rather than on the initial,
    nearly linear one, e.g. mixture components find the clusters the networks have made.

    :param fit_kwargs: passed to :func:`~pyro_sin.training.fit` (``batch_size`` at least).
    :returns: the :class:`~pyro_sin.training.History` of the phase.
    """
    before = {k: v.detach().clone() for k, v in guide.natural_params().items()} if iterations else None
    history = fit(svi, data, iterations=iterations, **fit_kwargs)
    if before is not None and any(not torch.equal(before[k], v) for k, v in guide.natural_params().items()):
        raise ValueError("pretrain_components: the components moved during pre-training; hold them (natural_lr 0)")
    guide.set_natural(guide.pgm.encoded_start(guide.encoder, data, fit_kwargs.get("generator")))
    return history
