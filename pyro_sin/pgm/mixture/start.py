r"""
The classic start of a deep latent Gaussian mixture: the Gaussian mixture it contains.

A deep latent mixture with a linear decoder is a mixture of probabilistic PCA components
of the data, and with a latent space as wide as the data, a Gaussian mixture of the data
themselves. :func:`classic_start` builds the networks at that linear start
(:func:`~pyro_sin.standardize.ppca_autoencoder`, their nonlinear parts at zero) and fits the
mixture to their potentials by variational Bayes
(:meth:`~pyro_sin.pgm.GaussianMixture.fit_to_potentials`): SAN trained from there starts at
the classic model's bound, in any units.
"""

import numbers
from typing import Dict, NamedTuple, Optional, Sequence

import torch

from ...initialization import encode
from ...potential import GaussianPotential
from ...standardize import LinearStart, as_float_tensor, check_table, ppca_autoencoder
from .gaussian import GaussianMixture


class MixtureStart(NamedTuple):
    """What :func:`classic_start` returns."""

    prior: GaussianMixture  # the latent mixture prior, in the data's dtype
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    natural: Dict[str, torch.Tensor]  # λ of the classic fit, for SINGuide(..., init_natural=...)
    networks: LinearStart  # the probabilistic PCA the networks start as


def weak_prior(num_components: int, latent_dim: int, **kwargs):
    r"""
    A :class:`~pyro_sin.pgm.GaussianMixture` whose prior suits a white latent space:
    ``E[Σ_k] = I`` with the weakest proper Wishart (``ν₀ = D + 2``), and a flat Dirichlet
    (``α₀ = 1``), so that the data, not the prior, shape the components (the mixture's default
    prior is the SAN paper's, tuned for a 2-dimensional latent space).

    :param kwargs: further arguments of the mixture, overriding these.
    :returns: a :class:`~pyro_sin.pgm.GaussianMixture`.
    """
    D = latent_dim
    settings = dict(concentration=1.0, df=D + 2.0, scale_inv=torch.eye(D))
    return GaussianMixture(num_components, D, **{**settings, **kwargs})


def classic_start(
    data: torch.Tensor,
    num_components: int,
    latent_dim: Optional[int] = None,
    hidden: Sequence[int] = (50, 50),
    *,
    prior=None,
    per_feature: bool = True,
    generator: Optional[torch.Generator] = None,
    n_init: int = 10,
) -> MixtureStart:
    r"""
    A deep latent Gaussian mixture at the classic Gaussian mixture it contains.

    :param data: the training data, shape ``(N, P)``, in any units (a tensor, numpy array,
        pandas DataFrame or list of rows).
    :param int num_components: ``K``.
    :param int latent_dim: ``D`` (default: the data's dimension ``P``).
    :param prior: the latent mixture prior (default :func:`weak_prior`).
    :param bool per_feature: standardise each feature by its own spread (tables); ``False``
        keeps the features' relative sizes (pixels, coordinates).
    :param int n_init: k-means partitions tried for the start of variational Bayes.
    :returns: a :class:`MixtureStart`.
    """
    data = check_table(as_float_tensor(data), "classic_start's data")
    if isinstance(num_components, bool) or not isinstance(num_components, numbers.Integral) or num_components < 1:
        raise ValueError(f"classic_start: num_components must be a whole number >= 1, got {num_components!r}")
    if len(data) < max(num_components, 2):
        raise ValueError(
            f"classic_start: K={num_components} components need at least {max(num_components, 2)} rows, "
            f"got {len(data)}: pass more data or a smaller num_components"
        )
    latent_dim = data.shape[-1] if latent_dim is None else latent_dim
    networks = ppca_autoencoder(data, latent_dim, hidden, per_feature=per_feature)
    prior = weak_prior(num_components, latent_dim) if prior is None else prior
    prior = prior.to(networks.directions)
    with torch.no_grad():
        raw = encode(networks.encoder, data)
        potential = GaussianPotential(raw.info_vec.detach(), raw.precision.detach())
        points = networks.encoder.standardization(data) @ networks.directions.T  # unwhitened principal components
    natural, _ = prior.fit_to_potentials(potential, points, generator, n_init)
    return MixtureStart(prior, networks.encoder, networks.decoder, natural, networks)
