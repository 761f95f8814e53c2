r"""
Dirichlet helpers for the mixture weights.

The Dirichlet's natural parameter is its concentration ``α`` (paired with
``log π``), so a conjugate update adds expected counts and a natural step is a
convex combination of concentrations.
"""

import torch
from torch.distributions import kl_divergence

import pyro.distributions as dist


def dirichlet_expected_log(concentration: torch.Tensor) -> torch.Tensor:
    r"""
    .. math:: E[\log\pi_k] = \psi(\alpha_k) - \psi\big(\textstyle\sum_j\alpha_j\big)

    :param torch.Tensor concentration: ``α``, shape ``(..., K)``.
    """
    return torch.special.digamma(concentration) - torch.special.digamma(
        concentration.sum(-1, keepdim=True)
    )


def dirichlet_kl(concentration_q: torch.Tensor, concentration_p: torch.Tensor) -> torch.Tensor:
    """``KL(Dir(α_q) ‖ Dir(α_p))`` in closed form, shape ``(...)``."""
    return kl_divergence(
        dist.Dirichlet(concentration_q, validate_args=False),
        dist.Dirichlet(concentration_p, validate_args=False),
    )


def dirichlet_cross_entropy(concentration_q: torch.Tensor, concentration_p: torch.Tensor) -> torch.Tensor:
    """``-E_{Dir(α_q)}[log Dir(π; α_p)]`` in closed form, shape ``(...)``."""
    return dirichlet_kl(concentration_q, concentration_p) + dist.Dirichlet(
        concentration_q, validate_args=False
    ).entropy()
