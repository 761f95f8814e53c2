r"""
What the latent HMM and the switching LDS share: a chain of ``K`` discrete regimes,

.. math::

    π \sim \mathrm{Dir}(α_0),\quad P_j \sim \mathrm{Dir}(β_{0j}),\quad
    z_1 \sim \mathrm{Cat}(π),\quad z_t \mid z_{t-1} \sim \mathrm{Cat}(P_{z_{t-1}}),

and, for each regime, continuous parameters ``θ_k = (L_k, Λ_k)`` under a conjugate
family with a precision ``Λ_k`` and a location ``L_k`` given it (a Normal-Wishart for the
HMM's emission means, a Matrix-Normal-Wishart for the switching LDS's dynamics).

:class:`RegimeSwitchingPrior` holds everything about ``q(π) Π_j q(P_j) Π_k q(θ_k)`` that
does not depend on the family: sites, natural-parameter layout and domain, KL and
cross-entropy, point estimates and sampling. A subclass names its family through
``prior``, ``_conjugate_from_natural`` and ``_conjugate_block``, which the mixins
:class:`~pyro_sin.pgm.mixture.gaussian.NormalWishartGaussians` and
:class:`~pyro_sin.pgm.lds.AffineGaussianDynamics` provide.
"""

from typing import Dict, NamedTuple, Tuple, Type

import torch

import pyro
import pyro.distributions as dist

from ..distributions import (
    DirichletBlock,
    MarkovChain,
    NaturalDomain,
    dirichlet_cross_entropy,
    dirichlet_expected_log,
    dirichlet_kl,
)
from .base import shares_in_use
from .sequence import SequencePrior


class RegimeGlobalPosterior:
    """
    ``q(π) Π_j q(P_j) Π_k q(θ_k)``: two Dirichlets and a conjugate family of batch ``(K,)``,
    with the expectations the SIN factor and the bound read.

    :param torch.Tensor init_concentration: ``α``, shape ``(K,)``.
    :param torch.Tensor transition_concentration: ``β``, shape ``(K, K)``, row ``j`` for the
        transitions out of regime ``j``.
    :param regimes: a Normal-Wishart or Matrix-Normal-Wishart of batch shape ``(K,)``.
    """

    def __init__(self, init_concentration, transition_concentration, regimes):
        self.init_concentration = init_concentration  # (K,)
        self.transition_concentration = transition_concentration  # (K, K)
        self.regimes = regimes  # batch (K,)
        self.expected_log_init = dirichlet_expected_log(init_concentration)  # (K,)
        self.expected_log_transition = dirichlet_expected_log(transition_concentration)  # (K, K)
        self.expectations = regimes.expectations()

    def mean_probs(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(E[π], E[P])``."""
        init = self.init_concentration / self.init_concentration.sum(-1, keepdim=True)
        trans = self.transition_concentration / self.transition_concentration.sum(-1, keepdim=True)
        return init, trans


class RegimeMarginals:
    """
    The regime chain's marginals of a local posterior whose ``states`` is a
    :class:`~pyro_sin.distributions.MarkovChain`.
    """

    @property
    def step_mask(self):
        """``(..., T)``: True where a step exists, or None when all do."""
        return self.states.step_mask

    @property
    def state_probs(self) -> torch.Tensor:
        """``q(z_t = k)``, shape ``(..., T, K)`` (zeros after a sequence's end)."""
        return self.states.marginals.marginals

    @property
    def transition_counts(self) -> torch.Tensor:
        """Expected transition counts ``Σ_t q(z_{t-1} = j, z_t = k)``, shape ``(..., K, K)``."""
        return self.states.marginals.transition_counts


class RegimeSwitchingPrior(SequencePrior):
    """
    Base of the priors whose latent sequence switches between ``K`` regimes that follow a
    Markov chain, each regime with its own conjugate parameters.

    A subclass sets ``params_type`` (a named tuple ``(init_probs, transition_probs,
    location, precision)``), :attr:`posterior_type` (a :class:`RegimeGlobalPosterior`),
    ``regime_site_suffixes`` (the names of the precision and location sites after
    ``name_``), and takes its family's ``prior``, ``_conjugate_from_natural`` and
    ``_conjugate_block`` from a mixin (see the module's docstring).
    """

    params_type: Type[NamedTuple]
    posterior_type: Type[RegimeGlobalPosterior] = RegimeGlobalPosterior
    regime_site_suffixes: Tuple[str, str]  # (precision, location)

    def _register_chain_prior(self, init_concentration, transition_concentration):
        K, what = self.num_states, type(self).__name__
        init_concentration = self._as_tensor(init_concentration, (K,), f"{what} init_concentration")
        transition_concentration = self._as_tensor(transition_concentration, (K, K), f"{what} transition_concentration")
        self.register_buffer("prior_init_concentration", init_concentration)
        self.register_buffer("prior_transition_concentration", transition_concentration)
        if not ((self.prior_init_concentration > 0).all() and (self.prior_transition_concentration > 0).all()):
            raise ValueError(f"the Dirichlet concentrations of a {type(self).__name__} must be positive")

    # ----- the regimes' family ---------------------------------------------------------

    def regimes_from_natural(self, natural: Dict[str, torch.Tensor]):
        """The family of batch ``(K,)`` whose natural parameters are the non-Dirichlet entries of ``natural``."""
        return self._conjugate_from_natural(natural)

    # ----- site names -----------------------------------------------------------

    @property
    def init_probs_site(self):
        return self.site_name("init_probs")

    @property
    def transition_probs_site(self):
        return self.site_name("transition_probs")

    @property
    def states_site(self):
        return self.site_name("states")

    @property
    def regime_sites(self) -> Tuple[str, str]:
        """The sites of the regimes' precisions and locations."""
        return tuple(self.site_name(suffix) for suffix in self.regime_site_suffixes)

    @property
    def global_sites(self):
        return (self.init_probs_site, self.transition_probs_site) + self.regime_sites

    @property
    def local_sites(self):
        return (self.states_site, self.name)

    # ----- model side -------------------------------------------------------------

    def _sample_regime_params(self, init_concentration, transition_concentration, regimes):
        init_probs = pyro.sample(self.init_probs_site, dist.Dirichlet(init_concentration))
        transition_probs = pyro.sample(self.transition_probs_site, dist.Dirichlet(transition_concentration).to_event(1))
        precisions, locations = self._sample_conjugate(regimes, self.regime_sites, 1)
        return self.params_type(init_probs, transition_probs, locations, precisions)

    def _sample_params(self):
        return self._sample_regime_params(
            self.prior_init_concentration, self.prior_transition_concentration, self.prior()
        )

    def states_prior(self, params, num_steps: int, lengths=None) -> MarkovChain:
        """``p(z_{1:T} | π, P)`` as a distribution over paths."""
        return MarkovChain(
            params.init_probs.log(),
            params.transition_probs.log()[..., None, :, :],
            num_steps,
            lengths=lengths,
            parallel=self.parallel,
        )

    # ----- conjugate posterior over θ -----------------------------------------------

    def global_posterior(self, natural: Dict[str, torch.Tensor]) -> RegimeGlobalPosterior:
        return self.posterior_type(
            self._check_concentration(natural["init_concentration"], "initial distribution"),
            self._check_concentration(natural["transition_concentration"], "transition rows"),
            self.regimes_from_natural(natural),
        )

    @staticmethod
    def _pack(init_concentration, transition_concentration, regimes_natural: NamedTuple):
        return {
            "init_concentration": init_concentration,
            "transition_concentration": transition_concentration,
            **regimes_natural._asdict(),
        }

    def prior_natural(self):
        return self._pack(
            self.prior_init_concentration, self.prior_transition_concentration, self.prior().natural_params
        )

    def natural_domain(self) -> NaturalDomain:
        K = self.num_states
        return NaturalDomain(
            [
                DirichletBlock(K, key="init_concentration"),
                DirichletBlock(K, (K,), key="transition_concentration"),
                self._conjugate_block(),
            ]
        )

    def point_estimate(self, q: RegimeGlobalPosterior):
        """Posterior means ``E[π]``, ``E[P]``, ``E[L_k]`` and ``E[Λ_k] = ν_k W_k``."""
        init, trans = q.mean_probs()
        return self.params_type(init, trans, q.regimes.loc, q.expectations.precision)

    def _sample_global_posterior(self, natural):
        q = self.global_posterior(natural)
        self._sample_regime_params(q.init_concentration, q.transition_concentration, q.regimes)

    def expected_log_chain_prior(self, q: RegimeGlobalPosterior, posterior) -> torch.Tensor:
        r"""
        The regime chain's part of the expected log prior of a local posterior with
        ``state_probs`` and ``transition_counts``, shape ``(...)``:

        .. math:: \sum_k q(z_1{=}k)\, E[\log π_k] + \sum_{jk} \bar n_{jk}\, E[\log P_{jk}]
        """
        return (posterior.state_probs[..., 0, :] * q.expected_log_init).sum(-1) + (
            posterior.transition_counts * q.expected_log_transition
        ).sum((-1, -2))

    def chain_natural_target(self, posterior, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        The Dirichlets' natural target from the expected first states and transition counts,
        summed over the batch and multiplied by ``scale``: ``(α₀ + s Σ q(z_1), β₀ + s Σ n̄)``.
        """
        K = self.num_states
        first = posterior.state_probs[..., 0, :].reshape(-1, K).sum(0)
        counts = posterior.transition_counts.reshape(-1, K, K).sum(0)
        return self.prior_init_concentration + scale * first, self.prior_transition_concentration + scale * counts

    def in_use(self, natural, min_share=0.01) -> int:
        """The regimes whose expected number of steps, ``ν_k - ν₀_k``, is ``min_share`` of the data or more."""
        return shares_in_use(natural["df"] - self.prior().natural_params.df, min_share)

    def kl(self, q: RegimeGlobalPosterior):
        return (
            dirichlet_kl(q.init_concentration, self.prior_init_concentration)
            + dirichlet_kl(q.transition_concentration, self.prior_transition_concentration).sum(-1)
            + q.regimes.kl_divergence(self.prior()).sum(-1)
        )

    def cross_entropy(self, q: RegimeGlobalPosterior):
        return (
            dirichlet_cross_entropy(q.init_concentration, self.prior_init_concentration)
            + dirichlet_cross_entropy(q.transition_concentration, self.prior_transition_concentration).sum(-1)
            + q.regimes.cross_entropy(self.prior()).sum(-1)
        )
