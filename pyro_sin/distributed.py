r"""
Data-parallel SAN across processes with :mod:`torch.distributed`.

``R`` processes, each with its own minibatch ``B_r`` of a data set of size
``N``, take exactly the step of one process holding the union of their
minibatches: every gradient is averaged across processes before the optimiser
uses it, as :class:`~torch.nn.parallel.DistributedDataParallel` does. For the
networks that is DDP's usual argument; for the natural parameters it holds
because :class:`~pyro_sin.SINELBO` writes the natural gradient ``λ - λ*`` with

.. math:: \lambda^*_r = \lambda_0 + \tfrac{N}{|B_r|} \textstyle\sum_{n \in B_r} E[t(x_n)],
          \qquad \tfrac1R \textstyle\sum_r (\lambda - \lambda^*_r)
          = \lambda - \big(\lambda_0 + \tfrac{N}{R|B|} \textstyle\sum_r \sum_{n\in B_r} E[t(x_n)]\big),

the natural gradient of the global batch, provided every process holds the same
``λ`` (broadcast once at the start; identical steps keep them equal).

:class:`~pyro_sin.optim.NaturalAdam` averages automatically once a process
group is initialised; :func:`broadcast_parameters` makes the processes start
from rank 0's parameters, and
:func:`~pyro_sin.training.minibatch_indices` hands each rank its share of a
global batch (the same shuffle on every rank, as
:class:`~torch.utils.data.distributed.DistributedSampler` does).
"""

from typing import Iterable, Tuple

import torch
import torch.distributed as dist

import pyro

from .natural import replace_gradient


def world() -> Tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` unless a process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _by_name(params: Iterable[torch.Tensor]):
    """Parameters in the same order on every rank (SVI hands them over as a set)."""
    store = pyro.get_param_store()
    return sorted(params, key=store.param_name)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """
    Replaces each parameter's gradient by its mean over the processes, in one
    all-reduce of the flattened gradients. Every process must pass the same parameters.
    """
    _, size = world()
    if size == 1:
        return
    params = [p for p in _by_name(params) if p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for every gradient
    dist.all_reduce(flat)
    flat /= size
    for param, synced in zip(params, flat.split([g.numel() for g in grads])):
        replace_gradient(param, synced.view_as(param.grad))


@torch.no_grad()
def broadcast_parameters(src: int = 0) -> None:
    """Copies every parameter in Pyro's param store from rank ``src`` to all processes."""
    _, size = world()
    if size == 1:
        return
    store = pyro.get_param_store()
    for name in sorted(store.keys()):
        dist.broadcast(store.get_state()["params"][name].data, src)
