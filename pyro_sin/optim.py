r"""
An optimiser that pairs natural-gradient (VMP) steps with Adam inside one
``SVI.step``.

:class:`~pyro_sin.SINELBO` writes into the gradient of every natural parameter
``λ`` of a conjugate posterior the difference to its conjugate target ``λ*``:

.. math:: \nabla_\lambda := \lambda - \lambda^*

(the negative natural gradient of the ELBO). :class:`NaturalAdam` gives each
such parameter a plain step of length ``β_t`` — no momentum, no clipping, no
weight decay — so that

.. math:: \lambda \leftarrow (1 - \beta_t)\,\lambda + \beta_t\,\lambda^*,

a convex combination that stays inside the natural-parameter domain, and hands
every other parameter to Adam (or any torch optimiser). Natural parameters
are recognised by their constraint, :data:`natural_parameter`, which the guide
declares when it registers them.
"""

import math
from typing import Callable, Union

import torch
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import identity_transform

import pyro
from pyro.optim import PyroOptim


class _NaturalParameter(constraints._Real):
    """Real-valued, and updated only by convex combination with a conjugate target."""

    def __repr__(self):
        return "natural_parameter"


natural_parameter = _NaturalParameter()
biject_to.register(_NaturalParameter)(lambda constraint: identity_transform)
transform_to.register(_NaturalParameter)(lambda constraint: identity_transform)


def is_natural_parameter(param: torch.Tensor) -> bool:
    """Whether a param-store tensor was registered with :data:`natural_parameter`."""
    store = pyro.get_param_store()
    try:
        name = store.param_name(param)
    except KeyError:
        return False
    return isinstance(store._constraints.get(name), _NaturalParameter)


def decaying_schedule(initial: float, decay: float, period: float) -> Callable[[int], float]:
    r"""``β_t = initial · decay^(t / period)`` (the paper's Auto MPG schedule: 0.2, 0.95, 1000)."""
    if not (0 < initial <= 1 and 0 < decay <= 1 and period > 0):
        raise ValueError("need 0 < initial <= 1, 0 < decay <= 1 and period > 0")
    return lambda step: initial * math.pow(decay, step / period)


class NaturalStep(torch.optim.Optimizer):
    r"""
    ``λ ← λ - β_t · grad`` with ``grad = λ - λ*``, i.e. the convex combination
    ``(1 - β_t) λ + β_t λ*``. The step counter ``t`` lives in the optimiser state
    so that a saved and restored run continues the same schedule.

    :param params: natural parameters.
    :param schedule: a constant ``β ∈ (0, 1]`` or a callable ``t ↦ β_t``.
    """

    def __init__(self, params, schedule: Union[float, Callable[[int], float]]):
        if not callable(schedule):
            beta = float(schedule)
            if not 0 < beta <= 1:
                raise ValueError(f"the natural step size must lie in (0, 1], got {beta}")
            schedule = _Constant(beta)
        self.schedule = schedule
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                t = state.get("step", 0)
                beta = self.schedule(t)
                if not 0 <= beta <= 1:
                    raise ValueError(f"natural step size β_{t} = {beta} is outside [0, 1]")
                p.sub_(p.grad, alpha=beta)
                state["step"] = t + 1


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
        if is_natural_parameter(param):
            return NaturalStep([param], self.natural_lr)
        return super()._get_optim(param)

    def _get_grad_clip(self, param):
        if is_natural_parameter(param):
            return None
        return super()._get_grad_clip(param)
