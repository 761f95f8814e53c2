r"""
An optimiser that pairs natural-gradient (VMP) steps with Adam inside one
``SVI.step``.

The natural parameters ``λ`` of a conjugate posterior live in the param store
as an unconstrained tensor ``u`` with ``λ = T(u)``
(:class:`~pyro_sin.distributions.natural.NaturalDomain`). For each of them
:class:`~pyro_sin.SINELBO` computes the conjugate target ``λ*`` (the
natural gradient of the bound is ``λ* - λ``) and hands it over with the
gradient (:func:`set_natural_gradient`). :class:`NaturalAdam` gives each such
tensor a :class:`NaturalStep` — no momentum, no clipping, no weight decay —

.. math:: \lambda \leftarrow (1 - \beta_t)\,\lambda + \beta_t\,\lambda^*,

a convex combination that stays inside the natural-parameter domain, and hands
every other parameter to Adam (or any torch optimiser). Natural parameters are
recognised by their constraint, which survives Pyro's param-store
``save``/``load``.
"""

import math
from typing import Callable, Union

import torch

import pyro
from pyro.optim import PyroOptim

from .distributions.natural import NaturalDomain, is_natural_domain


def natural_domain_of(param: torch.Tensor):
    """The :class:`~pyro_sin.distributions.natural.NaturalDomain` a param-store tensor was registered with, or None."""
    store = pyro.get_param_store()
    try:
        name = store.param_name(param)
    except KeyError:
        return None
    constraint = store._constraints.get(name)
    return constraint if is_natural_domain(constraint) else None


def is_natural_parameter(param: torch.Tensor) -> bool:
    """Whether a param-store tensor holds natural parameters (its constraint is a NaturalDomain)."""
    return natural_domain_of(param) is not None


def set_natural_gradient(param: torch.Tensor, domain: NaturalDomain, target: torch.Tensor) -> None:
    r"""
    What :class:`~pyro_sin.SINELBO` hands :class:`NaturalStep` for the unconstrained
    tensor ``u`` of natural parameters ``λ = T(u)``: ``grad = u - T⁻¹(λ*)`` (so that a
    stock optimiser at least moves ``u`` towards the target) with the target ``λ*``
    itself attached to that gradient.
    """
    grad = param.detach() - domain.to_unconstrained(target).to(param.dtype)
    grad.natural_target = (target, grad._version)
    param.grad = grad


def _natural_target(param: torch.Tensor):
    """The ``λ*`` SINELBO attached to ``param.grad``, or None if the gradient came from elsewhere."""
    attached = getattr(param.grad, "natural_target", None)
    if attached is None or attached[1] != param.grad._version:
        return None
    return attached[0]


def decaying_schedule(initial: float, decay: float, period: float) -> Callable[[int], float]:
    r"""``β_t = initial · decay^(t / period)`` (the paper's Auto MPG schedule: 0.2, 0.95, 1000)."""
    if not (0 < initial <= 1 and 0 < decay <= 1 and period > 0):
        raise ValueError("need 0 < initial <= 1, 0 < decay <= 1 and period > 0")
    return lambda step: initial * math.pow(decay, step / period)


class NaturalStep(torch.optim.Optimizer):
    r"""
    The natural-gradient step on one tensor of natural parameters, taken in natural
    coordinates,

    .. math:: \lambda \leftarrow (1 - \beta_t)\,\lambda + \beta_t\,\lambda^*,

    with ``λ = T(u)`` read from the unconstrained parameter ``u`` and mapped back by
    ``T⁻¹``; ``λ*`` is the target :class:`~pyro_sin.SINELBO` attached to the gradient.
    The step counter ``t`` lives in the optimiser state, so that a saved and restored
    run continues the same schedule.

    :param params: the unconstrained tensor of natural parameters.
    :param schedule: a constant ``β ∈ (0, 1]`` or a callable ``t ↦ β_t``.
    :param NaturalDomain domain: the natural parameters' domain and bijection.
    """

    def __init__(self, params, schedule: Union[float, Callable[[int], float]], domain: NaturalDomain):
        if not callable(schedule):
            beta = float(schedule)
            if not 0 < beta <= 1:
                raise ValueError(f"the natural step size must lie in (0, 1], got {beta}")
            schedule = _Constant(beta)
        self.schedule = schedule
        self.domain = domain
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                target = _natural_target(p)
                if target is None:
                    raise ValueError(
                        "NaturalAdam received an ordinary gradient for natural parameters "
                        f"{_name_of(p)}: their natural-gradient step needs the conjugate targets that "
                        "pyro_sin.SINELBO supplies. Pair NaturalAdam with SINELBO, or train with a "
                        "stock ELBO and a stock optimiser (e.g. pyro.optim.Adam)"
                    )
                state = self.state[p]
                t = state.get("step", 0)
                beta = self.schedule(t)
                if not 0 <= beta <= 1:
                    raise ValueError(f"natural step size β_{t} = {beta} is outside [0, 1]")
                natural = self.domain.from_unconstrained(p)
                p.copy_(self.domain.to_unconstrained(torch.lerp(natural, target.to(p.dtype), beta)))
                state["step"] = t + 1


def _name_of(param):
    try:
        return repr(pyro.get_param_store().param_name(param))
    except KeyError:
        return "(not in the param store)"


class _Constant:
    def __init__(self, value):
        self.value = value

    def __call__(self, step):
        return self.value


class NaturalAdam(PyroOptim):
    r"""
    A :class:`~pyro.optim.PyroOptim` that applies :class:`NaturalStep` to natural
    parameters and ``optim_constructor`` (Adam by default) to all others.

    :param dict optim_args: arguments of ``optim_constructor``, or a callable of the
        parameter name returning them, as for any :class:`~pyro.optim.PyroOptim`.
    :param natural_lr: ``β``: a constant in ``(0, 1]`` or a callable ``t ↦ β_t``
        (see :func:`decaying_schedule`).
    :param optim_constructor: the torch optimiser for non-natural parameters.
    :param dict clip_args: gradient clipping for non-natural parameters only.
    """

    def __init__(
        self,
        optim_args,
        natural_lr: Union[float, Callable[[int], float]] = 0.1,
        optim_constructor=torch.optim.Adam,
        clip_args=None,
    ):
        if not callable(natural_lr) and not 0 < float(natural_lr) <= 1:
            raise ValueError(f"natural_lr must lie in (0, 1], got {natural_lr}")
        self.natural_lr = natural_lr
        super().__init__(optim_constructor, optim_args, clip_args)

    def _get_optim(self, param):
        domain = natural_domain_of(param)
        if domain is not None:
            return NaturalStep([param], self.natural_lr, domain)
        return super()._get_optim(param)

    def _get_grad_clip(self, param):
        if is_natural_parameter(param):
            return None
        return super()._get_grad_clip(param)
