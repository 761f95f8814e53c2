r"""
The switching linear dynamical system and its structured mean-field inference network.

Model (``K`` regimes, latent dimension ``D``, sequences of ``T`` steps)::

    π ~ Dir(α₀),  P_j ~ Dir(β₀_j)  (row j of the transition matrix)
    Λ_k ~ W(W₀, ν₀),  B_k = [A_k b_k] | Λ_k ~ MN(M₀, Λ_k⁻¹, K₀⁻¹)
    z_1 ~ Cat(π),  z_t | z_{t-1} ~ Cat(P_{z_{t-1}})
    x_1 ~ N(μ₀, P₀⁻¹),  x_t | x_{t-1}, z_t ~ N(A_{z_t} x_{t-1} + b_{z_t}, Λ_{z_t}⁻¹)

The SIN target of one sequence, with per-step encoder potentials ``ψ_t`` and an SLDS
factor (chain weights ``a, A``, the initial Gaussian ``f_0`` and one Gaussian
``g_k(x_{t-1}, x_t)`` per regime; tied: the mean-field message
``exp E_q(θ)[log p(z, x | θ)]``, free: its own parameters), is

.. math:: \tilde p(z, x) = e^{a_{z_1} + \sum_{t\ge2} A_{z_{t-1} z_t}}\, f_0(x_1)
          \prod_{t\ge2} g_{z_t}(x_{t-1}, x_t) \prod_t \psi_t(x_t),

whose normaliser sums a Gaussian chain over each of the ``K^T`` paths: intractable.
The SIN posterior is the structured mean field ``q(z_{1:T}) q(x_{1:T})`` that
minimises ``KL(q ‖ p̃ / Z)``, found by block coordinate ascent, each block exact:

* ``q(x)``: a Gaussian chain whose factor on ``(x_{t-1}, x_t)`` has the natural
  parameters ``Σ_k q(z_t = k) g_k`` (Kalman smoothing, :class:`~pyro_sin.pgm.lds.ChainPosterior`);
* ``q(z)``: a Markov chain with per-step evidence ``e_{tk} = E_{q(x)}[log g_k(x_{t-1}, x_t)]``
  (forward-backward, :func:`~pyro_sin.ops.markov.forward_backward`).

A fixed number of sweeps starts from the factor's own chain marginals. Whatever the
number, ``q(z) q(x)`` is a distribution and the bound computed with it is a proper
ELBO, which Pyro's ``Trace_ELBO`` estimates on the same guide. Gradients pass
through the sweeps either unrolled or by implicit differentiation at the fixed point
(see :class:`SLDSPosterior`).

The classic model it contains, the autoregressive HMM (the HMM plus per-regime regressions), is
its start: :meth:`SwitchingLDS.encoded_start` fits one by EM to the encoded frames
(:mod:`pyro_sin.pgm.classic_regimes`).
"""

import functools
from typing import Callable, NamedTuple, Optional

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
from pyro.ops.gaussian import Gaussian
from pyro.ops.indexing import Vindex
from pyro.ops.tensor_utils import precision_to_scale_tril

from ..distributions import (
    MarkovChain,
    MatrixNormalWishart,
    RegressionStats,
    expected_regression_log_likelihood,
    regression_conjugate_update,
)
from ..initialization import encode
from ..ops.markov import forward_backward, markov_log_normalizer
from ..potential import GaussianPotential
from .base import SINRecord
from .classic_regimes import AutoregressiveHMM, GaussianHMM, chain_counts
from .lds import (
    AffineGaussianDynamics,
    ChainFactor,
    ChainPosterior,
    gaussian_expectation,
    pair_regression_stats,
    point_expectations,
    regression_factor,
)
from .regimes import RegimeGlobalPosterior, RegimeMarginals, RegimeSwitchingPrior
from .sequence import PosteriorDistribution, SequenceDistribution, after_end_to_zero, last_step, sum_transitions

#: how gradients pass through the mean-field sweeps
GRADIENT_MODES = ("unrolled", "implicit")


def _check_mean_field(num_sweeps: int, gradient: str):
    if num_sweeps < 1:
        raise ValueError(f"the mean field needs num_sweeps >= 1, got {num_sweeps}")
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")


class SLDSParams(NamedTuple):
    """Sampled global parameters of a switching LDS."""

    init_probs: torch.Tensor  # (..., K)             π
    transition_probs: torch.Tensor  # (..., K, K)    P, rows indexed by the previous regime
    transitions: torch.Tensor  # (..., K, D, D + 1)  B_k = [A_k b_k]
    noise_precisions: torch.Tensor  # (..., K, D, D) Λ_k


class SLDSFactor(NamedTuple):
    """An SLDS factor: log weights of the regime chain, the initial Gaussian and one pair Gaussian per regime."""

    init_logits: torch.Tensor  # (K,)             a
    transition_logits: torch.Tensor  # (K, K)     A
    init: Gaussian  # dim D                        f_0(x_1)
    dynamics: Gaussian  # batch (K,), dim 2D       g_k(x_{t-1}, x_t)


class SLDSGlobalPosterior(RegimeGlobalPosterior):
    """``q(π) Π_j q(P_j) Π_k q(B_k, Λ_k)``: Dirichlets and Matrix-Normal-Wisharts, with their expectations."""

    @property
    def matrix_normal_wishart(self) -> MatrixNormalWishart:
        return self.regimes  # batch (K,)


def mix_gaussians(weights: torch.Tensor, gaussians: Gaussian) -> Gaussian:
    r"""
    ``Σ_k w_k g_k`` in information form (natural parameters add), for weights of shape
    ``(..., K)`` and ``K`` unnormalised Gaussians ``g`` (batch ``(K,)``): batch ``(...)``.
    """
    return Gaussian(
        weights @ gaussians.log_normalizer,
        weights @ gaussians.info_vec,
        torch.einsum("...k,kij->...ij", weights, gaussians.precision),
    )


def expected_log_factors(gaussians: Gaussian, mean: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    r"""
    ``E[log g_k(v)]`` for ``K`` unnormalised Gaussians (batch ``(K,)``) under moments
    ``E[v]`` (``(..., n)``) and ``E[v vᵀ]`` (``(..., n, n)``): shape ``(..., K)``.
    """
    return (
        gaussians.log_normalizer
        + mean @ gaussians.info_vec.transpose(-1, -2)
        - 0.5 * torch.einsum("...ij,kij->...k", second, gaussians.precision)
    )


def implicit_fixed_point(update: Callable, state: torch.Tensor, adjoint_iterations: int) -> torch.Tensor:
    r"""
    ``update(state)`` at an (approximate) fixed point ``s* = F(s*, φ)``, differentiated
    implicitly: its gradient to ``φ`` is ``(∂F/∂φ)ᵀ (I - ∂F/∂s)⁻ᵀ ḡ``, with the inverse
    applied by ``adjoint_iterations`` terms of its Neumann series (the adjoint of the
    forward iteration, converging at the same rate). No graph of earlier sweeps is kept.

    :param callable update: ``F(s)``, closing over the parameters ``φ``.
    :param torch.Tensor state: the last iterate (its graph is dropped).
    """
    start = state.detach().requires_grad_()
    with torch.enable_grad():
        result = update(start)
    if result.requires_grad and adjoint_iterations > 0:

        solving = []  # the hook also sees the vector-Jacobian products it starts itself

        def adjoint(grad):
            if solving:
                return grad
            # solve g = ḡ + (∂F/∂s)ᵀ g by fixed-point iteration
            solving.append(True)
            try:
                g = grad
                for _ in range(adjoint_iterations):
                    (back,) = torch.autograd.grad(result, start, g, retain_graph=True, allow_unused=True)
                    g = grad if back is None else grad + back
            finally:
                solving.clear()
            return g

        result.register_hook(adjoint)
    return result


class SLDSPosterior(RegimeMarginals):
    r"""
    The structured mean-field SIN posterior ``q(z_{1:T}) q(x_{1:T})`` of a batch of sequences.

    Gradients to the potentials and to a free factor pass through the sweeps either
    ``"unrolled"`` (back-propagation through every sweep: the exact gradient of the bound
    that is computed, memory growing with the sweeps) or ``"implicit"`` (the fixed-point
    equation ``r = F(r)`` of the regime marginals differentiated at the last iterate, the
    adjoint solved by as many Neumann terms as sweeps: the gradient of the converged
    mean field, memory of one sweep). Both give the same values. Unrolled is the default:
    measured against 200 sweeps (``benchmarks/slds_scaling.py gradients``), the implicit
    gradient is the more accurate once the sweeps have converged (about 10 for
    well-separated regimes) but its Neumann series diverges before that, while the
    unrolled one is always exact for the bound at hand (see the mathematics page).

    :param GaussianPotential potential: per-step potentials, shape ``(..., T, D)``; a zero
        precision marks a step without evidence, ``potential.lengths`` the end of each
        padded sequence (steps after it do not exist).
    :param SLDSFactor factor: the SIN's SLDS factor.
    :param int num_sweeps: coordinate-ascent sweeps (each solves ``q(x)`` then ``q(z)``).
    :param str gradient: ``"unrolled"`` or ``"implicit"``.
    :param int adjoint_iterations: Neumann terms of the implicit gradient (default ``num_sweeps``).
    :param bool parallel: Kalman filtering and forward-backward by parallel scans.
    """

    def __init__(
        self,
        potential: GaussianPotential,
        factor: SLDSFactor,
        num_sweeps: int = 10,
        gradient: str = "unrolled",
        adjoint_iterations: Optional[int] = None,
        parallel: bool = True,
    ):
        _check_mean_field(num_sweeps, gradient)
        self.potential, self.factor, self.parallel = potential, factor, parallel
        self.num_steps, self.dim = potential.info_vec.shape[-2:]
        self.num_states = factor.init_logits.shape[-1]
        self.lengths = potential.lengths
        self.num_sweeps, self.gradient = num_sweeps, gradient
        self.adjoint_iterations = num_sweeps if adjoint_iterations is None else adjoint_iterations
        #: ``q(x_{1:T})``, a :class:`~pyro_sin.pgm.lds.ChainPosterior`;
        #: ``q(z_{1:T})``, a :class:`~pyro_sin.distributions.MarkovChain` with event shape ``(T,)``
        self.continuous, self.states = self._mean_field()

    # ----- the two blocks -----------------------------------------------------------

    def continuous_block(self, state_probs: torch.Tensor) -> ChainPosterior:
        """``q(x)`` given ``q(z_t)`` (shape ``(..., T, K)``): the chain with factors ``Σ_k q(z_t = k) g_k``."""
        trans = mix_gaussians(state_probs[..., 1:, :], self.factor.dynamics)
        return ChainPosterior(self.potential, ChainFactor(self.factor.init, trans), self.parallel)

    def regime_evidence(self, continuous: ChainPosterior) -> torch.Tensor:
        """``e_{tk} = E_{q(x)}[log g_k(x_{t-1}, x_t)]`` (zero at ``t = 1``), shape ``(..., T, K)``."""
        m = continuous.moments
        pair = expected_log_factors(self.factor.dynamics, m.pair_mean, m.pair_second)  # (..., T-1, K)
        first = pair.new_zeros(pair.shape[:-2] + (1, self.num_states))
        return torch.cat([first.expand(m.init_mean.shape[:-1] + first.shape[-2:]), pair], -2)

    def discrete_block(self, continuous: ChainPosterior) -> MarkovChain:
        """``q(z)`` given ``q(x)``: the factor's chain with the evidence :meth:`regime_evidence`."""
        f = self.factor
        return MarkovChain(
            f.init_logits,
            f.transition_logits[..., None, :, :],
            self.num_steps,
            self.regime_evidence(continuous),
            self.lengths,
            self.parallel,
            validate_args=False,
        )

    def _sweep(self, state_probs: torch.Tensor) -> torch.Tensor:
        return self.discrete_block(self.continuous_block(state_probs)).marginals.marginals

    def _initial_state_probs(self) -> torch.Tensor:
        """The factor's chain marginals without evidence, ``(..., T, K)``."""
        f, h = self.factor, self.potential.info_vec
        evidence = h.new_zeros(h.shape[:-1] + (self.num_states,))
        return forward_backward(
            f.init_logits, f.transition_logits[..., None, :, :], evidence, self.lengths, self.parallel
        ).marginals

    def _mean_field(self):
        probs = self._initial_state_probs()
        sweeps = self.num_sweeps - 1  # the last sweep builds the returned blocks
        if self.gradient == "implicit" and sweeps > 0 and torch.is_grad_enabled():
            with torch.no_grad():
                for _ in range(sweeps - 1):
                    probs = self._sweep(probs)
            probs = implicit_fixed_point(self._sweep, probs, self.adjoint_iterations)
        else:
            for _ in range(sweeps):
                probs = self._sweep(probs)
        continuous = self.continuous_block(probs)
        return continuous, self.discrete_block(continuous)

    # ----- marginals and statistics ----------------------------------------------------

    def marginal_means(self) -> torch.Tensor:
        """``E_q[x_t]``, shape ``(..., T, D)``."""
        return self.continuous.marginal_means()

    def marginal_covariances(self) -> torch.Tensor:
        """``Cov_q[x_t]``, shape ``(..., T, D, D)``."""
        return self.continuous.marginal_covariances()

    def entropy(self) -> torch.Tensor:
        """``H[q(z) q(x)] = H[q(z)] + H[q(x)]``, shape ``(...)``."""
        return self.states.entropy() + self.continuous.entropy()

    def sin_bound(self) -> torch.Tensor:
        r"""
        The mean-field lower bound on the log normaliser of the SIN target,
        ``E_q[log p̃(z, x)] + H[q] ≤ log Z`` (the quantity the sweeps increase), shape ``(...)``:

        .. math:: \log Z_{q(z)} + E_{q(x)}\Big[\log f_0(x_1) + \sum_t \log\psi_t(x_t)\Big] + H[q(x)],

        since ``q(z)`` holds the evidence ``e_{tk}`` of the current ``q(x)``.
        """
        x = self.continuous
        m = x.moments
        mean = x.marginal_means()  # zeros after a sequence's end, as are the variances
        variance = x.marginal_covariances().diagonal(dim1=-2, dim2=-1)
        h, J = self.potential.info_vec, self.potential.precision
        evidence = (h * mean).sum(-1) - 0.5 * (J * (variance + mean.square())).sum(-1)  # (..., T)
        init = gaussian_expectation(self.factor.init, m.init_mean, m.init_second)
        return self.states.marginals.log_normalizer + init + evidence.sum(-1) + x.entropy()

    def regression_stats(self) -> RegressionStats:
        r"""
        Per-sequence, per-regime transition statistics
        ``Σ_t q(z_t = k) E_q[(x_t uᵀ, u uᵀ, x_t x_tᵀ)]``, ``u = (x_{t-1}, 1)``, batch ``(..., K)``
        (computed once: the bound and the natural target both read them).
        """
        return self._regression_stats

    @functools.cached_property
    def _regression_stats(self) -> RegressionStats:
        m = self.continuous.moments
        weights = self.state_probs[..., 1:, :]  # (..., T-1, K), zero after the end
        return pair_regression_stats(
            weights.sum(-2),
            torch.einsum("...tk,...ti->...ki", weights, m.pair_mean),
            torch.einsum("...tk,...tij->...kij", weights, m.pair_second),
        )

    # ----- sampling and densities --------------------------------------------------------

    def sample_states(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact joint draws of the regime paths from ``q(z)``, shape ``sample_shape + (..., T)``."""
        return self.states.sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Reparameterised draws of ``x_{1:T}`` from ``q(x)``, shape ``sample_shape + (..., T, D)``."""
        return self.continuous.rsample(sample_shape)

    def log_prob(self, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log q(z) + log q(x)`` of the steps up to each sequence's end."""
        return self.states.log_prob(states) + self.continuous.log_prob(x)


class SwitchingGaussianChain(SequenceDistribution):
    r"""
    ``p(x_{1:T} | z_{1:T}, θ)``: a Gaussian chain whose dynamics change from step to step,

    .. math:: x_1 \sim N(\mu_0, P_0^{-1}),\quad x_t \sim N(B_t (x_{t-1}, 1), \Lambda_t^{-1}),

    with event shape ``(T, D)``; steps after a sequence's end hold zeros and do not count.

    :param torch.Tensor init_loc: ``μ₀``, shape ``(..., D)``.
    :param torch.Tensor init_precision: ``P₀``, shape ``(..., D, D)``.
    :param torch.Tensor transitions: ``B_t = [A_t b_t]`` for ``t = 2..T``, shape ``(..., T-1, D, D+1)``.
    :param torch.Tensor noise_precisions: ``Λ_t``, shape ``(..., T-1, D, D)``.
    :param torch.Tensor lengths: optional, integers in ``[1, T]``, shape ``(...)``.
    """

    def __init__(self, init_loc, init_precision, transitions, noise_precisions, lengths=None, validate_args=None):
        D = init_loc.shape[-1]
        T = transitions.shape[-3] + 1
        batch_shape = torch.broadcast_shapes(
            init_loc.shape[:-1], init_precision.shape[:-2], transitions.shape[:-3], noise_precisions.shape[:-3]
        )
        if lengths is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, lengths.shape)
        self.init_loc, self.init_precision = init_loc, init_precision
        self.transitions, self.noise_precisions, self.lengths = transitions, noise_precisions, lengths
        super().__init__(batch_shape, torch.Size((T, D)), validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        D = self.event_shape[-1]
        init = dist.MultivariateNormal(self.init_loc, precision_matrix=self.init_precision, validate_args=False)
        x = init.rsample(sample_shape).expand(shape + (D,))
        A, b = self.transitions[..., :D], self.transitions[..., D]
        scale_tril = precision_to_scale_tril(self.noise_precisions)
        noise = torch.randn(shape + (self.event_shape[0] - 1, D, 1), dtype=x.dtype, device=x.device)
        steps = [x]
        for t in range(self.event_shape[0] - 1):
            x = (A[..., t, :, :] @ x[..., None] + scale_tril[..., t, :, :] @ noise[..., t, :, :])[..., 0] + b[..., t, :]
            steps.append(x)
        return after_end_to_zero(torch.stack(steps, -2), self.step_mask, 1)

    def log_prob(self, value):
        D = self.event_shape[-1]
        init = dist.MultivariateNormal(self.init_loc, precision_matrix=self.init_precision, validate_args=False)
        result = init.log_prob(value[..., 0, :])
        if self.event_shape[0] > 1:
            loc = (self.transitions[..., :D] @ value[..., :-1, :, None])[..., 0] + self.transitions[..., D]
            steps = dist.MultivariateNormal(loc, precision_matrix=self.noise_precisions, validate_args=False)
            result = result + sum_transitions(steps.log_prob(value[..., 1:, :]), self.step_mask)
        return result


class SwitchingLDS(AffineGaussianDynamics, RegimeSwitchingPrior):
    r"""
    A switching linear dynamical system prior on latent sequences: ``K`` regimes following
    a Markov chain with Dirichlet priors on the initial distribution and on each row of
    the transition matrix, each regime with its own affine dynamics and noise under a
    Matrix-Normal-Wishart prior, and a fixed initial state distribution.

    Model-side use inside a Pyro program (or through :class:`~pyro_sin.models.DeepLatentSequence`,
    which calls the same methods)::

        params = slds.sample_params()          # sites x_init_probs, x_transition_probs,
                                               #       x_noise_precisions, x_transitions
        with pyro.plate("sequences", N, subsample=idx):
            x = slds.sample_latent(params, T)  # sites x_states (event (T,)), x (event (T, D))

    The regimes of a sequence are one site whose value is the whole path (a
    :class:`~pyro_sin.distributions.MarkovChain`), so the model and the SIN emit ordinary
    sites: Pyro's ``Trace_ELBO`` estimates the same bound as :class:`~pyro_sin.SINELBO`
    and ``Predictive`` samples the model. Padded sequences: see :class:`~pyro_sin.pgm.sequence.SequencePrior`.

    The SIN posterior is a structured mean field ``q(z) q(x)`` (:class:`SLDSPosterior`); the
    guide's draw of ``x`` does not depend on its draw of ``z``, so SINELBO adds no
    score-function term for the regimes (:attr:`decoupled_sites`), and its default
    ``decoder_estimator="sample"`` is the one to use (``"enumerate"`` would list ``K^T`` paths
    for nothing).

    :param int num_states: ``K``.
    :param int latent_dim: ``D``.
    :param str name: name of the latent site ``x``.
    :param init_concentration: ``α₀``, a scalar or shape ``(K,)`` (default 1).
    :param transition_concentration: ``β₀``, a scalar or shape ``(K, K)`` (default 1; a larger
        diagonal makes the chain sticky).
    :param init_loc: ``μ₀`` (default 0).
    :param init_precision: ``P₀`` (default ``I``).
    :param transition_loc: ``M₀ = [A₀ b₀]``, shape ``(D, D + 1)`` or ``(K, D, D + 1)`` (default ``[I 0]``).
    :param col_precision: ``K₀``, shape ``(D + 1, D + 1)`` or per regime (default ``I``).
    :param scale_inv: ``W₀⁻¹``, per regime or shared (default ``0.1 (D + 2) I``: noise std ≈ 0.3).
    :param df: ``ν₀`` (default ``D + 2``).
    :param float init_transition_noise: the initial posterior means of the regimes' dynamics are
        ``M₀`` plus this much standard normal noise, so that the regimes start apart.
    :param int num_sweeps: mean-field sweeps of the SIN (see :class:`SLDSPosterior`).
    :param str gradient: ``"unrolled"`` (default) or ``"implicit"`` (see :class:`SLDSPosterior`).
    :param int adjoint_iterations: Neumann terms of the implicit gradient (default ``num_sweeps``;
        0 differentiates the last sweep alone).
    :param bool parallel: Kalman filtering and forward-backward by parallel scans over time.
    """

    params_type = SLDSParams
    posterior_type = SLDSGlobalPosterior
    regime_site_suffixes = ("noise_precisions", "transitions")

    def __init__(
        self,
        num_states: int,
        latent_dim: int,
        name: str = "x",
        *,
        init_concentration=1.0,
        transition_concentration=1.0,
        init_loc=0.0,
        init_precision=None,
        transition_loc=None,
        col_precision=None,
        scale_inv=None,
        df=None,
        init_transition_noise: float = 0.3,
        num_sweeps: int = 10,
        gradient: str = "unrolled",
        adjoint_iterations: Optional[int] = None,
        parallel: bool = True,
    ):
        super().__init__(name, num_states=num_states, latent_dim=latent_dim)
        _check_mean_field(num_sweeps, gradient)
        self.init_transition_noise = self._finite(init_transition_noise, "SwitchingLDS init_transition_noise")
        self.parallel = parallel
        self.num_sweeps, self.gradient, self.adjoint_iterations = num_sweeps, gradient, adjoint_iterations
        self._register_chain_prior(init_concentration, transition_concentration)
        self._register_dynamics((num_states,), init_loc, init_precision, transition_loc, col_precision, scale_inv, df)

    # ----- site names -----------------------------------------------------------

    @property
    def decoupled_sites(self):
        return (self.states_site,)

    # ----- model side -------------------------------------------------------------

    def dynamics(self, params: SLDSParams, states: torch.Tensor, lengths=None) -> SwitchingGaussianChain:
        """``p(x_{1:T} | z_{1:T}, θ)`` for regime paths ``states`` of shape ``(..., T)``."""
        # a time dimension, so that the parameters' batch dimensions align with the paths'
        transitions = Vindex(params.transitions[..., None, :, :, :])[..., states[..., 1:], :, :]
        noise_precisions = Vindex(params.noise_precisions[..., None, :, :, :])[..., states[..., 1:], :, :]
        return SwitchingGaussianChain(self.init_loc, self.init_precision, transitions, noise_precisions, lengths)

    def _sample_latent(self, params: SLDSParams, num_steps: int, lengths=None) -> torch.Tensor:
        states = pyro.sample(self.states_site, self.states_prior(params, num_steps, lengths))
        return pyro.sample(self.name, self.dynamics(params, states, lengths))

    def regime_log_likelihoods(self, params: SLDSParams, x: torch.Tensor) -> torch.Tensor:
        """``log N(x_t; A_k x_{t-1} + b_k, Λ_k⁻¹)`` for ``t = 2..T``, shape ``(..., T-1, K)``."""
        g = regression_factor(point_expectations(params.transitions, params.noise_precisions))  # batch (..., K)
        g = Gaussian(g.log_normalizer[..., None, :], g.info_vec[..., None, :, :], g.precision[..., None, :, :, :])
        pairs = torch.cat([x[..., :-1, :], x[..., 1:, :]], -1)
        return g.log_density(pairs[..., None, :])

    def latent_log_prob(self, params: SLDSParams, x: torch.Tensor, lengths=None) -> torch.Tensor:
        r"""
        ``log p(x_{1:T} | θ) = log Σ_z p(z | θ) p(x | z, θ)``, exactly, by the forward algorithm over
        the regimes with evidence :meth:`regime_log_likelihoods`; shape ``(...)``.
        """
        pair = self.regime_log_likelihoods(params, x)
        evidence = torch.cat([pair.new_zeros(pair.shape[:-2] + (1,) + pair.shape[-1:]), pair], -2)
        init = dist.MultivariateNormal(self.init_loc, precision_matrix=self.init_precision, validate_args=False)
        return init.log_prob(x[..., 0, :]) + markov_log_normalizer(
            params.init_probs.log(),
            params.transition_probs.log()[..., None, :, :],
            evidence,
            lengths,
            self.parallel,
        )

    def rollout(self, params: SLDSParams, states: torch.Tensor, x: torch.Tensor, horizon: int):
        r"""
        Continues paths from the regime ``z_T`` (``states``, shape ``(...)``) and the state
        ``x_T`` (shape ``(..., D)``): ``z_{t+1} ~ P_{z_t}``, ``x_{t+1} ~ N(A_{z_{t+1}} x_t + b_{z_{t+1}}, Λ⁻¹)``
        for ``horizon`` steps, with parameters whose batch dimensions broadcast with ``(...)``.

        :returns: ``(states, x)`` of shapes ``(..., horizon)`` and ``(..., horizon, D)``.
        """
        D = self.latent_dim
        scale_tril = precision_to_scale_tril(params.noise_precisions)
        future_states, future_x = [], []
        for _ in range(horizon):
            probs = Vindex(params.transition_probs)[..., states, :]
            states = dist.Categorical(probs=probs, validate_args=False).sample()
            transition = Vindex(params.transitions)[..., states, :, :]
            noise = Vindex(scale_tril)[..., states, :, :] @ torch.randn_like(x)[..., None]
            x = (transition[..., :D] @ x[..., None] + noise)[..., 0] + transition[..., D]
            future_states.append(states)
            future_x.append(x)
        return torch.stack(future_states, -1), torch.stack(future_x, -2)

    def continue_paths(
        self, params: SLDSParams, posterior: SLDSPosterior, horizon: int, sample_shape=torch.Size(), lengths=None
    ):
        r"""
        Samples of the regimes and states of the ``horizon`` steps after each sequence's end:
        ``z_T ~ q(z_T)`` and ``x_T ~ q(x_T)`` (independent under the mean field) from the SIN
        posterior of the observed steps, then :meth:`rollout` with ``θ`` (a point estimate, or
        draws whose batch dimensions broadcast with ``sample_shape + batch``).

        :param lengths: the sequences' own ends, shape ``batch`` (default: the posterior's).
        :returns: ``(states, x)`` of shapes ``sample_shape + batch + (horizon,)`` and ``+ (horizon, D)``.
        """
        sample_shape = torch.Size(sample_shape)
        lengths = posterior.lengths if lengths is None else lengths
        x_last = last_step(posterior.rsample(sample_shape), lengths)  # (S..., B..., D)
        probs_last = last_step(posterior.state_probs, lengths)  # (B..., K)
        states = dist.Categorical(probs=probs_last, validate_args=False).sample(sample_shape)
        return self.rollout(params, states, x_last, horizon)

    def sample_posterior_params(self, q: SLDSGlobalPosterior, sample_shape=torch.Size()) -> SLDSParams:
        """Draws ``θ ~ q(θ)``: parameters of batch ``sample_shape``."""
        sample_shape = torch.Size(sample_shape)
        init_probs = dist.Dirichlet(q.init_concentration).sample(sample_shape)  # (S..., K)
        transition_probs = dist.Dirichlet(q.transition_concentration).sample(sample_shape)  # (S..., K, K)
        # (S..., K, D, D+1), (S..., K, D, D)
        transitions, noise_precisions = q.matrix_normal_wishart.rsample(sample_shape)
        return SLDSParams(init_probs, transition_probs, transitions, noise_precisions)

    # ----- prediction and evaluation (the interface of SequencePrior) ---------------------

    def proposal(self, posterior: SLDSPosterior) -> PosteriorDistribution:
        r"""
        The continuous block ``q(x_{1:T})`` of the mean field as a distribution over ``x_{1:T}``
        (an importance-sampling proposal: :meth:`latent_log_prob` sums the regimes out exactly).
        """
        return PosteriorDistribution(posterior.continuous, validate_args=False)

    def forecast(
        self, q: SLDSGlobalPosterior, posterior: SLDSPosterior, horizon: int, num_samples: int, lengths=None
    ) -> torch.Tensor:
        r"""
        Draws of ``x_{T+1..T+H}`` for sequences of batch ``(B,)``: ``θ ~ q(θ)``, ``z_T ~ q(z_T)``,
        ``x_T ~ q(x_T)``, then the regime chain and each regime's dynamics with process noise
        (:meth:`continue_paths`).

        :returns: shape ``(num_samples, B, horizon, D)``.
        """
        params = self.sample_posterior_params(q, (num_samples,))
        batch_dims = posterior.state_probs.dim() - 2
        # one θ per sample, shared by the sequences of the batch
        params = SLDSParams(*(p.reshape(p.shape[:1] + (1,) * batch_dims + p.shape[1:]) for p in params))
        return self.continue_paths(params, posterior, horizon, (num_samples,), lengths)[1]

    # ----- conjugate posterior over θ -----------------------------------------------

    def init_natural(self):
        prior = self.prior()
        loc = prior.loc + self.init_transition_noise * torch.randn_like(prior.loc)
        start = MatrixNormalWishart(loc, prior.col_precision, prior.scale_inv, prior.df, validate_args=False)
        return self._pack(self.prior_init_concentration, self.prior_transition_concentration, start.natural_params)

    @torch.no_grad()
    def encoded_start(self, encoder, data, generator=None, iterations: int = 100):
        r"""
        The classic start: the HMM plus per-regime regressions. An
        :class:`~pyro_sin.pgm.classic_regimes.AutoregressiveHMM` (each regime a linear regression
        of ``x_t`` on ``x_{t-1}``) is fitted by EM to the encoded training sequences ``data`` (the
        means of the encoder's potentials) twice, started from a
        :class:`~pyro_sin.pgm.classic_regimes.GaussianHMM`'s states and from k-means on the steps
        ``x_t - x_{t-1}`` (regimes that differ in their motion, not in where they are); the fit
        with the higher likelihood gives ``q(θ)`` (:meth:`natural_from_classic`).

        :param torch.Generator generator: the random stream of the k-means starts.
        :param int iterations: the most EM iterations of each fit.
        """
        potential = encode(encoder, data)
        frames, lengths = potential.mean, potential.lengths
        K = self.num_states
        located = GaussianHMM(K, iterations=iterations).fit(frames, lengths, generator=generator)
        fits = [
            AutoregressiveHMM(K, iterations=iterations).fit(
                frames, lengths, state_probs=located.state_probs(frames, lengths)
            ),
            AutoregressiveHMM(K, iterations=iterations).fit(frames, lengths, generator=generator),
        ]
        best = max(fits, key=lambda fit: fit.history[-1])
        return self.natural_from_classic(best, frames, lengths)

    @torch.no_grad()
    def natural_from_classic(self, classic: AutoregressiveHMM, frames: torch.Tensor, lengths=None):
        r"""
        ``λ`` of ``q(θ)`` after observing ``frames`` ``(N, T, D)`` with the regimes distributed as
        the fitted ``classic`` model says: the prior plus its expected first regimes and transition
        counts (the Dirichlets) and its regime-weighted regression statistics (the
        Matrix-Normal-Wisharts). With many frames ``E[B_k]`` and ``E[Λ_k]⁻¹`` are the classic fit's.
        """
        marginals = classic.posterior(frames, lengths)
        counts = chain_counts(marginals)
        regimes = regression_conjugate_update(
            self.prior().natural_params, classic.regression_stats(frames, marginals.marginals)
        )
        return self._pack(
            self.prior_init_concentration + counts.first,
            self.prior_transition_concentration + counts.transitions,
            regimes,
        )

    # ----- SIN factor and posterior ---------------------------------------------------

    def tied_factor(self, q: SLDSGlobalPosterior) -> SLDSFactor:
        return SLDSFactor(
            q.expected_log_init, q.expected_log_transition, self.init_factor(), regression_factor(q.expectations)
        )

    def init_free_factor(self, natural):
        q = self.global_posterior(natural)
        return {
            "init_logits": (q.expected_log_init, constraints.real),
            "transition_logits": (q.expected_log_transition, constraints.real),
            "transitions": (q.matrix_normal_wishart.loc, constraints.real),
            "noise_precision_tril": (torch.linalg.cholesky(q.expectations.precision), constraints.lower_cholesky),
        }

    def dynamics_factor(self, params: SLDSParams) -> SLDSFactor:
        """The factor ``log p(z, x | θ)`` of point parameters (a free factor's form)."""
        return SLDSFactor(
            params.init_probs.log(),
            params.transition_probs.log(),
            self.init_factor(),
            regression_factor(point_expectations(params.transitions, params.noise_precisions)),
        )

    def free_factor(self, params) -> SLDSFactor:
        tril = params["noise_precision_tril"]
        return self.dynamics_factor(
            SLDSParams(
                torch.softmax(params["init_logits"], -1),
                torch.softmax(params["transition_logits"], -1),
                params["transitions"],
                tril @ tril.transpose(-1, -2),
            )
        )

    def posterior(self, potential: GaussianPotential, factor: SLDSFactor) -> SLDSPosterior:
        self.check_potential(potential)
        return SLDSPosterior(
            potential, factor, self.num_sweeps, self.gradient, self.adjoint_iterations, self.parallel
        )

    def sample_local_posterior(self, record: SINRecord) -> torch.Tensor:
        post = record.posterior
        pyro.sample(self.states_site, post.states)
        return pyro.sample(
            self.name, PosteriorDistribution(post.continuous, validate_args=False), infer={"sin": record}
        )

    # ----- closed-form bound and natural-gradient target ---------------------------------

    def expected_log_prior(self, q: SLDSGlobalPosterior, posterior: SLDSPosterior) -> torch.Tensor:
        r"""
        .. math:: \sum_k q(z_1{=}k) E[\log\pi_k] + \sum_{jk} \bar n_{jk} E[\log P_{jk}]
                  + E[\log N(x_1; \mu_0, P_0^{-1})]
                  + \sum_{t\ge2}\sum_k q(z_t{=}k)\, E[\log N(x_t; A_k x_{t-1} + b_k, \Lambda_k^{-1})]
        """
        m = posterior.continuous.moments
        result = self.expected_log_chain_prior(q, posterior) + gaussian_expectation(
            self.init_factor(), m.init_mean, m.init_second
        )
        if posterior.num_steps > 1:
            result = result + expected_regression_log_likelihood(q.expectations, posterior.regression_stats()).sum(-1)
        return result

    def natural_target(self, posterior: SLDSPosterior, scale: float):
        return self._pack(
            *self.chain_natural_target(posterior, scale), self._dynamics_target(posterior.regression_stats(), scale)
        )
