"""
A minibatch training loop around :class:`pyro.infer.SVI` with a progress bar, a
guard against divergence, and a count of the mixture components in use.
"""

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

from .distributed import broadcast_parameters, world
from .pgm.mixture import MixturePrior


class History(NamedTuple):
    """What :func:`fit` recorded: the loss of every step and periodic evaluations."""

    losses: List[float]
    eval_steps: List[int]
    eval_seconds: List[float]  # training time (evaluations excluded) at each evaluation
    evals: List[Dict[str, float]]
    components: List[int]  # mixture components in use after every step (empty without a mixture)


class DivergenceError(FloatingPointError):
    """Training diverged; raised by :class:`DivergenceGuard` before the bad update is applied."""


_ADVICE = (
    "Likely causes: a learning rate too high for this problem (try lr 1e-3 .. 1e-2); unscaled data "
    "in extreme units (build the networks with pyro_sin.standardize.standardized_autoencoder, which "
    "standardises them); or a Gaussian decoder without a variance floor (min_scale), whose scale "
    "shrinks onto (nearly) constant features."
)


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

    def check(self, step: int, loss: float, params: Sequence[torch.Tensor], desc: str = "SVI"):
        """
        :param float loss: the loss per data point of this step.
        :param params: the unconstrained parameters whose gradients the optimiser will use.
        :raises DivergenceError: naming what went wrong and the likely causes.
        """
        if not math.isfinite(loss):
            raise DivergenceError(
                f"{desc}: the loss became {loss} at step {step}; the update was not applied. {_ADVICE}"
            )
        bad = [
            pyro.get_param_store().param_name(p) if p in pyro.get_param_store()._param_to_name else "?"
            for p in params
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        if bad:
            shown = ", ".join(sorted(bad)[:5]) + (" ..." if len(bad) > 5 else "")
            raise DivergenceError(
                f"{desc}: non-finite gradient at step {step} in {len(bad)} parameter(s) ({shown}); "
                f"the update was not applied. {_ADVICE}"
            )
        if self.unit is None:
            self.unit = max(1.0, abs(loss))
        if loss - self.best > self.max_rise * self.unit:
            raise DivergenceError(
                f"{desc}: the loss per data point rose from its best {self.best:.4g} to {loss:.4g} "
                f"at step {step}; the update was not applied. {_ADVICE}"
            )
        self.best = min(self.best, loss)


def components_in_use(guide, min_share: float = 0.01) -> Optional[int]:
    r"""
    The number of mixture components that hold at least ``min_share`` of the data
    under the guide's posterior ``q(π) = Dir(α)``: the expected count of component
    ``k`` is ``α_k - α₀_k``.

    :returns: the count, or ``None`` when the guide has no mixture prior.
    """
    pgm = getattr(guide, "pgm", None)
    if not isinstance(pgm, MixturePrior):
        return None
    with torch.no_grad():
        natural = guide.natural_params()
        # the Dirichlet's natural parameter is its concentration (cheap, no Normal-Wishart built)
        if "concentration" in natural:
            concentration = natural["concentration"]
        else:
            concentration = guide.global_posterior().concentration
        counts = (concentration - pgm.prior_concentration).clamp(min=0)
        total = counts.sum()
        if total <= 0:
            return pgm.num_components
        return int((counts >= min_share * total).sum())


def _warn_collapse(desc: str, num_components: int):
    warnings.warn(
        f"{desc}: the posterior collapsed onto one of {num_components} mixture components: every "
        "point is assigned to the same cluster. If the data hold several clusters, standardise them "
        "(pyro_sin.standardize.standardized_autoencoder), let the networks learn before the natural "
        "step moves the components (a warm-up, pyro_sin.initialization.warmup_schedule) and start the "
        "components from the encoded data (pyro_sin.initialization.encoded_components), or lower the learning rate. "
        "If a few points hold the other components, they are outliers that a Gaussian mixture gives components "
        "of their own: use pyro_sin.pgm.StudentTMixture, whose heavy tails absorb them.",
        RuntimeWarning,
        stacklevel=3,
    )


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
    """``svi.step`` with the guard between the gradients and the update; returns the loss per data point."""
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
) -> History:
    """
    Runs ``svi.step(*batch, indices=idx)`` on random minibatches, where ``batch``
    holds the rows ``idx`` of ``data`` (a tensor, or a tuple of tensors with
    one row per data point each).

    Every step is checked by a :class:`DivergenceGuard` between the gradients and
    the update, and for a mixture prior the number of components in use
    (:func:`components_in_use`) is shown in the progress bar and recorded; a
    :class:`RuntimeWarning` with advice is given when training ends with every
    point in one component.

    In a :mod:`torch.distributed` process group each process trains on its share of
    every global batch of ``batch_size x processes`` (see :func:`minibatch_indices`),
    starting from rank 0's parameters; :class:`~pyro_sin.optim.NaturalAdam` averages
    the gradients, and only rank 0 shows progress and evaluates.

    :param data: a tensor, or a tuple of tensors with one row per data point
        (e.g. sequences, their missing-frame mask and their lengths); each is
        indexed by the same minibatch and passed positionally,
        ``svi.step(*(d[idx] for d in data), indices=idx)``.
    :param evaluate: called at step 0, every ``eval_every`` steps and at the end;
        returns named metrics shown in the progress bar and kept in the history.
    :param max_seconds: stop early once training (evaluations excluded) has taken this long.
    :param guard: ``True`` (a default :class:`DivergenceGuard`), ``False`` (none:
        plain ``svi.step``), or a guard of your own.
    :raises DivergenceError: when the loss or a gradient becomes NaN or infinite,
        or the loss explodes; the offending update is not applied.
    """
    parts = (data,) if torch.is_tensor(data) else tuple(data)
    if not parts or not all(torch.is_tensor(part) and part.dim() > 0 for part in parts):
        raise TypeError("fit: data must be a tensor or a tuple of tensors with one row per data point")
    num_data = len(parts[0])
    if any(len(part) != num_data for part in parts):
        raise ValueError(f"fit: the tensors in data must share their first dimension, got {[len(p) for p in parts]}")
    guard = DivergenceGuard() if guard is True else (guard or None)
    generator = generator or torch.Generator().manual_seed(0)  # the same minibatches on every device
    rank, size = world()
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
    num_components = getattr(getattr(guide, "pgm", None), "num_components", None)

    def record(step):
        if evaluate is not None:
            history.eval_steps.append(step)
            history.eval_seconds.append(training_seconds)
            history.evals.append(evaluate())

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
        in_use = components_in_use(guide) if num_components is not None else None
        if in_use is not None:
            history.components.append(in_use)
        running = loss if running is None else 0.95 * running + 0.05 * loss
        out_of_time = max_seconds is not None and training_seconds >= max_seconds
        if step % eval_every == 0 or step == iterations or out_of_time:
            record(step)
        if progress:
            postfix = {"-elbo/pt": f"{running:.3f}"}
            if in_use is not None:
                postfix["K"] = f"{in_use}/{num_components}"
            if history.evals:
                postfix.update({k: f"{v:.3g}" for k, v in history.evals[-1].items()})
            bar.set_postfix(postfix, refresh=False)
        if out_of_time:
            break
    bar.close()
    if history.components and num_components > 1 and history.components[-1] == 1:
        _warn_collapse(desc, num_components)
    return history
