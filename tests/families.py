"""
The conformance suite's table: one entry per registered family (``pyro_sin.pgm.FAMILIES``).

An entry says how to build a small instance of the family with random hyperparameters, the
deep latent model it is used in, its data, the arguments it refuses, and the reference
computations the suite checks it against: the conjugate update of a full natural step,
computed independently (dense algebra, enumeration over paths), and, for sequences, the
posterior summaries that padding must leave unchanged. Adding a family to the package adds
one entry here; ``tests/test_conformance.py`` fails until it does.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

import pyro

from pyro_sin.guide import SINGuide
from pyro_sin.models import DeepLatentMixture, DeepLatentSequence, data_plate, register_decoder
from pyro_sin.naming import NameOwner
from pyro_sin.pgm import (
    FAMILIES,
    GaussianMixture,
    LatentGaussian,
    LatentHMM,
    LinearDynamicalSystem,
    SequencePrior,
    StudentTMixture,
    SwitchingLDS,
)

from tests.helpers import random_spd
from tests.pgm import reference

NAN, INF = float("nan"), float("inf")
NOT_POSITIVE_DEFINITE = torch.tensor([[1.0, 3.0], [3.0, 1.0]])  # symmetric, eigenvalues -2 and 4


class DeepLatentPoints(NameOwner):
    """``y_n ~ p(y | x_n)`` (a neural decoder), ``x_n ~ p(x | θ)``, ``θ ~ p(θ)``: any per-point prior's deep model."""

    def __init__(self, pgm, decoder, num_data, name=None):
        self.pgm, self.decoder, self.num_data = pgm, decoder, num_data
        self._claim_name(name, type(self).__name__)

    def __call__(self, y, indices=None):
        register_decoder(self)
        params = self.pgm.sample_params()
        with data_plate(self.num_data, y, indices):
            x = self.pgm.sample_latent(params)
            pyro.sample("y", self.decoder.distribution(x), obs=y)

    def create_plates(self, y, indices=None):
        return data_plate(self.num_data, y, indices)

    def make_guide(self, encoder, **kwargs) -> SINGuide:
        return SINGuide(self, self.pgm, encoder, create_plates=self.create_plates, **kwargs)


@dataclass(frozen=True)
class Family:
    """
    One family in the conformance suite.

    :param str key: its name in ``pyro_sin.pgm.FAMILIES``.
    :param sizes: its size arguments (small), e.g. ``{"num_components": 2, "latent_dim": 2}``.
    :param prior: ``prior(**overrides)``: an instance of the given sizes with random hyperparameters.
    :param model: ``model(prior, decoder, num_data)``: the deep latent model the family serves in,
        with ``make_guide(encoder, **kwargs)``.
    :param bad_arguments: constructor keyword arguments the family refuses, each with (a pattern of)
        its error message.
    :param bad_naturals: keys of ``λ`` that ``global_posterior`` checks (the Dirichlets' natural
        parameters), each with (a pattern of) the message that refuses a negated value.
    :param conjugate_update: ``(prior, potential, factor, scale)`` -> the conjugate posterior in
        standard coordinates after a full natural step, computed independently of the family's code.
    :param standard_parameters: ``q(θ | λ)`` -> the same coordinates read off the family's global posterior.
    :param summaries: for sequences: ``posterior`` -> ``{name: (tensor, per_step)}``, what the SIN
        posterior says of each sequence (batch first; time second where ``per_step``).
    :param counted_transitions: for sequences: keys of ``λ`` whose sum grows by one per transition
        (``L - 1`` per sequence of ``L`` steps) in the natural target.
    :param bool monte_carlo_bound: the closed-form part of the bound has a Monte Carlo term of its
        own, so that it draws other numbers in another dtype or on another device.
    """

    key: str
    sizes: Dict[str, int]
    prior: Callable
    model: Callable
    conjugate_update: Callable
    standard_parameters: Callable
    bad_arguments: Tuple[Tuple[dict, str], ...] = ()
    bad_naturals: Tuple[Tuple[str, str], ...] = ()
    summaries: Optional[Callable] = None
    counted_transitions: Tuple[str, ...] = ()
    monte_carlo_bound: bool = False

    @property
    def latent_dim(self) -> int:
        return self.sizes["latent_dim"]

    @property
    def sequence(self) -> bool:
        """A prior over sequences (event ``(T, D)``) rather than one latent per point."""
        return issubclass(FAMILIES[self.key], SequencePrior)


# ----- the per-point families -------------------------------------------------------------


def _mixture_statistics(potential, factor, scale):
    """The scaled statistics ``Σ r``, ``Σ r x̄``, ``Σ r E[x xᵀ]`` per component, by dense algebra."""
    log_z, mean, cov = reference.gaussian_components(potential, factor)
    r = torch.softmax(log_z, -1)  # (B, K)
    count = scale * r.sum(0)
    total = scale * torch.einsum("nk,nkd->kd", r, mean)
    total_outer = scale * torch.einsum("nk,nkij->kij", r, cov + reference.outer(mean))
    return count, total, total_outer


def _gaussian_mixture_update(prior, potential, factor, scale):
    count, total, total_outer = _mixture_statistics(potential, factor, scale)
    return {
        "concentration": prior.prior_concentration + count,
        **reference.normal_wishart_update(prior.prior(), count, total, total_outer),
    }


def _normal_wishart_parameters(nw):
    return {"kappa": nw.kappa, "loc": nw.loc, "scale_inv": nw.scale_inv, "df": nw.df}


def _gaussian_mixture(**overrides):
    K, D = 2, 2
    hyperparameters = dict(
        concentration=torch.rand(K) + 0.5,
        loc=torch.randn(K, D),
        kappa=torch.rand(K) + 0.5,
        scale_inv=random_spd((K,), D),
        df=D + 1.5,
        init_loc_range=2.0,
    )
    return GaussianMixture(K, D, **{**hyperparameters, **overrides})


def _student_t_mixture(**overrides):
    return StudentTMixture(2, 2, **{"concentration": torch.rand(2) + 0.5, "num_samples": 20, **overrides})


def _latent_gaussian(**overrides):
    D = 2
    hyperparameters = dict(loc=torch.randn(D), kappa=0.5 + torch.rand(()), scale_inv=random_spd((), D), df=D + 1.5)
    return LatentGaussian(D, **{**hyperparameters, **overrides})


def _latent_gaussian_update(prior, potential, factor, scale):
    count, total, total_outer = _mixture_statistics(potential, factor, scale)  # one component
    return reference.normal_wishart_update(prior.prior(), count[0], total[0], total_outer[0])


GMM = Family(
    key="gmm",
    sizes={"num_components": 2, "latent_dim": 2},
    prior=_gaussian_mixture,
    model=DeepLatentMixture,
    conjugate_update=_gaussian_mixture_update,
    standard_parameters=lambda q: {"concentration": q.concentration, **_normal_wishart_parameters(q.normal_wishart)},
    bad_arguments=(
        (dict(scale_inv=NOT_POSITIVE_DEFINITE), "GaussianMixture scale_inv must be symmetric positive definite"),
        (dict(scale_inv=NAN), "GaussianMixture scale_inv must be finite and symmetric"),
        (dict(df=0.5), "df must exceed D - 1 = 1"),
        (dict(kappa=0.0), "kappa must be positive"),
        (dict(concentration=0.0), "concentration must be positive"),
        (dict(concentration=INF), "GaussianMixture concentration must be finite"),
        (dict(loc=NAN), "GaussianMixture loc must be finite"),
        (dict(init_loc_range=INF), "GaussianMixture init_loc_range must be finite"),
    ),
    bad_naturals=(("concentration", "Dirichlet natural parameter of the mixture weights must stay positive"),),
)

TMM = Family(
    key="tmm",
    sizes={"num_components": 2, "latent_dim": 2},
    prior=_student_t_mixture,
    model=DeepLatentMixture,
    # the components are point estimates trained by Adam: only the weights take the natural step
    conjugate_update=lambda prior, potential, factor, scale: {
        "concentration": prior.prior_concentration + _mixture_statistics(potential, factor, scale)[0]
    },
    standard_parameters=lambda q: {"concentration": q.concentration},
    monte_carlo_bound=True,  # E_q[log St(x)] by sampling
    bad_arguments=(
        (dict(df=0.0), "StudentTMixture df must be positive"),
        (dict(df=INF), "StudentTMixture df must be finite"),
        (dict(df=2.0, learn_df=True), "the initial df must exceed 2"),
        (dict(init_scale=-1.0), "StudentTMixture init_scale must be positive"),
        (dict(init_scale=INF), "StudentTMixture init_scale must be finite"),
        (dict(num_samples=0), "StudentTMixture num_samples must be at least 1"),
        (dict(concentration=0.0), "concentration must be positive"),
        (dict(concentration=INF), "StudentTMixture concentration must be finite"),
        (dict(init_loc_range=NAN), "StudentTMixture init_loc_range must be finite"),
    ),
    bad_naturals=(("concentration", "Dirichlet natural parameter of the mixture weights must stay positive"),),
)

GAUSSIAN = Family(
    key="gaussian",
    sizes={"latent_dim": 2},
    prior=_latent_gaussian,
    model=DeepLatentPoints,
    conjugate_update=_latent_gaussian_update,
    standard_parameters=lambda q: _normal_wishart_parameters(q.normal_wishart),
    bad_arguments=(
        (dict(scale_inv=NOT_POSITIVE_DEFINITE), "LatentGaussian scale_inv must be symmetric positive definite"),
        (dict(scale_inv=INF), "LatentGaussian scale_inv must be finite and symmetric"),
        (dict(df=1.0), "df must exceed D - 1 = 1"),
        (dict(kappa=-1.0), "kappa must be positive"),
        (dict(loc=INF), "LatentGaussian loc must be finite"),
    ),
    # λ of a Normal-Wishart alone is not checked by global_posterior: it stays in its domain by construction
)


# ----- the sequence families ---------------------------------------------------------------


def _lds(**overrides):
    D = 2
    A = torch.randn(D + 1, D + 1)
    hyperparameters = dict(
        transition_loc=torch.cat([0.9 * torch.eye(D), 0.3 * torch.ones(D, 1)], -1),
        col_precision=A @ A.T / D + torch.eye(D + 1),
        init_loc=torch.randn(D),
    )
    return LinearDynamicalSystem(D, **{**hyperparameters, **overrides})


def _hmm(**overrides):
    K, D = 3, 2
    hyperparameters = dict(
        init_concentration=torch.rand(K) + 0.5,
        transition_concentration=torch.rand(K, K) + 0.5 + 3 * torch.eye(K),
        loc=torch.randn(K, D),
        kappa=torch.rand(K) + 0.5,
        scale_inv=random_spd((K,), D),
        df=D + 1.5,
        init_loc_range=2.0,
    )
    return LatentHMM(K, D, **{**hyperparameters, **overrides})


def _slds(**overrides):
    K, D = 3, 2
    hyperparameters = dict(
        init_concentration=torch.rand(K) + 0.5,
        transition_concentration=torch.rand(K, K) + 0.5 + 3 * torch.eye(K),
        init_loc=torch.randn(D),
        transition_loc=torch.cat([0.9 * torch.eye(D).expand(K, D, D), torch.randn(K, D, 1)], -1),
        col_precision=random_spd((K,), D + 1),
        scale_inv=random_spd((K,), D, 0.3),
        df=D + 1.5,
        init_transition_noise=0.3,
    )
    return SwitchingLDS(K, D, **{**hyperparameters, **overrides})


def _lengths_of(potential):
    B, T = potential.info_vec.shape[:2]
    return [T] * B if potential.lengths is None else potential.lengths.tolist()


def _lds_update(prior, potential, factor, scale):
    """Each sequence's smoothed pair moments by dense algebra, then Bayesian linear regression."""
    D = prior.latent_dim
    count, cross, input_outer, output_outer = 0.0, torch.zeros(D, D + 1), torch.zeros(D + 1, D + 1), torch.zeros(D, D)
    for b, L in enumerate(_lengths_of(potential)):
        h, J = potential.info_vec[b], potential.precision[b]
        _, mean, cov = reference.chain_joint(factor.init, factor.trans, L, h, J)
        for t in range(1, L):
            xu, uu, xx = reference.regression_stats(*reference.pair_moments(mean, cov, t))
            count, cross, input_outer, output_outer = count + 1, cross + xu, input_outer + uu, output_outer + xx
    totals = (scale * torch.tensor(float(count)), scale * cross, scale * input_outer, scale * output_outer)
    return reference.regression_update(prior.prior(), *totals)


def _hmm_update(prior, potential, factor, scale):
    """The exact expected statistics by enumerating the state paths, then the Dirichlet and Normal-Wishart updates."""
    exact = reference.hmm_paths(potential, factor, potential.lengths)
    return {
        "init_concentration": prior.prior_init_concentration + scale * exact["marg"][:, 0].sum(0),
        "transition_concentration": prior.prior_transition_concentration + scale * exact["pair"].sum((0, 1)),
        **reference.normal_wishart_update(
            prior.prior(), scale * exact["count"].sum(0), scale * exact["sum"].sum(0), scale * exact["outer"].sum(0)
        ),
    }


def _slds_update(prior, potential, factor, scale):
    """
    The mean field's ``q(z)`` marginals and, by dense algebra over its continuous block (the chain
    given the last sweep's ``q(z)``), the pair moments of ``q(x)``; then per-regime weighted regression.
    """
    post = prior.posterior(potential, factor)
    K, D = prior.num_states, prior.latent_dim
    r, chain = post.state_probs, post.continuous
    count, cross = torch.zeros(K), torch.zeros(K, D, D + 1)
    input_outer, output_outer = torch.zeros(K, D + 1, D + 1), torch.zeros(K, D, D)
    for b, L in enumerate(_lengths_of(potential)):
        _, mean, cov = reference.chain_joint(chain.init[(b,)], chain.trans[(b,)], L)
        for t in range(1, L):
            xu, uu, xx = reference.regression_stats(*reference.pair_moments(mean, cov, t))
            w = scale * r[b, t]
            count, cross = count + w, cross + w[:, None, None] * xu
            input_outer, output_outer = input_outer + w[:, None, None] * uu, output_outer + w[:, None, None] * xx
    return {
        "init_concentration": prior.prior_init_concentration + scale * r[:, 0].sum(0),
        "transition_concentration": prior.prior_transition_concentration + scale * post.transition_counts.sum(0),
        **reference.regression_update(prior.prior(), count, cross, input_outer, output_outer),
    }


def _matrix_normal_wishart_parameters(mnw):
    return {"col_precision": mnw.col_precision, "loc": mnw.loc, "scale_inv": mnw.scale_inv, "df": mnw.df}


def _chain_parameters(q):
    return {"init_concentration": q.init_concentration, "transition_concentration": q.transition_concentration}


_SEQUENCE_BAD_NATURALS = (
    ("init_concentration", "Dirichlet natural parameter of the initial distribution must stay positive"),
    ("transition_concentration", "Dirichlet natural parameter of the transition rows must stay positive"),
)

LDS = Family(
    key="lds",
    sizes={"latent_dim": 2},
    prior=_lds,
    model=DeepLatentSequence,
    conjugate_update=_lds_update,
    standard_parameters=lambda q: _matrix_normal_wishart_parameters(q.matrix_normal_wishart),
    bad_arguments=(
        (dict(init_precision=NOT_POSITIVE_DEFINITE), "init_precision must be symmetric positive definite"),
        (dict(col_precision=0.0), "LinearDynamicalSystem col_precision must be symmetric positive definite"),
        (dict(scale_inv=NAN), "LinearDynamicalSystem scale_inv must be finite and symmetric"),
        (dict(df=0.5), "df must exceed D - 1 = 1"),
        (dict(transition_loc=NAN), "LinearDynamicalSystem transition_loc must be finite"),
        (dict(init_loc=NAN), "LinearDynamicalSystem init_loc must be finite"),
    ),
    summaries=lambda post: {
        "marginal_means": (post.marginal_means(), True),
        "marginal_covariances": (post.marginal_covariances(), True),
        "log_normalizer": (post.log_normalizer, False),
    },
    counted_transitions=("df",),
)

HMM = Family(
    key="hmm",
    sizes={"num_states": 3, "latent_dim": 2},
    prior=_hmm,
    model=DeepLatentSequence,
    conjugate_update=_hmm_update,
    standard_parameters=lambda q: {**_chain_parameters(q), **_normal_wishart_parameters(q.normal_wishart)},
    bad_arguments=(
        (dict(transition_concentration=1.0 - torch.eye(3)), "concentrations of a LatentHMM must be positive"),
        (dict(init_concentration=INF), "LatentHMM init_concentration must be finite"),
        (dict(scale_inv=-1.0), "LatentHMM scale_inv must be symmetric positive definite"),
        (dict(kappa=0.0), "kappa must be positive"),
        (dict(df=NAN), "df must be finite"),
        (dict(loc=NAN), "LatentHMM loc must be finite"),
        (dict(init_loc_range=NAN), "LatentHMM init_loc_range must be finite"),
    ),
    bad_naturals=_SEQUENCE_BAD_NATURALS,
    summaries=lambda post: {
        "state_probs": (post.state_probs, True),
        "transition_counts": (post.transition_counts, False),
        "log_normalizer": (post.log_normalizer, False),
    },
    counted_transitions=("transition_concentration",),
)

SLDS = Family(
    key="slds",
    sizes={"num_states": 3, "latent_dim": 2},
    prior=_slds,
    model=DeepLatentSequence,
    conjugate_update=_slds_update,
    standard_parameters=lambda q: {
        **_chain_parameters(q), **_matrix_normal_wishart_parameters(q.matrix_normal_wishart)
    },
    bad_arguments=(
        (dict(transition_concentration=1.0 - torch.eye(3)), "concentrations of a SwitchingLDS must be positive"),
        (dict(transition_concentration=INF), "SwitchingLDS transition_concentration must be finite"),
        (dict(num_sweeps=0), "the mean field needs num_sweeps >= 1"),
        (dict(gradient="backprop"), r"gradient must be one of \('unrolled', 'implicit'\)"),
        (dict(col_precision=torch.eye(3) - 2.0), "SwitchingLDS col_precision must be symmetric positive definite"),
        (dict(init_loc=INF), "SwitchingLDS init_loc must be finite"),
        (dict(init_transition_noise=NAN), "SwitchingLDS init_transition_noise must be finite"),
    ),
    bad_naturals=_SEQUENCE_BAD_NATURALS,
    summaries=lambda post: {
        "state_probs": (post.state_probs, True),
        "marginal_means": (post.marginal_means(), True),
        "marginal_covariances": (post.marginal_covariances(), True),
        "transition_counts": (post.transition_counts, False),
        "sin_bound": (post.sin_bound(), False),
    },
    counted_transitions=("transition_concentration", "df"),
)

#: the conformance entries by the families' names in pyro_sin.pgm.FAMILIES
CONFORMANCE = {family.key: family for family in (GMM, TMM, GAUSSIAN, LDS, HMM, SLDS)}
