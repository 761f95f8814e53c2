r"""
The latent linear dynamical system and its structured inference network.

Model (latent dimension ``D``, sequences of ``T`` steps)::

    Λ ~ W(W₀, ν₀),  B = [A b] | Λ ~ MN(M₀, Λ⁻¹, K₀⁻¹)
    x_1 ~ N(μ₀, P₀⁻¹),  x_t | x_{t-1} ~ N(A x_{t-1} + b, Λ⁻¹)

SIN posterior of one sequence with per-step encoder potentials ``ψ_t(x_t)`` and
an LDS factor ``f(x) = f_1(x_1) Π_t f_t(x_{t-1}, x_t)`` (tied: the mean-field
message ``exp E_q(θ)[log p(x | θ)]``; free: an LDS with its own parameters):

.. math:: q(x_{1:T}) = \frac1Z\,\psi_1(x_1) f_1(x_1)\prod_{t\ge2}\psi_t(x_t) f_t(x_{t-1}, x_t),

a Gaussian chain. ``log Z`` comes from Kalman filtering in information form — by
Pyro's parallel scan (``pyro.ops.gaussian.sequential_gaussian_tensordot``, depth
``O(log T)``) or sequentially — reparameterised joint samples from parallel-scan
forward filtering and backward sampling, and the smoothed moments
``E[x_t]``, ``E[x_t x_tᵀ]``, ``E[x_{t-1} x_tᵀ]`` from the gradient of ``log Z``
with respect to the chain's natural parameters.

Predictions are closed-form under the posterior-mean dynamics: the Kalman smoother's marginals
for imputation and the Kalman predictive moments for forecasts
(:meth:`LinearDynamicalSystem.smoothed_marginals`, :meth:`LinearDynamicalSystem.forecast_marginals`).
"""

import functools
import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.distributions import constraints
from torch.nn.functional import pad

import pyro
import pyro.distributions as dist
from pyro.ops.gaussian import (
    Gaussian,
    gaussian_tensordot,
    sequential_gaussian_filter_sample,
    sequential_gaussian_tensordot,
)

from ...distributions import (
    GaussianChain,
    MatrixNormalWishart,
    MatrixNormalWishartBlock,
    MatrixNormalWishartExpectations,
    MatrixNormalWishartNatural,
    NaturalDomain,
    RegressionStats,
    expected_regression_log_likelihood,
    regression_conjugate_update,
    spd_matrix,
)
from ...potential import GaussianPotential
from ..base import SINRecord
from ..sequence import (
    LatentMarginals,
    PosteriorDistribution,
    SequencePrior,
    StepOfDrawnPath,
    after_end_to_zero,
    broadcast_to_plates,
    check_unrolled_steps,
    last_step,
    step_mask,
    sum_transitions,
)

_LOG_2PI = math.log(2 * math.pi)


class LDSParams(NamedTuple):
    """Sampled dynamics: ``B = [A b]`` and the noise precision ``Λ``."""

    transition: torch.Tensor  # (..., D, D + 1)
    noise_precision: torch.Tensor  # (..., D, D)


def rollout(params: LDSParams, x_start: torch.Tensor, horizon: int) -> torch.Tensor:
    """
    ``x_{T+1..T+H}`` from ``x_T`` (shape ``(..., D)``) under the dynamics ``params``, with process noise;
    ``(..., H, D)``.
    """
    D = x_start.shape[-1]
    A, b = params.transition[..., :D], params.transition[..., D]
    batch = torch.broadcast_shapes(x_start.shape[:-1], b.shape[:-1])  # one noise draw per state, shared dynamics or not
    noise = dist.MultivariateNormal(b.new_zeros(batch + (D,)), precision_matrix=params.noise_precision)
    steps, x = [], x_start
    for _ in range(horizon):
        x = (A @ x[..., None])[..., 0] + b + noise.sample()
        steps.append(x)
    return torch.stack(steps, -2)


class ChainFactor(NamedTuple):
    """An unnormalised Gaussian chain: a factor on ``x_1`` and one on each pair ``(x_{t-1}, x_t)``."""

    init: Gaussian  # dim D
    trans: Gaussian  # dim 2D, time-homogeneous (no time dimension)


class ChainMoments(NamedTuple):
    """Smoothed moments of a Gaussian chain."""

    init_mean: torch.Tensor  # (..., D)          E[x_1]
    init_second: torch.Tensor  # (..., D, D)     E[x_1 x_1ᵀ]
    pair_mean: torch.Tensor  # (..., T-1, 2D)     E[(x_{t-1}, x_t)]
    pair_second: torch.Tensor  # (..., T-1, 2D, 2D)


def gaussian_expectation(g: Gaussian, mean: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``E[g(v)] = c + ηᵀE[v] - ½ tr(P E[v vᵀ])`` for an unnormalised Gaussian ``g``."""
    return g.log_normalizer + (g.info_vec * mean).sum(-1) - 0.5 * (g.precision * second).sum((-1, -2))


def regression_factor(E: MatrixNormalWishartExpectations) -> Gaussian:
    r"""
    ``E[log N(x_t; A x_{t-1} + b, Λ⁻¹)]`` as an unnormalised Gaussian over
    ``v = (x_{t-1}, x_t)``, for expectations of ``B = [A b]`` and ``Λ`` (point
    values give the plain log-density):

    .. math:: P = \begin{pmatrix} E[A^\top\Lambda A] & -E[A^\top\Lambda] \\
              -E[\Lambda A] & E[\Lambda]\end{pmatrix},\quad
              \eta = \begin{pmatrix} -E[A^\top\Lambda b] \\ E[\Lambda b]\end{pmatrix}
    """
    D = E.precision.shape[-1]
    lam_a, lam_b = E.precision_loc[..., :D], E.precision_loc[..., D]
    quad = E.loc_precision_loc
    precision = torch.cat(
        [
            torch.cat([quad[..., :D, :D], -lam_a.transpose(-1, -2)], -1),
            torch.cat([-lam_a, E.precision], -1),
        ],
        -2,
    )
    info_vec = torch.cat([-quad[..., :D, D], lam_b], -1)
    log_normalizer = 0.5 * (E.log_det_precision - quad[..., D, D] - D * _LOG_2PI)
    return Gaussian(log_normalizer, info_vec, precision)


def point_expectations(transition, noise_precision) -> MatrixNormalWishartExpectations:
    """The expectations of a point mass at ``(B, Λ)``."""
    precision_loc = noise_precision @ transition
    return MatrixNormalWishartExpectations(
        noise_precision,
        precision_loc,
        transition.transpose(-1, -2) @ precision_loc,
        torch.logdet(noise_precision),
    )


def pair_regression_stats(count, mean_sum, second_sum) -> RegressionStats:
    r"""
    Regression statistics ``Σ_t w_t E[(x_t uᵀ, u uᵀ, x_t x_tᵀ)]``, ``u = (x_{t-1}, 1)``, from
    weighted sums over the pairs ``v_t = (x_{t-1}, x_t)``: ``count = Σ w_t``,
    ``mean_sum = Σ w_t E[v_t]`` (shape ``(..., 2D)``), ``second_sum = Σ w_t E[v_t v_tᵀ]``.
    """
    D = mean_sum.shape[-1] // 2
    prev_mean, next_mean = mean_sum[..., :D], mean_sum[..., D:]
    cross = torch.cat([second_sum[..., D:, :D], next_mean[..., None]], -1)
    input_outer = torch.cat(
        [
            torch.cat([second_sum[..., :D, :D], prev_mean[..., None]], -1),
            torch.cat([prev_mean[..., None, :], count[..., None, None]], -1),
        ],
        -2,
    )
    return RegressionStats(count, cross, input_outer, second_sum[..., D:, D:])


def chain_log_normalizer(init: Gaussian, trans: Gaussian, parallel: bool = True) -> torch.Tensor:
    """
    ``log ∫ exp(init(x_1) + Σ_t trans_t(x_{t-1}, x_t)) dx`` for ``trans`` with time as
    its rightmost batch dimension: a parallel scan (depth ``O(log T)``) or a
    sequential Kalman filter in information form.
    """
    if trans is None or trans.batch_shape[-1] == 0:
        return init.event_logsumexp()
    D = init.dim()
    if parallel:
        return gaussian_tensordot(init, sequential_gaussian_tensordot(trans), D).event_logsumexp()
    message = init
    for t in range(trans.batch_shape[-1]):
        message = gaussian_tensordot(message, trans[..., t], D)
    return message.event_logsumexp()


def _standard_normal_after_end(trans: Gaussian, exists: torch.Tensor) -> Gaussian:
    """Pair factors where the step exists (``exists``, shape ``(..., T-1)``), else ``log N(x_t; 0, I)`` alone."""
    D = trans.dim() // 2
    placeholder = torch.zeros(2 * D, 2 * D, dtype=trans.precision.dtype, device=trans.precision.device)
    placeholder[D:, D:] = torch.eye(D, dtype=placeholder.dtype, device=placeholder.device)
    return Gaussian(
        torch.where(exists, trans.log_normalizer, -0.5 * D * _LOG_2PI),
        torch.where(exists[..., None], trans.info_vec, 0.0),
        torch.where(exists[..., None, None], trans.precision, placeholder),
    )


def _symmetric_second_moment(grad_precision):
    # ∂ log Z / ∂P = -½ E[v vᵀ]; autograd may split the symmetric part unevenly
    return -(grad_precision + grad_precision.transpose(-1, -2))


class ChainPosterior:
    r"""
    The closed-form SIN posterior of a batch of sequences.

    Sequences padded to one length carry their lengths in the potential. A step
    after a sequence's end does not exist: its pair factor becomes ``N(x_t; 0, I)``,
    which integrates to one and leaves the chain before it unchanged, and it is left
    out of the entropy, the density and the transition statistics. Samples, means and
    covariances hold zeros there.

    :param GaussianPotential potential: per-step potentials, shape ``(..., T, D)``;
        a zero precision marks a step without evidence (a missing frame, still a
        latent step), and ``potential.lengths`` the end of each padded sequence.
    :param ChainFactor factor: the SIN's LDS factor.
    :param bool parallel: use the parallel scan (else a sequential filter).
    """

    def __init__(self, potential: GaussianPotential, factor: ChainFactor, parallel: bool = True):
        h, J = potential.info_vec, potential.precision
        D = h.shape[-1]
        self.num_steps, self.dim, self.parallel = h.shape[-2], D, parallel
        self.step_mask = step_mask(potential.lengths, self.num_steps)  # (..., T), or None: every step exists
        self.init = factor.init + Gaussian(h.new_zeros(h.shape[:-2]), h[..., 0, :], torch.diag_embed(J[..., 0, :]))
        self.batch_shape = self.init.batch_shape
        if self.num_steps > 1:
            # the potential of x_t joins the factor on (x_{t-1}, x_t)
            self.trans = factor.trans + Gaussian(
                h.new_zeros(h.shape[:-1])[..., 1:],
                pad(h[..., 1:, :], (D, 0)),
                torch.diag_embed(pad(J[..., 1:, :], (D, 0))),
            )
            if self.step_mask is not None:
                self.trans = _standard_normal_after_end(self.trans, self.step_mask[..., 1:])
        else:
            self.trans = None

    @property
    def transition_mask(self):
        """``(..., T-1)``: 1 where the transition into step ``t`` exists, or None when all do."""
        if self.step_mask is None:
            return None
        return self.step_mask[..., 1:].to(self.init.info_vec.dtype)

    @functools.cached_property
    def _log_normalizer_and_moments(self):
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = [torch.zeros_like(self.init.info_vec), torch.zeros_like(self.init.precision)]
            if self.trans is not None:
                leaves += [torch.zeros_like(self.trans.info_vec), torch.zeros_like(self.trans.precision)]
            leaves = [leaf.requires_grad_() for leaf in leaves]
            init = Gaussian(self.init.log_normalizer, self.init.info_vec + leaves[0], self.init.precision + leaves[1])
            trans = None
            if self.trans is not None:
                trans = Gaussian(
                    self.trans.log_normalizer, self.trans.info_vec + leaves[2], self.trans.precision + leaves[3]
                )
            log_z = chain_log_normalizer(init, trans, self.parallel)
            grads = torch.autograd.grad(log_z.sum(), leaves, create_graph=create_graph)
        if not create_graph:
            log_z = log_z.detach()
        if self.trans is None:
            D = self.dim
            empty = grads[0].new_zeros(grads[0].shape[:-1] + (0, 2 * D))
            pair_mean, pair_second = empty, empty[..., None].expand(empty.shape + (2 * D,))
        else:
            pair_mean, pair_second = grads[2], _symmetric_second_moment(grads[3])
        moments = ChainMoments(grads[0], _symmetric_second_moment(grads[1]), pair_mean, pair_second)
        return log_z, moments

    @property
    def log_normalizer(self) -> torch.Tensor:
        """``log Z`` per sequence, shape ``(...)``."""
        return self._log_normalizer_and_moments[0]

    @property
    def moments(self) -> ChainMoments:
        """Smoothed first and second moments (differentiable when grad is enabled)."""
        return self._log_normalizer_and_moments[1]

    def marginal_means(self) -> torch.Tensor:
        """``E[x_t]``, shape ``(..., T, D)``."""
        m = self.moments
        mean = torch.cat([m.init_mean[..., None, :], m.pair_mean[..., self.dim :]], -2)
        return after_end_to_zero(mean, self.step_mask, 1)

    def marginal_covariances(self) -> torch.Tensor:
        """``Cov[x_t]``, shape ``(..., T, D, D)``."""
        m, D = self.moments, self.dim
        second = torch.cat([m.init_second[..., None, :, :], m.pair_second[..., D:, D:]], -3)
        mean = self.marginal_means()
        return after_end_to_zero(second - mean[..., :, None] * mean[..., None, :], self.step_mask, 2)

    @functools.cached_property
    def step_factors(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        r"""
        The Cholesky factors of the smoothed ``Cov[x_1]``, ``(..., D, D)``, and of each pair's
        ``Cov[(x_{t-1}, x_t)] = L Lᵀ``, ``(..., T-1, 2D, 2D)`` (None for one step), whose blocks give
        the conditionals of :meth:`step_log_prob`.
        """
        m = self.moments
        init_cov = m.init_second - m.init_mean[..., :, None] * m.init_mean[..., None, :]
        if self.trans is None:
            return torch.linalg.cholesky(init_cov), None
        pair_cov = m.pair_second - m.pair_mean[..., :, None] * m.pair_mean[..., None, :]
        return torch.linalg.cholesky(init_cov), torch.linalg.cholesky(pair_cov)

    def step_log_prob(self, t: int, x_t: torch.Tensor, x_previous: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""
        ``log q(x_t | x_{t-1})`` of the chain (``log q(x_1)`` for ``t = 0``), ``x`` of shape ``(..., D)``:
        with the pair's factor ``L = [[L₁₁, 0], [L₂₁, L₂₂]]``,

        .. math:: q(x_t \mid x_{t-1})
                  = \mathcal N\big(m_t + L_{21} L_{11}^{-1}(x_{t-1} - m_{t-1}),\ L_{22} L_{22}^\top\big),

        so that the steps' log densities add up to :meth:`log_prob` of the path.
        """
        D, m = self.dim, self.moments
        init_tril, pair_tril = self.step_factors
        if t == 0:
            return dist.MultivariateNormal(m.init_mean, scale_tril=init_tril, validate_args=False).log_prob(x_t)
        mean, tril = m.pair_mean[..., t - 1, :], pair_tril[..., t - 1, :, :]
        white = torch.linalg.solve_triangular(tril[..., :D, :D], (x_previous - mean[..., :D])[..., None], upper=False)
        loc = mean[..., D:] + (tril[..., D:, :D] @ white)[..., 0]
        return dist.MultivariateNormal(loc, scale_tril=tril[..., D:, D:], validate_args=False).log_prob(x_t)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Reparameterised joint samples by parallel-scan forward filtering, backward sampling."""
        if self.trans is None:
            return self.init.rsample(torch.Size(sample_shape))[..., None, :]
        x = sequential_gaussian_filter_sample(self.init, self.trans, torch.Size(sample_shape))
        return after_end_to_zero(x, self.step_mask, 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x_{1:T})`` for ``x`` of shape ``(..., T, D)`` (of the steps up to each sequence's end)."""
        result = self.init.log_density(x[..., 0, :])
        if self.trans is not None:
            pairs = torch.cat([x[..., :-1, :], x[..., 1:, :]], -1)
            result = result + sum_transitions(self.trans.log_density(pairs), self.step_mask)
        return result - self.log_normalizer

    marginal_log_prob = log_prob  # the chain is the whole posterior: nothing to sum out

    def entropy(self) -> torch.Tensor:
        """``H[q] = log Z - E[log ψ f]``, shape ``(...)``."""
        m = self.moments
        expected = gaussian_expectation(self.init, m.init_mean, m.init_second)
        if self.trans is not None:
            pairs = gaussian_expectation(self.trans, m.pair_mean, m.pair_second)
            expected = expected + sum_transitions(pairs, self.step_mask)
        return self.log_normalizer - expected

    def regression_stats(self) -> RegressionStats:
        """Per-sequence transition statistics ``Σ_t E[(x_t uᵀ, u uᵀ, x_t x_tᵀ)]``, ``u = (x_{t-1}, 1)``."""
        m = self.moments
        pair_mean, pair_second, weight = m.pair_mean, m.pair_second, self.transition_mask
        if weight is None:
            count = pair_mean.new_full(pair_mean.shape[:-2], float(self.num_steps - 1))
        else:
            pair_mean, pair_second = pair_mean * weight[..., None], pair_second * weight[..., None, None]
            count = weight.sum(-1)
        return pair_regression_stats(count, pair_mean.sum(-2), pair_second.sum(-3))


class LDSGlobalPosterior:
    """``q(B, Λ) = MNW(M, K, W, ν)`` with its expectations."""

    def __init__(self, matrix_normal_wishart: MatrixNormalWishart):
        self.matrix_normal_wishart = matrix_normal_wishart
        self.expectations = matrix_normal_wishart.expectations()


class AffineGaussianDynamics:
    r"""
    What the priors with affine Gaussian dynamics ``x_t ~ N(A x_{t-1} + b, Λ⁻¹)`` under a
    Matrix-Normal-Wishart ``p(B = [A b], Λ)`` and a fixed ``x_1 ~ N(μ₀, P₀⁻¹)`` share (the LDS
    and, per regime, the switching LDS): the hyperparameters, ``p(B, Λ)``, the initial factor
    and the conjugate update. A mixin of a :class:`~pyro_sin.pgm.sequence.SequencePrior`; the
    dynamics' batch shape is that of ``prior_df``.
    """

    def _register_dynamics(self, batch, init_loc, init_precision, transition_loc, col_precision, scale_inv, df):
        """Buffers ``μ₀, P₀, M₀, K₀, W₀⁻¹, ν₀`` (defaults ``0, I, [I 0], I, 0.1 (D + 2) I, D + 2``), validated."""
        D, what = self.latent_dim, type(self).__name__
        if transition_loc is None:
            transition_loc = torch.cat([torch.eye(D), torch.zeros(D, 1)], -1)
        self.register_buffer("init_loc", self._as_tensor(init_loc, (D,), f"{what} init_loc"))
        self.register_buffer(
            "init_precision", spd_matrix(1.0 if init_precision is None else init_precision, D, (), "init_precision")
        )
        transition_loc = self._as_tensor(transition_loc, batch + (D, D + 1), f"{what} transition_loc")
        self.register_buffer("prior_transition_loc", transition_loc)
        col_precision = 1.0 if col_precision is None else col_precision
        self.register_buffer("prior_col_precision", spd_matrix(col_precision, D + 1, batch, f"{what} col_precision"))
        scale_inv = 0.1 * (D + 2) if scale_inv is None else scale_inv
        self.register_buffer("prior_scale_inv", spd_matrix(scale_inv, D, batch, f"{what} scale_inv"))
        self.register_buffer("prior_df", self._as_tensor(D + 2.0 if df is None else df, batch, f"{what} df"))
        self.prior(validate_args=True)

    def prior(self, validate_args=False) -> MatrixNormalWishart:
        """``p(B, Λ)`` of the dynamics; its hyperparameters are validated once, at construction."""
        buffers = (self.prior_transition_loc, self.prior_col_precision, self.prior_scale_inv, self.prior_df)
        return self._conjugate_prior(MatrixNormalWishart, buffers, validate_args)

    def init_factor(self) -> Gaussian:
        """``log N(x_1; μ₀, P₀⁻¹)`` as an unnormalised Gaussian."""

        def build():
            P, m = self.init_precision, self.init_loc
            info = P @ m
            log_norm = 0.5 * (torch.logdet(P) - self.latent_dim * _LOG_2PI - (m * info).sum(-1))
            return Gaussian(log_norm, info, P)

        return self._memoized("init_factor", (self.init_loc, self.init_precision), build)

    def _conjugate_block(self) -> MatrixNormalWishartBlock:
        return MatrixNormalWishartBlock(self.prior_df.shape, self.latent_dim, self.latent_dim + 1)

    @staticmethod
    def _conjugate_from_natural(natural: Dict[str, torch.Tensor]) -> MatrixNormalWishart:
        """``q(B, Λ)`` from the Matrix-Normal-Wishart entries of ``λ`` (in the domain by construction)."""
        mnw = MatrixNormalWishartNatural(natural["cross"], natural["col_precision"], natural["scale"], natural["df"])
        return MatrixNormalWishart.from_natural(mnw, validate_args=False)

    def _dynamics_target(self, stats: RegressionStats, scale: float) -> MatrixNormalWishartNatural:
        """The conjugate update from the transition statistics of every sequence, summed and scaled by ``scale``."""
        batch_dims = tuple(range(stats.count.dim() - self.prior_df.dim()))
        total = RegressionStats(*(scale * s.sum(batch_dims) for s in stats))
        return regression_conjugate_update(self.prior().natural_params, total)


class LinearDynamicalSystem(AffineGaussianDynamics, SequencePrior):
    r"""
    A linear dynamical system prior on latent sequences with a
    Matrix-Normal-Wishart prior on its dynamics ``B = [A b]`` and noise precision
    ``Λ``, and a fixed initial state distribution.

    Model-side use inside a Pyro program::

        params = lds.sample_params()            # sites x_noise_precision, x_transition
        with pyro.plate("sequences", N, subsample=idx):
            x = lds.sample_latent(params, T)    # site x, event shape (T, D)

    Padded sequences: see :class:`~pyro_sin.pgm.sequence.SequencePrior`.

    :param int latent_dim: ``D``.
    :param str name: the latent site's name.
    :param init_loc: ``μ₀`` (default 0).
    :param init_precision: ``P₀`` (default ``I``).
    :param transition_loc: ``M₀ = [A₀ b₀]``, shape ``(D, D + 1)`` (default ``[I 0]``).
    :param col_precision: ``K₀``, shape ``(D + 1, D + 1)`` (default ``I``).
    :param scale_inv: ``W₀⁻¹`` (default ``0.1 (D + 2) I``: noise std ≈ 0.3).
    :param float df: ``ν₀`` (default ``D + 2``).
    :param bool parallel: Kalman filtering by parallel scan (else sequential).
    """

    def __init__(
        self,
        latent_dim: int,
        name: str = "x",
        *,
        init_loc=0.0,
        init_precision=None,
        transition_loc=None,
        col_precision=None,
        scale_inv=None,
        df=None,
        parallel: bool = True,
    ):
        super().__init__(name, latent_dim=latent_dim)
        self.parallel = parallel
        self._register_dynamics((), init_loc, init_precision, transition_loc, col_precision, scale_inv, df)
        self._step_sites: Optional[Tuple[str, ...]] = None

    site_roles = ("noise_precision", "transition")

    # ----- site names -----------------------------------------------------------

    @property
    def noise_precision_site(self):
        return self.site_name("noise_precision")

    @property
    def transition_site(self):
        return self.site_name("transition")

    @property
    def global_sites(self):
        return (self.noise_precision_site, self.transition_site)

    @property
    def local_sites(self):
        return (self.name,) if self._step_sites is None else self._step_sites

    # ----- one site per step ------------------------------------------------------

    def unroll_sites(self, latents: Sequence[str]) -> "LinearDynamicalSystem":
        """
        Emits the chain one step at a time, ``x_t`` at the site ``latents[t]``, as a model written
        with ``pyro.markov`` does (:mod:`pyro_sin.recognize`), instead of one site per path: the
        model's ``x_1 ~ N(μ₀, P₀⁻¹)`` then ``x_t ~ N(A x_{t-1} + b, Λ⁻¹)``; the guide's
        ``q(x_t | x_{t-1})`` (:meth:`ChainPosterior.step_log_prob`) at the values of a path drawn
        as :meth:`sample_local_posterior` draws one. For sequences of ``len(latents)`` steps,
        without padding. The prior's latent site (its ``name``) must be ``latents[0]``.

        :returns: ``self``.
        """
        latents = tuple(latents)
        if not latents or latents[0] != self.name:
            raise ValueError(f"the first latent site must be the prior's latent site '{self.name}', got {latents}")
        self._step_sites = latents
        return self

    def _check_steps(self, num_steps: int, lengths):
        check_unrolled_steps(f"LinearDynamicalSystem '{self.name}'", len(self._step_sites), num_steps, lengths)

    def global_values(self, q: LDSGlobalPosterior) -> Dict[str, torch.Tensor]:
        """The posterior means (:meth:`point_estimate`) by site name."""
        transition, noise_precision = self.point_estimate(q)
        return {self.noise_precision_site: noise_precision, self.transition_site: transition}

    # ----- model side -------------------------------------------------------------

    def _sample_params(self) -> LDSParams:
        noise_precision, transition = self._sample_conjugate(self.prior(), self.global_sites)
        return LDSParams(transition, noise_precision)

    def chain(self, params: LDSParams, num_steps: int, lengths=None) -> GaussianChain:
        """``p(x_{1:T} | θ)`` as a distribution; ``lengths`` ends padded sequences."""
        D = self.latent_dim
        return GaussianChain(
            self.init_loc,
            self.init_precision,
            params.transition[..., :D],
            params.transition[..., D],
            params.noise_precision,
            num_steps,
            lengths,
        )

    def _sample_latent(self, params: LDSParams, num_steps: int, lengths=None) -> torch.Tensor:
        if self._step_sites is not None:
            return self._sample_steps(params, num_steps, lengths)
        return pyro.sample(self.name, self.chain(params, num_steps, lengths))

    def _sample_steps(self, params: LDSParams, num_steps: int, lengths=None) -> torch.Tensor:
        """The model one step at a time (:meth:`unroll_sites`); returns ``x``, shape ``(..., T, D)``."""
        self._check_steps(num_steps, lengths)
        D = self.latent_dim
        A, b = params.transition[..., :D], params.transition[..., D]
        init = dist.MultivariateNormal(self.init_loc, precision_matrix=self.init_precision)
        x = pyro.sample(self._step_sites[0], init)
        steps = [x]
        for site in self._step_sites[1:]:
            loc = (A @ x[..., None])[..., 0] + b
            x = pyro.sample(site, dist.MultivariateNormal(loc, precision_matrix=params.noise_precision))
            steps.append(x)
        return torch.stack(steps, -2)

    # ----- conjugate posterior over θ -----------------------------------------------

    def global_posterior(self, natural: Dict[str, torch.Tensor]) -> LDSGlobalPosterior:
        return LDSGlobalPosterior(self._conjugate_from_natural(natural))

    def prior_natural(self):
        return self.prior().natural_params._asdict()

    def _sample_global_posterior(self, natural):
        self._sample_conjugate(self.global_posterior(natural).matrix_normal_wishart, self.global_sites)

    def kl(self, q: LDSGlobalPosterior):
        return q.matrix_normal_wishart.kl_divergence(self.prior())

    def cross_entropy(self, q: LDSGlobalPosterior):
        return q.matrix_normal_wishart.cross_entropy(self.prior())

    def natural_domain(self) -> NaturalDomain:
        return NaturalDomain([self._conjugate_block()])

    def point_estimate(self, q: LDSGlobalPosterior) -> LDSParams:
        """Posterior means ``E[B] = M`` and ``E[Λ] = ν W``."""
        return LDSParams(q.matrix_normal_wishart.loc, q.expectations.precision)

    # ----- SIN factor and posterior ---------------------------------------------------

    def tied_factor(self, q: LDSGlobalPosterior) -> ChainFactor:
        return ChainFactor(self.init_factor(), regression_factor(q.expectations))

    def init_free_factor(self, natural):
        q = self.global_posterior(natural)
        E = q.expectations
        return {
            "transition": (q.matrix_normal_wishart.loc, constraints.real),
            "noise_precision_tril": (torch.linalg.cholesky(E.precision), constraints.lower_cholesky),
        }

    def dynamics_factor(self, params: LDSParams) -> ChainFactor:
        """The chain ``log p(x_{1:T} | θ)`` for point dynamics, as an unnormalised Gaussian chain."""
        return ChainFactor(
            self.init_factor(), regression_factor(point_expectations(params.transition, params.noise_precision))
        )

    def free_factor(self, params) -> ChainFactor:
        tril = params["noise_precision_tril"]
        return self.dynamics_factor(LDSParams(params["transition"], tril @ tril.transpose(-1, -2)))

    def posterior(self, potential: GaussianPotential, factor: ChainFactor) -> ChainPosterior:
        self.check_potential(potential)
        return ChainPosterior(potential, factor, self.parallel)

    def sample_local_posterior(self, record: SINRecord) -> torch.Tensor:
        if self._step_sites is not None:
            return self._sample_posterior_steps(record)
        return pyro.sample(
            self.name, PosteriorDistribution(record.posterior, validate_args=False), infer={"sin": record}
        )

    def _sample_posterior_steps(self, record: SINRecord) -> torch.Tensor:
        """
        The path drawn as :meth:`sample_local_posterior` draws it (the same random numbers), then
        emitted one step at a time (:class:`~pyro_sin.pgm.sequence.StepOfDrawnPath`) with the
        conditionals ``q(x_t | x_{t-1})``; the SIN record on the first step.
        """
        post = record.posterior
        self._check_steps(post.num_steps, post.step_mask)  # a mask only where the sequences have lengths
        # as pyro.sample would broadcast the path's site
        x = broadcast_to_plates(PosteriorDistribution(post, validate_args=False)).rsample()
        for t, site in enumerate(self._step_sites):
            previous = x[..., t - 1, :] if t else None
            density = functools.partial(post.step_log_prob, t, x_previous=previous)
            fn = StepOfDrawnPath(x[..., t, :], density, constraints.real_vector, 1, True)
            pyro.sample(site, fn, infer={"sin": record} if t == 0 else {})
        return x

    # ----- closed-form bound and natural-gradient target ---------------------------------

    def expected_log_prior(self, q: LDSGlobalPosterior, posterior: ChainPosterior) -> torch.Tensor:
        m = posterior.moments
        expected_log_prior = gaussian_expectation(self.init_factor(), m.init_mean, m.init_second)
        if posterior.num_steps > 1:
            expected_log_prior = expected_log_prior + expected_regression_log_likelihood(
                q.expectations, posterior.regression_stats()
            )
        return expected_log_prior

    def natural_target(self, posterior: ChainPosterior, scale: float):
        return self._dynamics_target(posterior.regression_stats(), scale)._asdict()

    # ----- prediction and evaluation (the interface of SequencePrior) ---------------------

    def latent_log_prob(self, params: LDSParams, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``log p(x_{1:T} | θ)``, shape ``x.shape[:-2]``."""
        return self.chain(params, x.shape[-2], lengths).log_prob(x)

    def proposal(self, posterior: ChainPosterior) -> PosteriorDistribution:
        """The SIN posterior as a distribution over ``x_{1:T}`` (an importance-sampling proposal)."""
        return PosteriorDistribution(posterior)

    def forecast(
        self, q: LDSGlobalPosterior, posterior: ChainPosterior, horizon: int, num_samples: int, lengths=None
    ) -> torch.Tensor:
        r"""
        Draws of ``x_{T+1..T+H}`` for sequences of batch ``(B,)``: ``x_T`` from the SIN
        posterior, then the dynamics at :meth:`point_estimate` with their process noise. The
        dynamics are not drawn from ``q(θ)``: before training ``q(θ)`` is the broad prior, whose
        draws include explosive ``A`` that would blow a forecast up within a few steps.

        :returns: shape ``(num_samples, B, horizon, D)``.
        """
        x_last = last_step(posterior.rsample((num_samples,)), lengths)  # (S, B, D)
        return rollout(self.point_estimate(q), x_last, horizon)

    def _point_posterior(self, q: LDSGlobalPosterior, potential: GaussianPotential) -> ChainPosterior:
        """The posterior of ``x_{1:T}`` given the potentials under the dynamics at :meth:`point_estimate`."""
        return self.posterior(potential, self.dynamics_factor(self.point_estimate(q)))

    def smoothed_marginals(self, q: LDSGlobalPosterior, potential: GaussianPotential) -> LatentMarginals:
        """``N(x_t; E[x_t], Cov[x_t])`` given the observed frames, smoothed under the posterior-mean dynamics."""
        posterior = self._point_posterior(q, potential)
        return LatentMarginals.gaussian(posterior.marginal_means(), posterior.marginal_covariances())

    def forecast_marginals(self, q: LDSGlobalPosterior, potential: GaussianPotential, horizon: int) -> LatentMarginals:
        r"""
        The Kalman predictive moments after each sequence's end under the posterior-mean dynamics
        ``(A, b, Λ)``: from the filtered ``(m_T, V_T)``, ``m_{t+1} = A m_t + b`` and
        ``V_{t+1} = A V_t Aᵀ + Λ⁻¹``; batch ``(B, horizon)``.
        """
        D, lengths = self.latent_dim, potential.lengths
        posterior = self._point_posterior(q, potential)
        loc = last_step(posterior.marginal_means(), lengths)  # (B, D)
        covs = posterior.marginal_covariances()
        cov = last_step(covs.reshape(covs.shape[:-2] + (D * D,)), lengths).reshape(loc.shape + (D,))  # (B, D, D)
        params = self.point_estimate(q)
        A, b = params.transition[..., :D], params.transition[..., D]
        noise_cov = torch.cholesky_inverse(torch.linalg.cholesky(params.noise_precision))
        locs, cov_steps = [], []
        for _ in range(horizon):
            loc = loc @ A.transpose(-1, -2) + b
            cov = A @ cov @ A.transpose(-1, -2) + noise_cov
            locs.append(loc)
            cov_steps.append(cov)
        return LatentMarginals.gaussian(torch.stack(locs, -2), torch.stack(cov_steps, -3))
