r"""
An optimiser that pairs natural-gradient (VMP) steps with Adam inside one
``SVI.step``.

The natural parameters ``λ`` of a conjugate posterior live in the param store
as an unconstrained tensor ``u`` with ``λ = T(u)``
(:class:`~pyro_sin.distributions.natural.NaturalDomain`). For each of them
:class:`~pyro_sin.SINELBO` computes the conjugate target ``λ*`` and writes
the negative natural gradient ``λ - λ*`` into the gradient of ``u``
(:func:`pyro_sin.natural.set_natural_gradient`). :class:`NaturalAdam` gives each such
tensor a :class:`NaturalStep` — no momentum, no clipping, no weight decay —

.. math:: \lambda \leftarrow (1 - \beta_t)\,\lambda + \beta_t\,\lambda^*,

a convex combination that stays inside the natural-parameter domain, and hands
every other parameter to Adam (or any torch optimiser). Before it moves anything it
checks the step with a :class:`~pyro_sin.training.DivergenceGuard` (a non-finite or
exploding loss, a non-finite gradient), so that plain ``svi.step`` refuses a diverging
update as :func:`~pyro_sin.training.fit` does. Natural parameters are
recognised by their constraint, which survives Pyro's param-store
``save``/``load``.
"""

import contextlib
import math
from typing import Callable, Optional, Union

import torch

import pyro
from pyro.optim import PyroOptim

from .distributed import average_gradients, world
from .distributions.natural import NaturalDomain
from .natural import current_natural, is_natural_parameter, natural_domain_of, step_loss
from .training import DivergenceGuard, _collective_check


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

    from the gradient ``λ - λ*`` that :class:`~pyro_sin.SINELBO` writes, and mapped back
    to the unconstrained parameter ``u`` by ``T⁻¹``.
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
                natural = current_natural(p)
                if natural is None:
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
                if beta > 0:  # (a warm-up holds λ exactly)
                    p.copy_(self.domain.to_unconstrained(natural - beta * p.grad))
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

    The other parameters share one torch optimiser (one parameter group per distinct
    set of arguments), fused where torch offers it: one kernel for every tensor
    instead of a Python loop over per-parameter optimisers. Its state is saved and
    loaded per parameter name, as for any :class:`~pyro.optim.PyroOptim`.

    :param dict optim_args: arguments of ``optim_constructor``, or a callable of the
        parameter name returning them, as for any :class:`~pyro.optim.PyroOptim`.
    :param natural_lr: ``β``: a constant in ``(0, 1]`` or a callable ``t ↦ β_t``
        (see :func:`decaying_schedule`).
    :param optim_constructor: the torch optimiser for non-natural parameters.
    :param dict clip_args: gradient clipping for non-natural parameters only.
    :param bool distributed: average every gradient across the processes of the
        initialised :mod:`torch.distributed` group before stepping (see
        :mod:`pyro_sin.distributed`); by default whenever such a group exists.
    :param guard: ``True`` (a default :class:`~pyro_sin.training.DivergenceGuard`),
        ``False`` (none), or a guard of your own: every step is checked before any
        parameter moves, and a NaN or infinite gradient, or a NaN, infinite or exploding
        loss per data point (the one :class:`~pyro_sin.SINELBO` marks its natural
        gradients with), raises :class:`~pyro_sin.training.DivergenceError` with the
        parameters unchanged. :func:`~pyro_sin.training.fit` uses its own guard instead.
    """

    def __init__(
        self,
        optim_args,
        natural_lr: Union[float, Callable[[int], float]] = 0.1,
        optim_constructor=torch.optim.Adam,
        clip_args=None,
        distributed: Optional[bool] = None,
        guard: Union[bool, DivergenceGuard] = True,
    ):
        if not callable(natural_lr) and not 0 < float(natural_lr) <= 1:
            raise ValueError(f"natural_lr must lie in (0, 1], got {natural_lr}")
        lr = optim_args.get("lr") if isinstance(optim_args, dict) else None
        # a negative rate climbs the loss and NaN stops nothing; 0 is allowed (natural steps alone)
        if lr is not None and not float(lr) >= 0:
            raise ValueError(f"NaturalAdam: optim_args['lr'] must be positive or 0, got {lr} (e.g. {{'lr': 1e-3}})")
        self.natural_lr = natural_lr
        super().__init__(optim_constructor, optim_args, clip_args)
        self.distributed = distributed
        self.guard = DivergenceGuard() if guard is True else (guard or None)
        self._calls = 0  # the steps asked for, refused ones included (for the guard's messages)
        self._fused = None  # the torch optimiser of every non-natural parameter
        self._fused_params = []
        self._groups = []  # (the optimiser arguments asked for, the parameter group holding them)
        self._is_natural = {}
        self._loaded_state = {}  # per parameter name, from set_state, until the parameter's optimiser exists

    def __call__(self, params, *args, **kwargs):
        params = list(params)
        if self.distributed or self.distributed is None and world()[1] > 1:
            average_gradients(params)
        self._calls += 1
        if self.guard is not None:
            loss = next((value for value in map(step_loss, params) if value is not None), None)
            _collective_check(self.guard, self._calls, loss, params, "NaturalAdam")
        natural, others = [], []
        for p in params:
            if p not in self._is_natural:
                self._is_natural[p] = natural_domain_of(p) is not None
            (natural if self._is_natural[p] else others).append(p)
        super().__call__(natural, *args, **kwargs)
        if others:
            self._step_fused(others)

    @contextlib.contextmanager
    def unguarded(self):
        """Steps without the divergence guard inside the block (e.g. under a training loop that guards itself)."""
        guard, self.guard = self.guard, None
        try:
            yield self
        finally:
            self.guard = guard

    def set_state(self, state_dict):
        # Held here rather than handed to PyroOptim: each parameter's state is taken when its
        # optimiser is built, by _get_optim (natural steps) or _join (the fused optimiser).
        self._loaded_state.update(state_dict)

    def _get_optim(self, param):
        domain = natural_domain_of(param)
        optim = NaturalStep([param], self.natural_lr, domain) if domain is not None else super()._get_optim(param)
        state = self._loaded_state.pop(pyro.get_param_store().param_name(param), None)
        if state is not None:
            optim.load_state_dict(state)
        return optim

    def _get_grad_clip(self, param):
        if is_natural_parameter(param):
            return None
        return super()._get_grad_clip(param)

    # ----- the one fused optimiser of the other parameters ------------------------------------

    def _join(self, param):
        """Adds a parameter to the fused optimiser, restoring any loaded state for it."""
        args = self._get_optim_args(param)
        # torch fills every group with its defaults, so groups are matched on the arguments
        # asked for, not on the group's contents
        same = [group for requested, group in self._groups if requested == args]
        if same:
            same[0]["params"].append(param)
        elif self._fused is None:
            self._fused = _construct_fused(self.pt_optim_constructor, {"params": [param], **args})
            self._groups.append((args, self._fused.param_groups[-1]))
        else:
            self._fused.add_param_group({"params": [param], **args})
            self._groups.append((args, self._fused.param_groups[-1]))
        self._fused_params.append(param)
        self.grad_clip[param] = self._get_grad_clip(param)
        waiting = self._loaded_state.pop(pyro.get_param_store().param_name(param), None)
        if waiting is not None:
            # our own format, or a per-parameter torch optimiser's state dict (pyro.optim)
            state = waiting["fused"] if "fused" in waiting else next(iter(waiting["state"].values()), {})
            self._fused.state[param] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}

    def _step_fused(self, params):
        for p in params:
            if p not in self.grad_clip:
                self._join(p)
            if self.grad_clip[p] is not None:
                self.grad_clip[p](p)
        # parameters this step did not touch keep their values, as with per-parameter optimisers
        current = set(params)
        idle = {p: p.grad for p in self._fused_params if p not in current and p.grad is not None}
        for p in idle:
            p.grad = None
        try:
            self._fused.step()
        finally:
            for p, grad in idle.items():
                p.grad = grad

    def get_state(self):
        state = super().get_state()
        store = pyro.get_param_store()
        for p in self._fused_params:
            state[store.param_name(p)] = {"fused": dict(self._fused.state[p])}
        return state


def _construct_fused(constructor, group):
    """The torch optimiser, fused where it takes ``fused=True`` for these tensors."""
    if "fused" not in group and "foreach" not in group:
        try:
            return constructor([group], fused=True)
        except (TypeError, RuntimeError, ValueError):
            pass  # not offered by this optimiser, device or dtype
    return constructor([group])
