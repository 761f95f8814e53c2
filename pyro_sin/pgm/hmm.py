r"""
The latent hidden Markov model and its structured inference network.

Model (``K`` states, latent dimension ``D``, sequences of ``T`` steps)::

    π ~ Dir(α₀),  P_j ~ Dir(β₀_j)  (row j of the transition matrix)
    Λ_k ~ W(W₀, ν₀),  μ_k | Λ_k ~ N(m₀, (κ₀Λ_k)⁻¹)
    z_1 ~ Cat(π),  z_t | z_{t-1} ~ Cat(P_{z_{t-1}}),  x_t | z_t ~ N(μ_{z_t}, Λ_{z_t}⁻¹)

the Gaussian mixture's components over time. The SIN of one sequence with
per-step encoder potentials ``ψ_t`` and an HMM factor (initial weights ``a``,
transition weights ``A``, Gaussian components ``f_k(x) = exp(c_k + η_kᵀx - ½xᵀP_k x)``;
tied: the mean-field message ``exp E_q(θ)[log p(z, x | θ)]``, free: its own
parameters) is

.. math::

    q(z, x) \propto e^{a_{z_1} + \sum_{t\ge2} A_{z_{t-1} z_t}} \prod_t f_{z_t}(x_t)\,\psi_t(x_t)
    = q(z_{1:T}) \prod_t q(x_t \mid z_t),\qquad
    q(x_t \mid z_t = k) = \mathcal N_{\rm info}(h_t + \eta_k,\ J_t + P_k),

where ``q(z_{1:T})`` is a Markov chain with per-step log evidence
``e_{tk} = log ∫ f_k(x) ψ_t(x) dx`` (:class:`StateGaussians`), solved exactly by
forward-backward (:mod:`pyro_sin.ops.markov`).

The classic model it contains, the Gaussian HMM, is its start: :meth:`LatentHMM.encoded_start`
fits one by EM to the encoded frames (:mod:`pyro_sin.pgm.classic_regimes`).
"""

import functools
import math
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
from pyro.ops.indexing import Vindex
from pyro.ops.tensor_utils import precision_to_scale_tril

from ..distributions import (
    GaussianStats,
    MarkovChain,
    NormalWishart,
    NormalWishartExpectations,
    conjugate_update,
)
from ..initialization import encode
from ..ops import unrolled
from ..ops.markov import markov_log_normalizer
from ..potential import GaussianPotential
from .base import SINRecord
from .classic_regimes import GaussianHMM, chain_counts
from .mixture import MixtureFactor, expected_gaussian_factor, gaussian_factor
from .mixture.gaussian import NormalWishartGaussians
from .regimes import RegimeGlobalPosterior, RegimeMarginals, RegimeSwitchingPrior
from .sequence import (
    PosteriorDistribution,
    SequenceDistribution,
    StepOfDrawnPath,
    after_end_to_zero,
    broadcast_to_plates,
    check_unrolled_steps,
    last_step,
)

_LOG_2PI = math.log(2 * math.pi)


class HMMParams(NamedTuple):
    """Sampled global parameters of a latent HMM."""

    init_probs: torch.Tensor  # (..., K)           π
    transition_probs: torch.Tensor  # (..., K, K)  P, rows indexed by the previous state
    locs: torch.Tensor  # (..., K, D)
    precisions: torch.Tensor  # (..., K, D, D)


class HMMFactor(NamedTuple):
    """An HMM factor: log weights of the chain and unnormalised Gaussian components."""

    init_logits: torch.Tensor  # (K,)             a
    transition_logits: torch.Tensor  # (K, K)     A
    emission: MixtureFactor  # K components f_k


class HMMGlobalPosterior(RegimeGlobalPosterior):
    """``q(π) Π_j q(P_j) Π_k q(μ_k, Λ_k)``: Dirichlets and Normal-Wisharts, with their expectations."""

    @property
    def normal_wishart(self) -> NormalWishart:
        return self.regimes  # batch (K,)


class StepGaussians(SequenceDistribution):
    """
    Independent Gaussians ``x_t ~ N(loc_t, L_t L_tᵀ)`` over the steps of a sequence, as
    one distribution with event shape ``(T, D)``: ``x | z`` of an HMM once the states
    have chosen each step's Gaussian. Steps after a sequence's end hold zeros and do
    not count in :meth:`log_prob`.

    :param torch.Tensor loc: shape ``(..., T, D)``.
    :param torch.Tensor scale_tril: shape ``(..., T, D, D)``.
    :param torch.Tensor lengths: optional, shape ``(...)``.
    """

    def __init__(self, loc, scale_tril, lengths=None, validate_args=None):
        self.loc, self.scale_tril, self.lengths = loc, scale_tril, lengths
        batch_shape = torch.broadcast_shapes(loc.shape[:-2], scale_tril.shape[:-3])
        if lengths is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, lengths.shape)
        super().__init__(batch_shape, loc.shape[-2:], validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        x = self.loc + (self.scale_tril @ noise[..., None])[..., 0]
        return after_end_to_zero(x, self.step_mask, 1)

    def log_prob(self, value):
        per_step = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False).log_prob(value)
        return after_end_to_zero(per_step, self.step_mask, 0).sum(-1)


class StateGaussians:
    r"""
    ``q(x_t | z_t = k) = N_info(h_t + η_k, diag(J_t) + P_k)`` for every step ``t`` and state ``k``,
    and the evidence ``e_tk = log ∫ f_k(x) ψ_t(x) dx = c_k + ½ bᵀ P⁻¹ b - ½ log|P| + ½ D log 2π``
    (``b = h_t + η_k``, ``P = diag(J_t) + P_k``), batch ``(..., T, K)``.

    Each ``P`` is factorised once, ``P = L Lᵀ``, by the small-matrix algebra of
    :mod:`pyro_sin.ops.unrolled` (``K`` matrices per frame: the step's cost).

    :param GaussianPotential potential: per-step potentials, shape ``(..., T, D)``.
    :param MixtureFactor factor: the ``K`` Gaussian components ``f_k``.
    """

    def __init__(self, potential: GaussianPotential, factor: MixtureFactor):
        h, J = potential.info_vec[..., None, :], potential.precision[..., None, :]  # (..., T, 1, D)
        self.dim = D = h.shape[-1]
        states = unrolled.entries(factor.precision)  # (K,) each
        diagonal = unrolled.vector_entries(J)
        precision = [[states[i][j] + diagonal[i] if i == j else states[i][j] for j in range(D)] for i in range(D)]
        self._info = h + factor.info_loc  # (..., T, K, D)
        info = unrolled.vector_entries(self._info)
        self.cholesky = unrolled.cholesky(precision)  # P = L Lᵀ; entries (..., T, K)
        white = unrolled.solve_lower(self.cholesky, info)
        self.loc = torch.stack(unrolled.solve_lower_transposed(self.cholesky, white), -1)  # (..., T, K, D)
        #: ``½ log |Cov[x_t | z_t = k]|``, ``(..., T, K)``
        self.half_log_det_cov = -sum(self.cholesky.lower[i][i].log() for i in range(D))
        #: ``e_tk``, ``(..., T, K)``
        self.log_evidence = (
            factor.log_weight + 0.5 * sum(w.square() for w in white) + 0.5 * D * _LOG_2PI + self.half_log_det_cov
        )
        self._potential_precision = J  # (..., T, 1, D)

    @functools.cached_property
    def _inverse_lower(self):
        return unrolled.inverse_lower(self.cholesky)

    @functools.cached_property
    def covariance_diagonal(self) -> torch.Tensor:
        """``diag Cov[x_t | z_t = k]``, ``(..., T, K, D)``."""
        return torch.stack(unrolled.inverse_diagonal(self._inverse_lower), -1)

    @functools.cached_property
    def covariance(self) -> torch.Tensor:
        """``Cov[x_t | z_t = k] = P⁻¹``, ``(..., T, K, D, D)``."""
        return unrolled.inverse_from_factor(self._inverse_lower)

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ | z = k]``, ``(..., T, K, D, D)``."""
        return self.covariance + self.loc[..., :, None] * self.loc[..., None, :]

    def weighted_second_moment(self, weights: torch.Tensor) -> torch.Tensor:
        r"""
        ``Σ_{n,t} w_{ntk} E[x_{nt} x_{nt}ᵀ | z_{nt} = k]`` over every step of the batch, ``(K, D, D)``, for
        weights ``(..., T, K)``: ``Cov = Xᵀ X`` with ``X = L⁻¹``, so the sum is one matrix product
        per state over every step's ``√w X``, with no covariance formed.
        """
        K, D = weights.shape[-1], self.dim
        root = weights.reshape(-1, K).clamp(min=0).sqrt()  # (M, K)
        inverse = unrolled.lower_matrix(self._inverse_lower).expand(weights.shape + (D, D)).reshape(-1, K, D, D)
        scaled = inverse * root[..., None, None]
        loc = self.loc.reshape(-1, K, D) * root[..., None]
        return torch.einsum("mkli,mklj->kij", scaled, scaled) + torch.einsum("mki,mkj->kij", loc, loc)

    def expected_quadratic(self, precision: torch.Tensor, own: bool = False) -> torch.Tensor:
        r"""
        ``E[x_tᵀ Λ_k x_t | z_t = k] = tr(Λ_k Cov) + mᵀ Λ_k m`` for matrices ``precision`` ``(K, D, D)``,
        ``(..., T, K)``. With ``own`` (``Λ_k`` is the factor's ``P_k``, as for the tied factor) it is
        ``D + mᵀ b - Σ_i J_ti (Cov_ii + m_i²)``, since ``P m = b`` for ``P = diag(J_t) + P_k``: no
        matrix product, only the covariances' diagonal.
        """
        if own:
            second = self.covariance_diagonal + self.loc.square()
            return self.dim + (self.loc * self._info).sum(-1) - (self._potential_precision * second).sum(-1)
        quadratic = torch.einsum("...tki,kij,...tkj->...tk", self.loc, precision, self.loc)
        return (self.covariance * precision).sum((-1, -2)) + quadratic

    def packed(self) -> torch.Tensor:
        """The means and the factors ``L`` in one tensor ``(..., T, K, D + D (D + 1) / 2)``, to pick states from."""
        return torch.cat([self.loc, unrolled.stack_lower(self.cholesky.lower).expand(self.loc.shape[:-1] + (-1,))], -1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x_t | z_t = k)`` of steps ``x`` ``(..., T, D)`` under every state, ``(..., T, K)``."""
        return _gaussian_log_prob(x[..., None, :], self.loc, self.cholesky.lower)


def _gaussian_log_prob(x: torch.Tensor, loc: torch.Tensor, lower) -> torch.Tensor:
    r"""``log N(x; m, (L Lᵀ)⁻¹) = Σ_i log L_ii - ½ |Lᵀ (x - m)|² - ½ D log 2π``."""
    D = loc.shape[-1]
    white = unrolled.lower_transposed_times(lower, unrolled.vector_entries(x - loc))
    return sum(lower[i][i].log() for i in range(D)) - 0.5 * sum(w.square() for w in white) - 0.5 * D * _LOG_2PI


class StepGaussiansByPrecision(SequenceDistribution):
    """
    Independent Gaussians ``x_t ~ N(loc_t, (L_t L_tᵀ)⁻¹)`` over the steps of a sequence, as one
    distribution with event shape ``(T, D)``: the SIN posterior's ``q(x | z)`` once the states have
    chosen each step's Gaussian, sampled by one back substitution (``x = m + L⁻ᵀ ε``). Steps after
    a sequence's end hold zeros and do not count in :meth:`log_prob`.

    :param torch.Tensor packed: the means and the precisions' Cholesky factors of every step,
        ``(..., T, D + D (D + 1) / 2)`` (:meth:`StateGaussians.packed`, at the chosen states).
    :param int dim: ``D``.
    :param torch.Tensor lengths: optional, shape ``(...)``.
    """

    def __init__(self, packed: torch.Tensor, dim: int, lengths=None, validate_args=None):
        self.packed, self.dim, self.lengths = packed, dim, lengths
        self.loc = packed[..., :dim]
        batch_shape = packed.shape[:-2]
        if lengths is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, lengths.shape)
        super().__init__(batch_shape, packed.shape[-2:-1] + (dim,), validate_args=validate_args)

    @property
    def _factor(self) -> unrolled.Cholesky:
        return unrolled.unstack_lower(self.packed[..., self.dim :], self.dim)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        x = self.loc + torch.stack(unrolled.solve_lower_transposed(self._factor, unrolled.vector_entries(noise)), -1)
        return after_end_to_zero(x, self.step_mask, 1)

    def log_prob(self, value):
        per_step = _gaussian_log_prob(value, self.loc, self._factor.lower)
        return after_end_to_zero(per_step, self.step_mask, 0).sum(-1)


def _one_step_log_prob(step: "StepGaussiansByPrecision", value: torch.Tensor) -> torch.Tensor:
    """``log q(x_t = value | z_t)`` of a one-step :class:`StepGaussiansByPrecision`, ``value`` ``(..., D)``."""
    return step.log_prob(value[..., None, :])


def _state_log_density(marginals, states: torch.Tensor, t: int) -> Callable:
    r"""``z ↦ log q(z_t = z | z_{t-1})`` at the drawn ``z_{t-1}``: ``q(z_1)``, then ``q(z_{t-1}, z_t) / q(z_{t-1})``."""
    if t == 0:
        first = marginals.marginals[..., 0, :]
        return lambda z: Vindex(first)[..., z.long()].log()
    previous = states[..., t - 1]
    pair, marginal = marginals.pair_marginals[..., t - 1, :, :], marginals.marginals[..., t - 1, :]
    # picked before the logarithm: a pair of zero mass elsewhere must not reach the gradient
    return lambda z: (Vindex(pair)[..., previous, z.long()] / Vindex(marginal)[..., previous]).log()


class HMMPosterior(RegimeMarginals):
    r"""
    The closed-form SIN posterior ``q(z_{1:T}) Π_t q(x_t | z_t)`` of a batch of sequences.

    :param GaussianPotential potential: per-step potentials, shape ``(..., T, D)``; a
        zero precision marks a step without evidence (a missing frame, still a step),
        ``potential.lengths`` the end of each padded sequence (steps after it do not exist).
    :param HMMFactor factor: the SIN's HMM factor.
    :param bool parallel: forward-backward by a parallel scan (else sequentially).
    """

    def __init__(self, potential: GaussianPotential, factor: HMMFactor, parallel: bool = True):
        self.num_steps, self.dim = potential.info_vec.shape[-2:]
        self.batch_shape, self.lengths = potential.info_vec.shape[:-2], potential.lengths
        #: ``q(x_t | z_t = k)`` and the evidence ``e_tk``, batch ``(..., T, K)``
        self.emission = StateGaussians(potential, factor.emission)
        self.factor, self.parallel = factor, parallel
        #: ``q(z_{1:T})``, a :class:`~pyro_sin.distributions.MarkovChain` with event shape ``(T,)``
        self.states = self._chain(self.emission.log_evidence)

    def _chain(self, log_evidence) -> MarkovChain:
        f = self.factor
        transition_logits = f.transition_logits[..., None, :, :]  # (..., 1, K, K): the same at every step
        return MarkovChain(f.init_logits, transition_logits, self.num_steps, log_evidence, self.lengths, self.parallel)

    @property
    def log_normalizer(self) -> torch.Tensor:
        """``log Z`` of the SIN per sequence (the chain's, with the factor's constants)."""
        return self.states.marginals.log_normalizer

    def entropy(self) -> torch.Tensor:
        r"""``H[q(z, x)] = H[q(z)] + Σ_t Σ_k q(z_t = k) H[q(x_t | z_t = k)]``, shape ``(...)``."""
        gaussian = 0.5 * self.dim * (1 + _LOG_2PI) + self.emission.half_log_det_cov  # (..., T, K)
        return self.states.entropy() + (self.state_probs * gaussian).sum((-1, -2))

    def gaussian_stats(self) -> GaussianStats:
        """Per-sequence, per-state ``Σ_t q(z_t = k) (1, E[x_t | k], E[x_t x_tᵀ | k])``, batch ``(..., K)``."""
        r = self.state_probs  # (..., T, K)
        return GaussianStats(
            r.sum(-2),
            torch.einsum("...tk,...tki->...ki", r, self.emission.loc),
            torch.einsum("...tk,...tkij->...kij", r, self.emission.second_moment()),
        )

    def total_gaussian_stats(self) -> GaussianStats:
        """:meth:`gaussian_stats` summed over the batch, batch ``(K,)``."""
        r, K, D = self.state_probs, self.state_probs.shape[-1], self.dim
        return GaussianStats(
            r.reshape(-1, K).sum(0),
            torch.einsum("mk,mki->ki", r.reshape(-1, K), self.emission.loc.reshape(-1, K, D)),
            self.emission.weighted_second_moment(r),
        )

    def expected_gaussian_log_likelihood(self, expectations: NormalWishartExpectations) -> torch.Tensor:
        r"""
        ``Σ_t Σ_k q(z_t = k) E[log N(x_t; μ_k, Λ_k⁻¹)]`` under ``q(μ, Λ)``'s expectations, per sequence
        ``(...)``: :func:`~pyro_sin.distributions.expected_gaussian_log_likelihood` of
        :meth:`gaussian_stats`, with ``Σ_t q(z_t = k) tr(E[Λ_k] E[x_t x_tᵀ | k])`` taken from the
        covariances' diagonal alone when ``E[Λ_k]`` is the factor's own precision (the tied factor).
        """
        E, r, loc = expectations, self.state_probs, self.emission.loc
        own = E.precision is self.factor.emission.precision
        count = r.sum(-2)  # (..., K)
        trace = (r * self.emission.expected_quadratic(E.precision, own)).sum(-2)  # (..., K)
        linear = (r * (loc * E.precision_loc).sum(-1)).sum(-2)
        D = self.dim
        per_state = (
            linear
            - 0.5 * count * E.loc_precision_loc
            - 0.5 * trace
            + 0.5 * count * (E.log_det_precision - D * _LOG_2PI)
        )
        return per_state.sum(-1)

    def emission_given(self, states: torch.Tensor) -> StepGaussiansByPrecision:
        """``q(x_{1:T} | z_{1:T})`` for paths ``states`` of shape ``(..., T)``."""
        packed = self.emission.packed()  # (..., T, K, E)
        batch = torch.broadcast_shapes(states.shape, packed.shape[:-2])
        index = states.expand(batch)[..., None, None].expand(batch + (1, packed.shape[-1]))
        picked = torch.gather(packed.expand(batch + packed.shape[-2:]), -2, index)[..., 0, :]
        return StepGaussiansByPrecision(picked, self.dim, self.lengths, validate_args=False)

    def sample_states(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact joint draws of the state paths, shape ``sample_shape + (..., T)``."""
        return self.states.sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Draws of ``x_{1:T}``: a state path, then ``x | z`` reparameterised; shape ``sample_shape + (..., T, D)``."""
        return self.emission_given(self.sample_states(sample_shape)).rsample()

    def log_prob(self, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log q(z_{1:T}, x_{1:T})`` of the steps up to each sequence's end."""
        return self.states.log_prob(states) + self.emission_given(states).log_prob(x)

    def marginal_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""``log q(x_{1:T}) = log Σ_z q(z) q(x | z)``: the chain's normaliser with ``q(x_t | z_t)`` as evidence."""
        f = self.factor
        log_evidence = self.emission.log_evidence + self.emission.log_prob(x)
        joint = markov_log_normalizer(
            f.init_logits, f.transition_logits[..., None, :, :], log_evidence, self.lengths, self.parallel
        )
        return joint - self.log_normalizer


class LatentHMM(NormalWishartGaussians, RegimeSwitchingPrior):
    r"""
    A hidden Markov model prior on latent sequences: ``K`` states following a Markov
    chain with Dirichlet priors on the initial distribution and on each row of the
    transition matrix, each emitting a Gaussian latent with a Normal-Wishart prior.

    Model-side use inside a Pyro program (or through
    :class:`~pyro_sin.models.DeepLatentSequence`, which calls the same methods)::

        params = hmm.sample_params()          # sites x_init_probs, x_transition_probs,
                                              #       x_precisions, x_locs
        with pyro.plate("sequences", N, subsample=idx):
            x = hmm.sample_latent(params, T)  # sites x_states (event (T,)), x (event (T, D))

    The states of a sequence are one site whose value is the whole path (a
    :class:`~pyro_sin.distributions.MarkovChain`), so the model and the SIN emit the
    same sites as any Pyro program, and Pyro's ``Trace_ELBO`` estimates the same bound as
    :class:`~pyro_sin.SINELBO`; ``TraceEnum_ELBO`` can enumerate the ``K^T`` paths of
    small problems only. Padded sequences: see :class:`~pyro_sin.pgm.sequence.SequencePrior`.

    :param int num_states: ``K``.
    :param int latent_dim: ``D``.
    :param str name: name of the latent site ``x``.
    :param init_concentration: ``α₀``, a scalar or shape ``(K,)`` (default 1).
    :param transition_concentration: ``β₀``, a scalar or shape ``(K, K)``, row ``j`` the
        prior of the transitions out of state ``j`` (default 1; a larger diagonal makes
        the chain sticky).
    :param loc: prior mean ``m₀`` (default 0).
    :param float kappa: ``κ₀`` (default 0.5).
    :param torch.Tensor scale_inv: ``W₀⁻¹`` (default ``(D + 0.5) I``).
    :param float df: ``ν₀`` (default ``2D + 0.5``).
    :param float init_loc_range: initial posterior means ``m ~ U(-r, r)^D``.
    :param bool parallel: forward-backward by a parallel scan over time (else sequentially).
    """

    params_type = HMMParams
    posterior_type = HMMGlobalPosterior
    regime_site_suffixes = ("precisions", "locs")
    site_roles = ("init_probs", "transition_probs", "precisions", "locs", "states")

    def __init__(
        self,
        num_states: int,
        latent_dim: int,
        name: str = "x",
        *,
        init_concentration=1.0,
        transition_concentration=1.0,
        loc=0.0,
        kappa=0.5,
        scale_inv=None,
        df=None,
        init_loc_range: float = 5.0,
        parallel: bool = True,
    ):
        super().__init__(name, num_states=num_states, latent_dim=latent_dim)
        self.init_loc_range, self.parallel = self._finite(init_loc_range, "LatentHMM init_loc_range"), parallel
        self._register_chain_prior(init_concentration, transition_concentration)
        self._register_normal_wishart((num_states,), loc, kappa, scale_inv, df, "LatentHMM")
        self._step_sites: Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]] = None

    # ----- one site per step ------------------------------------------------------

    def unroll_sites(self, states: Sequence[str], latents: Sequence[str]) -> "LatentHMM":
        """
        Emits the chain one step at a time, ``z_t`` at the site ``states[t]`` and ``x_t`` at
        ``latents[t]``, as a model written with ``pyro.markov`` does (:mod:`pyro_sin.recognize`),
        instead of one site per path: the model's ``z_t ~ Cat(π)`` then ``Cat(P_{z_{t-1}})`` and
        ``x_t ~ N(μ_{z_t}, Λ_{z_t}⁻¹)``; the guide's ``q(z_t | z_{t-1})`` and ``q(x_t | z_t)``, at
        the values of a path drawn as :meth:`sample_local_posterior` draws one. For sequences of
        ``len(states)`` steps, without padding. The prior's latent site (its ``name``) must be ``latents[0]``.

        :returns: ``self``.
        """
        states, latents = tuple(states), tuple(latents)
        if len(states) != len(latents) or not states:
            raise ValueError(f"need as many state sites as latent sites, at least one; got {states} and {latents}")
        if latents[0] != self.name:
            raise ValueError(f"the first latent site must be the prior's latent site '{self.name}', got {latents[0]}")
        self._step_sites = (states, latents)
        return self

    @property
    def local_sites(self):
        if self._step_sites is None:
            return super().local_sites
        return tuple(name for step in zip(*self._step_sites) for name in step)

    def global_values(self, q: HMMGlobalPosterior) -> Dict[str, torch.Tensor]:
        """The posterior means (:meth:`~pyro_sin.pgm.regimes.RegimeSwitchingPrior.point_estimate`) by site name."""
        init, transition, locs, precisions = self.point_estimate(q)
        precisions_site, locs_site = self.regime_sites
        return {
            self.init_probs_site: init,
            self.transition_probs_site: transition,
            precisions_site: precisions,
            locs_site: locs,
        }

    def _check_steps(self, num_steps: int, lengths):
        check_unrolled_steps(f"LatentHMM '{self.name}'", len(self._step_sites[0]), num_steps, lengths)

    # ----- model side -------------------------------------------------------------

    def emission(self, params: HMMParams, states: torch.Tensor, lengths=None) -> StepGaussians:
        """``p(x_{1:T} | z_{1:T}, μ, Λ)`` for paths ``states`` of shape ``(..., T)``."""
        # a time dimension, so that the parameters' batch dimensions align with the paths'
        loc = params.locs[..., None, :, :]
        scale_tril = precision_to_scale_tril(params.precisions)[..., None, :, :, :]
        return StepGaussians(Vindex(loc)[..., states, :], Vindex(scale_tril)[..., states, :, :], lengths)

    def _sample_latent(self, params: HMMParams, num_steps: int, lengths=None) -> torch.Tensor:
        if self._step_sites is not None:
            return self._sample_steps(params, num_steps, lengths)
        states = pyro.sample(self.states_site, self.states_prior(params, num_steps, lengths))
        return pyro.sample(self.name, self.emission(params, states, lengths))

    def _sample_steps(self, params: HMMParams, num_steps: int, lengths=None) -> torch.Tensor:
        """The model one step at a time (:meth:`unroll_sites`); returns ``x``, shape ``(..., T, D)``."""
        self._check_steps(num_steps, lengths)
        scale_tril = precision_to_scale_tril(params.precisions)
        z, steps = None, []
        for z_site, x_site in zip(*self._step_sites):
            probs = params.init_probs if z is None else Vindex(params.transition_probs)[..., z, :]
            z = pyro.sample(z_site, dist.Categorical(probs))
            loc, tril = Vindex(params.locs)[..., z, :], Vindex(scale_tril)[..., z, :, :]
            steps.append(pyro.sample(x_site, dist.MultivariateNormal(loc, scale_tril=tril)))
        return torch.stack(steps, -2)

    def latent_log_prob(self, params: HMMParams, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``log p(x_{1:T} | θ) = log Σ_z p(z | θ) p(x | z, θ)`` by the forward algorithm, shape ``(...)``."""
        comps = dist.MultivariateNormal(params.locs, precision_matrix=params.precisions, validate_args=False)
        log_px = comps.log_prob(x[..., None, :])  # (..., T, K)
        return markov_log_normalizer(
            params.init_probs.log(), params.transition_probs.log()[..., None, :, :], log_px, lengths, self.parallel
        )

    # ----- conjugate posterior over θ -----------------------------------------------

    def init_natural(self):
        return self._pack(
            self.prior_init_concentration,
            self.prior_transition_concentration,
            self._scattered_normal_wishart().natural_params,
        )

    @torch.no_grad()
    def encoded_start(self, encoder, data, generator=None, iterations: int = 100):
        """
        The classic start: a :class:`~pyro_sin.pgm.classic_regimes.GaussianHMM` fitted by EM to
        the encoded training sequences ``data`` (the means of the encoder's potentials), then
        ``q(θ)`` given its posterior over the states (:meth:`natural_from_classic`).

        :param torch.Generator generator: the random stream of the EM's k-means start.
        :param int iterations: the most EM iterations.
        """
        potential = encode(encoder, data)
        frames, lengths = potential.mean, potential.lengths
        classic = GaussianHMM(self.num_states, iterations=iterations).fit(frames, lengths, generator=generator)
        return self.natural_from_classic(classic, frames, lengths)

    @torch.no_grad()
    def natural_from_classic(self, classic: GaussianHMM, frames: torch.Tensor, lengths=None):
        r"""
        ``λ`` of ``q(θ)`` after observing ``frames`` ``(N, T, D)`` with the states distributed as
        the fitted ``classic`` model says: the prior plus its expected first states and transition
        counts (the Dirichlets) and its state-weighted Gaussian statistics (the Normal-Wisharts).
        With many frames ``E[π]``, ``E[P]``, ``E[μ_k]`` and ``E[Λ_k]⁻¹`` are the classic fit's.
        """
        marginals = classic.posterior(frames, lengths)
        counts = chain_counts(marginals)
        states = conjugate_update(self.prior().natural_params, classic.gaussian_stats(frames, marginals.marginals))
        return self._pack(
            self.prior_init_concentration + counts.first,
            self.prior_transition_concentration + counts.transitions,
            states,
        )

    # ----- SIN factor and posterior ---------------------------------------------------

    def tied_factor(self, q: HMMGlobalPosterior) -> HMMFactor:
        return HMMFactor(q.expected_log_init, q.expected_log_transition, expected_gaussian_factor(q.expectations))

    def init_free_factor(self, natural):
        q = self.global_posterior(natural)
        return {
            "init_logits": (q.expected_log_init, constraints.real),
            "transition_logits": (q.expected_log_transition, constraints.real),
            **self._free_gaussians(q.normal_wishart, q.expectations),
        }

    def free_factor(self, params) -> HMMFactor:
        return HMMFactor(
            torch.log_softmax(params["init_logits"], -1),
            torch.log_softmax(params["transition_logits"], -1),
            gaussian_factor(params["loc"], params["precision_tril"]),
        )

    def posterior(self, potential: GaussianPotential, factor: HMMFactor) -> HMMPosterior:
        self.check_potential(potential)
        return HMMPosterior(potential, factor, self.parallel)

    def sample_local_posterior(self, record: SINRecord) -> torch.Tensor:
        post = record.posterior
        if self._step_sites is not None:
            return self._sample_posterior_steps(record)
        states = pyro.sample(self.states_site, post.states)
        return pyro.sample(self.name, post.emission_given(states), infer={"sin": record})

    def _sample_posterior_steps(self, record: SINRecord) -> torch.Tensor:
        """
        The path drawn as :meth:`sample_local_posterior` draws it (the same random numbers), then
        emitted one step at a time (:class:`StepOfDrawnPath`) with the conditionals
        ``q(z_t | z_{t-1})`` and ``q(x_t | z_t)``; the SIN record on the first latent step.
        """
        post = record.posterior
        self._check_steps(post.num_steps, post.lengths)
        chain = broadcast_to_plates(post.states)  # as pyro.sample would broadcast the path's site
        states = chain.sample()
        emission = post.emission_given(states)
        x = emission.rsample()
        marginals = chain.marginals
        states_support = constraints.integer_interval(0, self.num_states - 1)
        for t, (z_site, x_site) in enumerate(zip(*self._step_sites)):
            state_density = _state_log_density(marginals, states, t)
            pyro.sample(z_site, StepOfDrawnPath(states[..., t], state_density, states_support, 0, False))
            step = StepGaussiansByPrecision(emission.packed[..., t : t + 1, :], self.latent_dim, validate_args=False)
            latent_density = functools.partial(_one_step_log_prob, step)
            fn = StepOfDrawnPath(x[..., t, :], latent_density, constraints.real_vector, 1, True)
            pyro.sample(x_site, fn, infer={"sin": record} if t == 0 else {})
        return x

    # ----- closed-form bound and natural-gradient target ---------------------------------

    def expected_log_prior(self, q: HMMGlobalPosterior, posterior: HMMPosterior) -> torch.Tensor:
        r"""
        .. math:: \sum_k q(z_1{=}k) E[\log\pi_k] + \sum_{jk} \bar n_{jk} E[\log P_{jk}]
                  + \sum_t\sum_k q(z_t{=}k)\, E[\log N(x_t; \mu_k, \Lambda_k^{-1})]
        """
        return self.expected_log_chain_prior(q, posterior) + posterior.expected_gaussian_log_likelihood(q.expectations)

    def natural_target(self, posterior: HMMPosterior, scale: float):
        # the statistics come summed over the batch (a sum over no dimensions would sum over all)
        total = GaussianStats(*(scale * s for s in posterior.total_gaussian_stats()))
        return self._pack(
            *self.chain_natural_target(posterior, scale), conjugate_update(self.prior().natural_params, total)
        )

    # ----- prediction and evaluation (the interface of SequencePrior) ---------------------

    def proposal(self, posterior: HMMPosterior) -> PosteriorDistribution:
        """``q(x_{1:T})`` with the states summed out (an importance-sampling proposal)."""
        return PosteriorDistribution(posterior)

    def forecast(
        self, q: HMMGlobalPosterior, posterior: HMMPosterior, horizon: int, num_samples: int, lengths=None
    ) -> torch.Tensor:
        r"""
        Draws of ``x_{T+1..T+H}`` for sequences of batch ``(B,)``: ``z_T ~ q(z_T)``, ``θ ~ q(θ)``,
        then the chain ``z_{t+1} ~ P_{z_t}`` and ``x_t ~ N(μ_{z_t}, Λ_{z_t}⁻¹)``.

        :returns: shape ``(num_samples, B, horizon, D)``.
        """
        last = last_step(posterior.state_probs, lengths)  # (B, K)
        S, B, D = num_samples, last.shape[0], self.latent_dim
        transition = dist.Dirichlet(q.transition_concentration).sample((S,))  # (S, K, K)
        precisions = q.normal_wishart.precision_dist().sample((S,))  # (S, K, D, D)
        locs = q.normal_wishart.loc_dist(precisions).sample()  # (S, K, D)
        scale_tril = precision_to_scale_tril(precisions)
        draw = torch.arange(S, device=last.device)[:, None]  # (S, 1)
        z = dist.Categorical(last).sample((S,))  # (S, B)
        steps = []
        for _ in range(horizon):
            z = dist.Categorical(transition[draw, z]).sample()
            noise = torch.randn(S, B, D, dtype=locs.dtype, device=locs.device)
            steps.append(locs[draw, z] + (scale_tril[draw, z] @ noise[..., None])[..., 0])
        return torch.stack(steps, -2)
