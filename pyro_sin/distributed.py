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
``λ`` (broadcast once at the start; identical steps keep them equal) and every process
has the same batch size ``|B_r| = |B|`` of a data set of the same size ``N``. The average
is not the global batch's step otherwise, so :class:`~pyro_sin.SINELBO` (every step) and
:func:`~pyro_sin.training.fit` (before the first) refuse processes whose sizes differ
(:func:`check_same_sizes`).

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


def check_same_sizes(batch_size: int, num_data: int, device=None) -> None:
    """
    Refuses, on every process alike, processes whose minibatch size or data-set size differs
    from the others': their averaged step would not be the step of the global batch.
    A collective: every process of the group must call it.

    :param int batch_size: ``|B_r|``, this process's number of data points in the step.
    :param int num_data: ``N``, the size of the data set the minibatch is drawn from.
    :param device: where the collective runs (a CUDA device for NCCL).
    """
    _, size = world()
    if size == 1:
        return
    mine = torch.tensor([int(batch_size), int(num_data)], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(gathered, mine)
    batches, data = [int(t[0]) for t in gathered], [int(t[1]) for t in gathered]
    if len(set(batches)) > 1 or len(set(data)) > 1:
        raise ValueError(
            f"the processes hold minibatches of different sizes (batch sizes per rank {batches}, data sizes per "
            f"rank {data}): the averaged step is the global batch's only when every rank steps with the same "
            "batch size on a data set of the same size N. Give every rank the same batch_size and the whole data "
            "set (pyro_sin.training.fit and minibatch_indices hand out equal shares)"
        )


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
    params = dict(pyro.get_param_store().named_parameters())  # the unconstrained tensors
    for name in sorted(params):
        dist.broadcast(params[name].data, src)
