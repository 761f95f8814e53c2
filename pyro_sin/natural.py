r"""
The hand-off of a natural-gradient step from :class:`~pyro_sin.SINELBO` to
:class:`~pyro_sin.optim.NaturalAdam`.

The natural parameters ``λ`` of a conjugate posterior live in the param store as
an unconstrained tensor ``u`` with ``λ = T(u)``, registered with a
:class:`~pyro_sin.distributions.natural.NaturalDomain` as its constraint. The ELBO
computes the conjugate target ``λ*`` and writes the negative natural gradient

.. math:: \text{grad}\ u = \lambda - \lambda^*

into the gradient slot of ``u`` (:func:`set_natural_gradient`), marked together
with the ``λ`` it was computed at; the optimiser reads it back
(:func:`current_natural`) and steps ``λ ← λ - β (λ - λ*)``. The mark also carries the
step's loss per data point (:func:`step_loss`), which the optimiser's divergence guard
checks before it applies the step. The ELBO and the optimiser both import this module
and not each other.
"""

from typing import Optional

import torch

import pyro

from .distributions.natural import NaturalDomain, is_natural_domain


def natural_domain_of(param: torch.Tensor) -> Optional[NaturalDomain]:
    """The :class:`~pyro_sin.distributions.natural.NaturalDomain` a param-store tensor was registered with, or None."""
    store = pyro.get_param_store()
    try:
        name = store.param_name(param)
    except KeyError:
        return None
    constraint = store.get_state()["constraints"].get(name)
    return constraint if is_natural_domain(constraint) else None


def is_natural_parameter(param: torch.Tensor) -> bool:
    """Whether a param-store tensor holds natural parameters (its constraint is a NaturalDomain)."""
    return natural_domain_of(param) is not None


def set_natural_gradient(
    param: torch.Tensor, natural: torch.Tensor, target: torch.Tensor, loss: Optional[float] = None
) -> torch.Tensor:
    r"""
    Writes the negative natural gradient ``grad = λ - λ*`` (natural coordinates) into
    the gradient of the unconstrained tensor ``u`` of ``λ = T(u)`` (same shape), marked
    as such together with the current ``λ``. Being linear in the minibatch's statistics,
    such gradients average across processes into the global batch's.

    :param float loss: the step's loss per data point, for :func:`step_loss`.
    :returns: the gradient written.
    """
    grad = (natural - target).to(param.dtype)
    grad.natural_gradient = (natural, grad._version, loss)
    param.grad = grad
    return grad


def current_natural(param: torch.Tensor) -> Optional[torch.Tensor]:
    """
    The ``λ`` that :func:`set_natural_gradient` marked ``param.grad`` with, or None when the
    gradient came from elsewhere (a stock ELBO) or was changed since.
    """
    attached = getattr(param.grad, "natural_gradient", None)
    if attached is None or attached[1] != param.grad._version:
        return None
    return attached[0]


def step_loss(param: torch.Tensor) -> Optional[float]:
    """
    The loss per data point that :func:`set_natural_gradient` marked ``param.grad`` with
    (the step that computed this gradient), or None.
    """
    attached = getattr(param.grad, "natural_gradient", None)
    return None if attached is None else attached[2]


def replace_gradient(param: torch.Tensor, value: torch.Tensor) -> None:
    """
    Overwrites ``param.grad`` in place with ``value`` (e.g. its average over processes),
    keeping the mark of :func:`set_natural_gradient` valid if the gradient carried one.
    """
    natural, loss = current_natural(param), step_loss(param)
    param.grad.copy_(value)
    if natural is not None:
        param.grad.natural_gradient = (natural, param.grad._version, loss)
