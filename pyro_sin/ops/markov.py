r"""
Exact inference on a discrete Markov chain in log space.

A chain over ``z_{1:T} ∈ {0..K-1}^T`` with log initial weights ``a``, log
transition weights ``A_t`` (possibly expected ones, ``E_q[log P]``) and per-step
log evidences ``e_t`` is the unnormalised distribution

.. math:: \tilde p(z_{1:T}) = \exp\Big(a_{z_1} + \sum_{t=1}^T e_{t, z_t}
          + \sum_{t=2}^T A_{t, z_{t-1} z_t}\Big),\qquad
          Z = \sum_{z_{1:T}} \tilde p(z_{1:T}).

``log Z`` comes from a product of ``T-1`` matrices in the log semiring, by a
parallel scan of depth ``O(log T)`` (as Pyro's ``DiscreteHMM`` does) or by a
sequential forward filter. The marginals ``q(z_t)`` and the pairwise marginals
``q(z_{t-1}, z_t)`` (whose sum over ``t`` are the expected transition counts)
are the gradient of ``log Z`` with respect to the potentials, so they need no
separate backward pass and stay differentiable when grad is enabled (the same
device :class:`~pyro_sin.pgm.lds.ChainPosterior` uses for Gaussian chains).

Sequences padded to one length ``T`` carry their ``lengths``: a step after a
sequence's end does not exist. Its evidence is dropped and its transition
becomes the uniform stochastic matrix ``1/K``, which sums to one over the next
state, so ``log Z`` is that of the chain cut at its end; its marginals are zero.
"""

import math
from typing import NamedTuple, Optional, Tuple

import torch


class ChainMarginals(NamedTuple):
    """What :func:`forward_backward` returns (zeros at steps after a sequence's end)."""

    log_normalizer: torch.Tensor  # (...)              log Z
    marginals: torch.Tensor  # (..., T, K)             q(z_t = k)
    pair_marginals: torch.Tensor  # (..., T-1, K, K)   q(z_{t-1} = j, z_t = k)

    @property
    def transition_counts(self) -> torch.Tensor:
        """Expected transition counts ``Σ_t q(z_{t-1} = j, z_t = k)``, shape ``(..., K, K)``."""
        return self.pair_marginals.sum(-3)


def log_matmul_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""
    ``log(exp(a) @ exp(b))`` computed stably (``-inf`` entries allowed, gradients finite),

    .. math:: c_{ik} = \log \sum_j \exp(a_{ij} + b_{jk}).

    :param torch.Tensor a: shape ``(..., I, J)``.
    :param torch.Tensor b: shape ``(..., J, K)``.
    :returns: shape ``(..., I, K)``.
    """
    finfo = torch.finfo(a.dtype)
    # the shifts cancel exactly, so they carry no gradient
    a_shift = a.detach().amax(-1, keepdim=True).clamp(min=finfo.min)
    b_shift = b.detach().amax(-2, keepdim=True).clamp(min=finfo.min)
    product = torch.exp(a - a_shift) @ torch.exp(b - b_shift)
    return product.clamp(min=finfo.tiny).log() + a_shift + b_shift


def sequential_log_matmul_exp(logits: torch.Tensor) -> torch.Tensor:
    """
    The log-space product ``M_1 M_2 ... M_T`` of matrices stacked along dimension -3,
    by pairwise reduction (a parallel scan of depth ``⌈log₂ T⌉``).

    :param torch.Tensor logits: shape ``(..., T, K, K)`` with ``T >= 1``.
    :returns: shape ``(..., K, K)``.
    """
    if logits.shape[-3] == 0:
        raise ValueError("sequential_log_matmul_exp needs at least one matrix")
    while logits.shape[-3] > 1:
        steps = logits.shape[-3]
        even = steps - steps % 2
        product = log_matmul_exp(logits[..., 0:even:2, :, :], logits[..., 1:even:2, :, :])
        if even < steps:
            product = torch.cat([product, logits[..., even:, :, :]], -3)
        logits = product
    return logits[..., 0, :, :]


def _step_mask(lengths: Optional[torch.Tensor], num_steps: int, device) -> Optional[torch.Tensor]:
    if lengths is None:
        return None
    return torch.arange(num_steps, device=device) < lengths[..., None]


def chain_potentials(
    init_logits: torch.Tensor,
    transition_logits: torch.Tensor,
    log_evidence: torch.Tensor,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    Folds the evidence into the chain's potentials, ``a' = a + e_1`` and
    ``A'_t = A_t + e_t`` (the evidence of the step a transition enters), broadcast
    to one batch shape, with the steps after each sequence's end made neutral.

    :param torch.Tensor init_logits: ``a``, shape ``(..., K)``.
    :param torch.Tensor transition_logits: ``A``, shape ``(..., T-1, K, K)``, rows
        indexed by the previous state; the time dimension may be 1 (homogeneous).
    :param torch.Tensor log_evidence: ``e``, shape ``(..., T, K)``.
    :param torch.Tensor lengths: optional, integers in ``[1, T]``, shape ``(...)``.
    :returns: ``(a', A')`` of shapes ``batch + (K,)`` and ``batch + (T-1, K, K)``.
    """
    T, K = log_evidence.shape[-2:]
    if init_logits.shape[-1] != K or transition_logits.shape[-2:] != (K, K):
        raise ValueError(
            f"a chain over {K} states needs init_logits (..., {K}) and transition_logits "
            f"(..., T-1, {K}, {K}), got {tuple(init_logits.shape)} and {tuple(transition_logits.shape)}"
        )
    if transition_logits.dim() < 3 or transition_logits.shape[-3] not in (1, T - 1):
        raise ValueError(
            f"transition_logits need a time dimension of size T-1 = {T - 1} (or 1) at -3, "
            f"got shape {tuple(transition_logits.shape)}"
        )
    exists = _step_mask(lengths, T, log_evidence.device)
    if exists is not None:
        log_evidence = torch.where(exists[..., None], log_evidence, log_evidence.new_zeros(()))
    init = init_logits + log_evidence[..., 0, :]
    pairs = transition_logits + log_evidence[..., 1:, None, :]
    if exists is not None:
        pairs = torch.where(exists[..., 1:, None, None], pairs, pairs.new_full((), -math.log(K)))
    batch = torch.broadcast_shapes(init.shape[:-1], pairs.shape[:-3])
    return init.expand(batch + (K,)), pairs.expand(batch + pairs.shape[-3:])


def _log_normalizer(init: torch.Tensor, pairs: torch.Tensor, parallel: bool) -> torch.Tensor:
    if pairs.shape[-3] == 0:
        return torch.logsumexp(init, -1)
    if parallel:
        return torch.logsumexp(log_matmul_exp(init[..., None, :], sequential_log_matmul_exp(pairs))[..., 0, :], -1)
    message = init
    for t in range(pairs.shape[-3]):
        message = log_matmul_exp(message[..., None, :], pairs[..., t, :, :])[..., 0, :]
    return torch.logsumexp(message, -1)


def markov_log_normalizer(
    init_logits, transition_logits, log_evidence, lengths=None, parallel: bool = True
) -> torch.Tensor:
    """
    ``log Z`` of the chain (see the module's docstring), shape ``batch``.

    :param bool parallel: a parallel scan over time (else a sequential forward filter).
    """
    init, pairs = chain_potentials(init_logits, transition_logits, log_evidence, lengths)
    return _log_normalizer(init, pairs, parallel)


def forward_backward(
    init_logits: torch.Tensor,
    transition_logits: torch.Tensor,
    log_evidence: torch.Tensor,
    lengths: Optional[torch.Tensor] = None,
    parallel: bool = True,
) -> ChainMarginals:
    r"""
    ``log Z``, the marginals ``q(z_t)`` and the pairwise marginals ``q(z_{t-1}, z_t)``
    of the chain, from ``∂ log Z / ∂a'`` and ``∂ log Z / ∂A'_t`` (differentiable when grad
    is enabled). Arguments as for :func:`chain_potentials`.

    :param bool parallel: a parallel scan over time (else a sequential forward filter).
    :rtype: ChainMarginals
    """
    # Each step's evidence less its largest entry (a constant, added back to log Z): the
    # scan then sums numbers of the order of the differences between states, not of the
    # evidence itself, which for a deep model's encoder runs to hundreds of nats a step and
    # would cost single precision its accuracy on log Z and on the marginals (its gradients).
    exists = _step_mask(lengths, log_evidence.shape[-2], log_evidence.device)
    shift = log_evidence.detach().amax(-1)  # (..., T)
    shift = torch.where(torch.isfinite(shift), shift, shift.new_zeros(()))
    if exists is not None:
        shift = torch.where(exists, shift, shift.new_zeros(()))
    init, pairs = chain_potentials(init_logits, transition_logits, log_evidence - shift[..., None], lengths)
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [torch.zeros_like(init).requires_grad_(), torch.zeros_like(pairs).requires_grad_()]
        log_z = _log_normalizer(init + leaves[0], pairs + leaves[1], parallel)
        grads = torch.autograd.grad(log_z.sum(), leaves, create_graph=create_graph, allow_unused=True)
    if not create_graph:
        log_z = log_z.detach()
    log_z = log_z + shift.sum(-1)
    first = grads[0]
    pair = grads[1] if grads[1] is not None else torch.zeros_like(pairs)
    marginals = torch.cat([first[..., None, :], pair.sum(-2)], -2)
    if exists is not None:
        marginals = torch.where(exists[..., None], marginals, marginals.new_zeros(()))
        pair = torch.where(exists[..., 1:, None, None], pair, pair.new_zeros(()))
    return ChainMarginals(log_z, marginals, pair)


def _compose_prefix(maps: torch.Tensor) -> torch.Tensor:
    """
    Prefix compositions of maps on ``{0..K-1}``: for ``f_t = maps[..., t, :]`` returns
    ``F_t = f_t ∘ ... ∘ f_0`` for every ``t`` (a Hillis-Steele scan, depth ``⌈log₂ T⌉``).
    """
    offset = 1
    while offset < maps.shape[-2]:
        later = torch.gather(maps[..., offset:, :], -1, maps[..., :-offset, :])
        maps = torch.cat([maps[..., :offset, :], later], -2)
        offset *= 2
    return maps


def _categorical(weights: torch.Tensor, sample_shape: torch.Size) -> torch.Tensor:
    """
    Draws ``sample_shape + batch`` from categorical distributions with non-negative ``weights``
    ``(..., K)`` (not necessarily normalised) by inverting their cumulative sums: one uniform
    per draw, where ``torch.multinomial`` draws ``K`` exponentials.
    """
    cumulative = weights.cumsum(-1)
    uniform = torch.rand(sample_shape + weights.shape[:-1], dtype=weights.dtype, device=weights.device)
    below = (cumulative < (uniform * cumulative[..., -1])[..., None]).sum(-1)
    return below.clamp(max=weights.shape[-1] - 1)


def sample_chain(
    marginals: ChainMarginals, sample_shape=torch.Size(), lengths: Optional[torch.Tensor] = None
) -> torch.Tensor:
    r"""
    Exact joint draws of the paths from the chain's marginals: ``z_1 ~ q(z_1)``, then
    ``z_t ~ q(z_t | z_{t-1}) = q(z_{t-1}, z_t) / q(z_{t-1})``. All conditional draws
    are taken at once and chained by a prefix scan of the maps ``z_{t-1} ↦ z_t``.

    :param ChainMarginals marginals: from :func:`forward_backward`.
    :param lengths: optional; the draws hold zeros after each sequence's end.
    :returns: integer paths, shape ``sample_shape + batch + (T,)``.
    """
    sample_shape = torch.Size(sample_shape)
    first_probs = marginals.marginals[..., 0, :].detach().clamp(min=0)
    first = _categorical(first_probs, sample_shape)
    pair = marginals.pair_marginals.detach().clamp(min=0)
    if pair.shape[-3] == 0:
        return first[..., None]
    # unreachable previous states (zero mass, e.g. after the end) get any valid row
    rows = torch.where(pair.sum(-1, keepdim=True) > 0, pair, pair.new_ones(()))
    maps = _categorical(rows, sample_shape)  # (..., T-1, K)
    prefix = _compose_prefix(maps)
    start = first[..., None, None].expand(prefix.shape[:-1] + (1,))
    path = torch.cat([first[..., None], torch.gather(prefix, -1, start)[..., 0]], -1)
    exists = _step_mask(lengths, path.shape[-1], path.device)
    if exists is not None:
        path = torch.where(exists, path, path.new_zeros(()))
    return path
