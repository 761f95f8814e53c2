r"""
A distribution over whole paths of a discrete Markov chain, with optional per-step
evidence: the prior of an HMM's states, and the posterior of the states given the
evidence, are both of this form,

.. math:: p(z_{1:T}) = \frac1Z \exp\Big(a_{z_1} + \sum_t e_{t, z_t} + \sum_{t\ge2} A_{t, z_{t-1} z_t}\Big).
"""

import functools

import torch
from torch.distributions import constraints

import pyro.distributions as dist
from pyro.ops.indexing import Vindex

from ..ops.markov import ChainMarginals, chain_potentials, forward_backward, sample_chain

#: the largest number of paths :meth:`MarkovChain.enumerate_support` lists
MAX_ENUMERATED_PATHS = 2**16


class MarkovChain(dist.TorchDistribution):
    r"""
    Paths ``z_{1:T}`` of a ``K``-state Markov chain as one Pyro distribution with event
    shape ``(T,)``. Its normaliser and marginals come from
    :func:`~pyro_sin.ops.markov.forward_backward`; samples are exact joint draws.

    Sequences padded to ``T`` steps carry their ``lengths``: the steps after a sequence's
    end do not exist, samples hold zeros there and :meth:`log_prob` ignores them.

    :param torch.Tensor init_logits: ``a``, shape ``(..., K)``; ``log π`` for a normalised chain.
    :param torch.Tensor transition_logits: ``A``, shape ``(..., T-1, K, K)`` or
        ``(..., 1, K, K)`` for a homogeneous chain; ``log P`` for a normalised one.
    :param int num_steps: ``T``.
    :param torch.Tensor log_evidence: optional per-step log evidence ``e``, shape ``(..., T, K)``.
    :param torch.Tensor lengths: optional, integers in ``[1, T]``, shape ``(...)``.
    :param bool parallel: the normaliser by a parallel scan (else a sequential filter).
    """

    arg_constraints = {}
    has_enumerate_support = True

    def __init__(
        self,
        init_logits,
        transition_logits,
        num_steps: int,
        log_evidence=None,
        lengths=None,
        parallel: bool = True,
        validate_args=None,
    ):
        K = init_logits.shape[-1]
        if num_steps < 1:
            raise ValueError(f"a Markov chain needs num_steps >= 1, got {num_steps}")
        if log_evidence is None:
            log_evidence = init_logits.new_zeros((num_steps, K))
        elif log_evidence.shape[-2:] != (num_steps, K):
            raise ValueError(
                f"log_evidence must have shape (..., {num_steps}, {K}), got {tuple(log_evidence.shape)}"
            )
        self.init, self.pairs = chain_potentials(init_logits, transition_logits, log_evidence, lengths)
        self._evidence = (init_logits, transition_logits, log_evidence)
        self.lengths, self.parallel = lengths, parallel
        self.num_states = K
        batch_shape = self.init.shape[:-1]
        if lengths is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, lengths.shape)
            self.init = self.init.expand(batch_shape + (K,))
            self.pairs = self.pairs.expand(batch_shape + self.pairs.shape[-3:])
        super().__init__(batch_shape, torch.Size((num_steps,)), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.num_states - 1), 1)

    @functools.cached_property
    def marginals(self) -> ChainMarginals:
        """``log Z``, ``q(z_t)`` and ``q(z_{t-1}, z_t)`` (zeros after each sequence's end)."""
        init_logits, transition_logits, log_evidence = self._evidence
        marginals = forward_backward(init_logits, transition_logits, log_evidence, self.lengths, self.parallel)
        shape = self.batch_shape
        return ChainMarginals(
            marginals.log_normalizer.expand(shape),
            marginals.marginals.expand(shape + marginals.marginals.shape[-2:]),
            marginals.pair_marginals.expand(shape + marginals.pair_marginals.shape[-3:]),
        )

    @property
    def step_mask(self):
        """``(..., T)``: True at the steps that exist, or None when all do."""
        if self.lengths is None:
            return None
        return torch.arange(self.event_shape[0], device=self.init.device) < self.lengths[..., None]

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(MarkovChain, _instance)
        new.num_states, new.parallel = self.num_states, self.parallel
        new.init = self.init.expand(batch_shape + self.init.shape[-1:])
        new.pairs = self.pairs.expand(batch_shape + self.pairs.shape[-3:])
        new.lengths = None if self.lengths is None else self.lengths.expand(batch_shape)
        init_logits, transition_logits, log_evidence = self._evidence
        new._evidence = (init_logits, transition_logits, log_evidence.expand(batch_shape + log_evidence.shape[-2:]))
        if "marginals" in self.__dict__:  # already computed: share it
            m = self.marginals
            new.marginals = ChainMarginals(
                m.log_normalizer.expand(batch_shape),
                m.marginals.expand(batch_shape + m.marginals.shape[-2:]),
                m.pair_marginals.expand(batch_shape + m.pair_marginals.shape[-3:]),
            )
        super(MarkovChain, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()):
        # the marginals are computed (and cached) with their graph; the draws detach them
        return sample_chain(self.marginals, sample_shape, self.lengths)

    def _sum_steps(self, per_transition):
        exists = self.step_mask
        if exists is not None:
            per_transition = torch.where(exists[..., 1:], per_transition, per_transition.new_zeros(()))
        return per_transition.sum(-1)

    def unnormalized_log_prob(self, value):
        """``log p̃(z)``: the potentials along the path, without ``log Z``."""
        value = value.long()
        result = Vindex(self.init)[..., value[..., 0]]
        if self.event_shape[0] > 1:
            result = result + self._sum_steps(Vindex(self.pairs)[..., value[..., :-1], value[..., 1:]])
        return result

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self.unnormalized_log_prob(value) - self.marginals.log_normalizer

    def entropy(self):
        r"""
        The chain's entropy from its marginals and pair marginals ``ξ_t(j, k)``,

        .. math:: H = -\sum_k q_1(k) \log q_1(k)
                  - \sum_{t \ge 2} \sum_{jk} \xi_t(j, k) \log \frac{\xi_t(j, k)}{\sum_{k'} \xi_t(j, k')},

        i.e. ``H[z_1] + Σ_t E H[z_t | z_{t-1}]``: a sum of terms of order one. The equal
        ``log Z - E[log p̃(z)]`` subtracts two numbers that grow with the evidence (thousands of
        nats for a hundred steps of a deep model), and in single precision its round-off
        (nats per sequence) swamps the bound's gradients.
        Steps after a sequence's end carry zero mass and add nothing.
        """
        m = self.marginals
        entropy = -_xlogx(m.marginals[..., 0, :]).sum(-1)
        if self.event_shape[0] > 1:
            pairs = m.pair_marginals  # (..., T-1, K, K)
            entropy = entropy - _xlogx(pairs).sum((-1, -2, -3)) + _xlogx(pairs.sum(-1)).sum((-1, -2))
        return entropy

    def enumerate_support(self, expand=True):
        """Every path, ``K^T`` of them (only for small problems, and without ``lengths``)."""
        K, T = self.num_states, self.event_shape[0]
        if self.lengths is not None:
            raise NotImplementedError("MarkovChain cannot enumerate the paths of padded sequences")
        if K**T > MAX_ENUMERATED_PATHS:
            raise ValueError(
                f"enumerating a Markov chain lists K^T = {K}^{T} paths (at most {MAX_ENUMERATED_PATHS}); "
                "sample the paths instead (e.g. SINELBO(decoder_estimator='sample'))"
            )
        states = torch.arange(K, device=self.init.device)
        paths = torch.cartesian_prod(*[states] * T) if T > 1 else states[:, None]
        paths = paths.reshape((K**T,) + (1,) * len(self.batch_shape) + (T,))
        if expand:
            paths = paths.expand((K**T,) + self.batch_shape + (T,))
        return paths


def _xlogx(p):
    """``p log p`` with ``0 log 0 = 0``, and a finite gradient at ``p = 0``."""
    positive = p > 0
    return p * torch.log(torch.where(positive, p, torch.ones_like(p)))


