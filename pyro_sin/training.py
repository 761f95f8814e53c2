"""
A minibatch training loop around :class:`pyro.infer.SVI` with a progress bar, a
guard against divergence, and a count of the structure's units (mixture components,
states) in use.
"""

import contextlib
import itertools
import math
import time
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

import pyro
import pyro.poutine as poutine
from pyro.infer.util import torch_item

from .distributed import broadcast_parameters, check_same_sizes, world


class History(NamedTuple):
    """What :func:`fit` recorded: the loss of every step and periodic evaluations."""

    losses: List[float]
    eval_steps: List[int]
    eval_seconds: List[float]  # training time (evaluations excluded) at each evaluation
    evals: List[Dict[str, float]]
    components: List[int]  # units (mixture components, states) in use after every step (empty without such units)
    selected_step: Optional[int] = None  # the step whose parameters fit returned, when it selected them


class DivergenceError(FloatingPointError):
    """Training diverged; raised by :class:`DivergenceGuard` before the bad update is applied."""


_ADVICE = (
    "Likely causes: a learning rate too high for this problem (try lr 1e-3 .. 1e-2); unscaled data "
    "in extreme units (build the networks with pyro_sin.standardize.standardized_autoencoder, which "
    "standardises them); or a Gaussian decoder without a variance floor (min_scale), whose scale "
    "shrinks onto (nearly) constant features."
)


def _param_name(param: torch.Tensor) -> str:
    try:
        return pyro.get_param_store().param_name(param)
    except KeyError:
        return "?"


class DivergenceGuard:
    r"""
    Checks a step's loss and gradients before the optimiser uses them.

    A step is refused when the loss or any gradient is NaN or infinite, or when
    the loss per data point has risen more than ``max_rise`` above the best
    loss seen so far, measured in units of the loss's own early spread
    (the larger of ``1`` and the absolute value of the first loss), i.e.

    .. math:: \ell_t - \min_{s<t} \ell_s > \text{max\_rise}\cdot\max(1, |\ell_1|).

    A training run that works never comes near that (an ELBO that falls by
    orders of magnitude more than its starting value), while an optimiser that
    overshoots does within a few steps.

    :param float max_rise: how many times its starting magnitude the loss may rise
        above its best value; ``math.inf`` checks only for non-finite values.
    """

    def __init__(self, max_rise: float = 100.0):
        if not max_rise > 0:
            raise ValueError(f"max_rise must be positive, got {max_rise}")
        self.max_rise = max_rise
        self.best = math.inf
        self.unit = None

    def check(self, step: int, loss: Optional[float], params: Sequence[torch.Tensor], desc: str = "SVI"):
        """
        :param float loss: the loss per data point of this step (``None``: check the gradients only).
        :param params: the unconstrained parameters whose gradients the optimiser will use.
        :raises DivergenceError: naming what went wrong and the likely causes.
        """
        if loss is not None and not math.isfinite(loss):
            raise DivergenceError(
                f"{desc}: the loss became {loss} at step {step}; the update was not applied. {_ADVICE}"
            )
        if not _all_finite([p.grad for p in params if p.grad is not None]):
            bad = [_param_name(p) for p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
            shown = ", ".join(sorted(bad)[:5]) + (" ..." if len(bad) > 5 else "")
            raise DivergenceError(
                f"{desc}: non-finite gradient at step {step} in {len(bad)} parameter(s) ({shown}); "
                f"the update was not applied. {_ADVICE}"
            )
        if loss is None:
            return
        if self.unit is None:
            self.unit = max(1.0, abs(loss))
        if loss - self.best > self.max_rise * self.unit:
            raise DivergenceError(
                f"{desc}: the loss per data point rose from its best {self.best:.4g} to {loss:.4g} "
                f"at step {step}; the update was not applied. {_ADVICE}"
            )
        self.best = min(self.best, loss)


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor is finite, read back once for all of them (not once per tensor)."""
    if not tensors:
        return True
    device = tensors[0].device
    return bool(torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all())


def components_in_use(guide, min_share: float = 0.01) -> Optional[int]:
    r"""
    The number of the structure's units (mixture components, states, regimes) that hold
    at least ``min_share`` of the data under the guide's ``q(θ | λ)``
    (:meth:`~pyro_sin.pgm.base.StructuredPrior.in_use`).

    :returns: the count, or ``None`` when the guide has no structured prior or its
        structure has no such units.
    """
    pgm = getattr(guide, "pgm", None)
    with torch.no_grad():
        return None if pgm is None else pgm.in_use(guide.natural_params(), min_share)


def minibatch_indices(
    num_data: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
):
    """
    Endless minibatches of indices, reshuffled every epoch.

    With ``world_size`` processes, each epoch's shuffle is shared (the same
    ``generator`` seed on every rank) and cut into global batches of
    ``world_size * batch_size``; rank ``r`` gets the ``r``-th slice of each, as
    :class:`~torch.utils.data.distributed.DistributedSampler` would hand it out.

    :param torch.Generator generator: the indices are drawn, and returned, on its device.
    """
    global_size = batch_size * world_size
    if not 0 < global_size <= num_data:
        raise ValueError(f"batch_size x processes must lie in [1, {num_data}], got {batch_size} x {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    while True:
        order = torch.randperm(num_data, generator=generator, device=generator.device)
        for start in range(0, num_data - global_size + 1, global_size):
            yield order[start + rank * batch_size : start + (rank + 1) * batch_size]


def _collective_check(guard, step, loss, params, desc):
    """The guard's check, refused on every process if it fails on any (else they would deadlock)."""
    _, size = world()
    if size == 1:
        return guard.check(step, loss, params, desc)
    error = None
    try:
        guard.check(step, loss, params, desc)
    except DivergenceError as e:
        error = e
    failed = torch.tensor(float(error is not None))
    torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed:
        raise DivergenceError(f"{desc}: another process diverged at step {step}; the update was not applied.")


def _guarded_step(svi, guard: Optional[DivergenceGuard], num_data: int, step: int, desc: str, *args, **kwargs):
    """
    ``svi.step`` with the guard between the gradients and the update; returns the loss per data point.
    ``fit``'s guard (or none, if so asked) replaces the optimiser's own (:class:`~pyro_sin.optim.NaturalAdam`'s).
    """
    unguarded = getattr(getattr(svi, "optim", None), "unguarded", None)
    with unguarded() if unguarded is not None else contextlib.nullcontext():
        if guard is None or not hasattr(svi, "loss_and_grads"):
            return svi.step(*args, **kwargs) / num_data
        with poutine.trace(param_only=True) as capture:
            loss = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
        params = set(site["value"].unconstrained() for site in capture.trace.nodes.values())
        loss = torch_item(loss) / num_data  # the bound is scaled to the full data set
        _collective_check(guard, step, loss, params, desc)
        svi.optim(params)
        pyro.infer.util.zero_grads(params)
        return loss


class _Best:
    """The best-scoring parameters seen so far (a copy of Pyro's param store), for :func:`fit`'s ``select``."""

    def __init__(self, select):
        self.select = select
        self.score, self.step, self.state, self.stale = -math.inf, None, None, 0

    def consider(self, step: int, metrics: Dict[str, float]):
        if self.select is None:
            return
        rank, _ = world()
        if rank == 0:  # evaluations run on rank 0 only; the others follow its choice when restoring
            score = float(metrics[self.select] if isinstance(self.select, str) else self.select())
            if math.isnan(score):  # never chosen over a number: ranked below every finite score
                name = repr(self.select) if isinstance(self.select, str) else "select()"
                warnings.warn(
                    f"fit: the selection score {name} is NaN at step {step}; that evaluation is never "
                    "selected over one with a number",
                    RuntimeWarning,
                    stacklevel=4,  # fit's caller
                )
                score = -math.inf
            if self.step is None or score > self.score:
                params = pyro.get_param_store().named_parameters()
                self.score, self.step, self.stale = score, step, 0
                self.state = {name: value.detach().clone() for name, value in params}
            else:
                self.stale += 1
        else:
            self.step = step

    @torch.no_grad()
    def restore(self):
        if self.state is not None:
            params = dict(pyro.get_param_store().named_parameters())
            for name, value in self.state.items():
                params[name].copy_(value)
        broadcast_parameters()  # (a no-op in one process)


def _any_process(flag: bool) -> bool:
    """``flag`` on any process (rank 0 decides when to stop; every process must stop together)."""
    _, size = world()
    if size == 1:
        return flag
    flag = torch.tensor(float(flag))
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag)


def fit(
    svi,
    data: Union[torch.Tensor, Sequence[torch.Tensor]],
    *,
    iterations: int,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    evaluate: Optional[Callable[[], Dict[str, float]]] = None,
    eval_every: int = 50,
    max_seconds: Optional[float] = None,
    progress: bool = True,
    desc: str = "SVI",
    guard: Union[bool, DivergenceGuard] = True,
    select: Union[None, str, Callable[[], float]] = None,
    patience: Optional[int] = None,
) -> History:
    """
    Runs ``svi.step(*batch, indices=idx)`` on random minibatches, where ``batch``
    holds the rows ``idx`` of ``data`` (a tensor, or a tuple of tensors with
    one row per data point each).

    Every step is checked by a :class:`DivergenceGuard` between the gradients and
    the update, and for a structure with units (mixture components, states) the number
    in use (:func:`components_in_use`) is shown in the progress bar and recorded; a
    :class:`RuntimeWarning` with the family's advice is given when training ends with a
    count it warns of (e.g. every point in one mixture component).

    In a :mod:`torch.distributed` process group each process trains on its share of
    every global batch of ``batch_size x processes`` (see :func:`minibatch_indices`),
    starting from rank 0's parameters; :class:`~pyro_sin.optim.NaturalAdam` averages
    the gradients, and only rank 0 shows progress and evaluates.

    :param data: a tensor, or a tuple of tensors with one row per data point
        (e.g. sequences, their missing-frame mask and their lengths; array-likes are converted
        to a :class:`~pyro_sin.SINGuide`'s encoder's dtype and device); each is
        indexed by the same minibatch and passed positionally,
        ``svi.step(*(d[idx] for d in data), indices=idx)``.
    :param evaluate: called at step 0, every ``eval_every`` steps and at the end;
        returns named metrics shown in the progress bar and kept in the history.
    :param max_seconds: stop early once training (evaluations excluded) has taken this long.
    :param guard: ``True`` (a default :class:`DivergenceGuard`), ``False`` (none:
        plain ``svi.step``), or a guard of your own. Inside ``fit`` it replaces the
        optimiser's own guard (:class:`~pyro_sin.optim.NaturalAdam`'s ``guard``).
    :param select: best-checkpoint selection: a score to maximise, e.g. a held-out
        log-likelihood, either the name of one of ``evaluate``'s metrics or a callable.
        It is computed at every evaluation, step 0 included, and training returns with
        the parameters of the best one (:attr:`History.selected_step`), so a run never
        ends below its start on that score.
    :param patience: with ``select``, stop once this many evaluations in a row have not
        improved on the best score.
    :raises DivergenceError: when the loss or a gradient becomes NaN or infinite,
        or the loss explodes; the offending update is not applied.
    """
    parts = (data,) if torch.is_tensor(data) or not isinstance(data, (tuple, list)) else tuple(data)
    as_input = getattr(getattr(svi, "guide", None), "as_input", None)
    if as_input is not None:  # numpy, lists, pandas: in the encoder's dtype and on its device
        parts = as_input(parts)
    if not parts or not all(torch.is_tensor(part) and part.dim() > 0 for part in parts):
        raise TypeError("fit: data must be a tensor or a tuple of tensors with one row per data point")
    num_data = len(parts[0])
    if any(len(part) != num_data for part in parts):
        raise ValueError(f"fit: the tensors in data must share their first dimension, got {[len(p) for p in parts]}")
    if iterations < 0:
        raise ValueError(f"fit: iterations must be at least 0, got {iterations}")
    if eval_every < 1:
        raise ValueError(f"fit: eval_every must be at least 1 (steps between evaluations), got {eval_every}")
    if patience is not None and (select is None or patience < 1):
        raise ValueError(f"fit: patience needs select and must be at least 1, got {patience}")
    if isinstance(select, str) and evaluate is None:
        raise ValueError(f"fit: select={select!r} names a metric of evaluate, but no evaluate was given")
    guard = DivergenceGuard() if guard is True else (guard or None)
    generator = generator or torch.Generator().manual_seed(0)  # the same minibatches on every device
    rank, size = world()
    check_same_sizes(batch_size, num_data)  # (in one process, nothing to check)
    batches = minibatch_indices(num_data, batch_size, generator, rank, size)
    if size > 1:  # start every process from rank 0's parameters
        first = next(batches)
        batches = itertools.chain([first], batches)
        if hasattr(svi, "evaluate_loss"):
            svi.evaluate_loss(*(part[first.to(parts[0].device)] for part in parts), indices=first.to(parts[0].device))
        broadcast_parameters()
        progress, evaluate = progress and rank == 0, evaluate if rank == 0 else None
    history = History([], [], [], [], [])
    training_seconds = 0.0
    guide = getattr(svi, "guide", None)
    best = _Best(select)

    def record(step):
        metrics = evaluate() if evaluate is not None else {}
        if evaluate is not None:
            history.eval_steps.append(step)
            history.eval_seconds.append(training_seconds)
            history.evals.append(metrics)
        best.consider(step, metrics)

    if select is not None and size == 1 and hasattr(svi, "evaluate_loss"):
        # the model and guide put their networks in the param store on their first call: do it now, away from
        # the random streams, so that the snapshot of step 0 holds every parameter (else a restore would bring back
        # λ alone, beside the networks of the last step)
        first = next(batches)
        batches = itertools.chain([first], batches)
        first = first.to(parts[0].device)
        with torch.random.fork_rng(devices=[parts[0].device] if parts[0].is_cuda else []):
            svi.evaluate_loss(*(part[first] for part in parts), indices=first)
    record(0)
    bar = tqdm(range(1, iterations + 1), desc=desc, disable=not progress, mininterval=0.5)
    running = None
    for step in bar:
        start = time.perf_counter()
        idx = next(batches).to(parts[0].device)
        loss = _guarded_step(svi, guard, num_data, step, desc, *(part[idx] for part in parts), indices=idx)
        training_seconds += time.perf_counter() - start
        if not math.isfinite(loss):
            raise DivergenceError(f"{desc}: the loss became {loss} at step {step}. {_ADVICE}")
        history.losses.append(loss)
        in_use = components_in_use(guide)
        if in_use is not None:
            history.components.append(in_use)
        running = loss if running is None else 0.95 * running + 0.05 * loss
        out_of_time = max_seconds is not None and training_seconds >= max_seconds
        if step % eval_every == 0 or step == iterations or out_of_time:
            record(step)
        out_of_patience = patience is not None and best.stale >= patience
        if progress:
            postfix = {"-elbo/pt": f"{running:.3f}"}
            if in_use is not None:
                postfix["in use"] = in_use
            if history.evals:
                postfix.update({k: f"{v:.3g}" for k, v in history.evals[-1].items()})
            bar.set_postfix(postfix, refresh=False)
        if out_of_time or (patience is not None and _any_process(out_of_patience)):
            break
    bar.close()
    if best.step is not None:
        best.restore()
        history = history._replace(selected_step=best.step)
    advice = guide.pgm.in_use_warning(history.components[-1]) if history.components else None
    if advice:
        warnings.warn(f"{desc}: {advice}", RuntimeWarning, stacklevel=2)
    return history
