r"""
The classic models the regime families contain, fitted by expectation-maximisation
(Baum-Welch) with the package's own forward-backward (:mod:`pyro_sin.ops.markov`):

* :class:`GaussianHMM`, the Gaussian hidden Markov model with full covariances, which a
  :class:`~pyro_sin.pgm.hmm.LatentHMM` with an identity decoder is;

  .. math:: z_1 \sim \pi,\quad z_t \mid z_{t-1} \sim P_{z_{t-1}},\quad y_t \mid z_t = k \sim N(\mu_k, \Sigma_k);

* :class:`AutoregressiveHMM`, the same chain with per-regime linear regressions of each
  frame on the one before, which a :class:`~pyro_sin.pgm.slds.SwitchingLDS` without
  observation noise is;

  .. math:: y_t \mid y_{t-1}, z_t = k \sim N(A_k y_{t-1} + b_k, \Sigma_k).

Both take sequences ``(N, T, D)``, padded ones with their ``lengths``. The E-step is the
chain's exact posterior; the M-step the weighted maximum-likelihood estimates. They are the
families' data-driven starts (``encoded_start``) and the baseline a switching model should
never end below.
"""

import copy
import math
from typing import List, NamedTuple, Optional, Sequence

import torch

from ..distributions import GaussianStats, RegressionStats
from ..initialization import kmeans
from ..ops.markov import ChainMarginals, forward_backward

_LOG_2PI = math.log(2 * math.pi)


class ChainCounts(NamedTuple):
    """Expected counts of a chain's posterior, summed over sequences."""

    first: torch.Tensor  # (K,)       Σ_n q(z_{n1} = k)
    transitions: torch.Tensor  # (K, K)  Σ_n Σ_t q(z_{n,t-1} = j, z_{nt} = k)


def chain_counts(marginals: ChainMarginals) -> ChainCounts:
    """The first-step and transition counts of :func:`~pyro_sin.ops.markov.forward_backward`'s marginals."""
    K = marginals.marginals.shape[-1]
    return ChainCounts(
        marginals.marginals[..., 0, :].reshape(-1, K).sum(0),
        marginals.pair_marginals.reshape(-1, K, K).sum(0),
    )


def _normalise(counts: torch.Tensor) -> torch.Tensor:
    """Rows of counts as probabilities; an empty row becomes uniform."""
    total = counts.sum(-1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp(min=torch.finfo(counts.dtype).tiny), 1.0 / counts.shape[-1])


def gaussian_log_prob(x: torch.Tensor, locs: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """``log N(x; μ_k, Σ_k)`` for frames ``(..., D)`` and ``K`` Gaussians: shape ``(..., K)``."""
    tril = torch.linalg.cholesky(covariances)  # (K, D, D)
    frames = x.reshape(-1, x.shape[-1])
    diff = (frames[None] - locs[:, None]).transpose(-1, -2)  # (K, D, M)
    white = torch.linalg.solve_triangular(tril, diff, upper=False)
    log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
    result = -0.5 * white.square().sum(-2) - log_det[:, None] - 0.5 * x.shape[-1] * _LOG_2PI  # (K, M)
    return result.T.reshape(x.shape[:-1] + (len(locs),))


def _gaussian_m_step(stats: GaussianStats, min_covar: float, previous=None):
    """Weighted means and covariances ``(+ min_covar I)``; a state without weight keeps its ``previous`` ones."""
    count = stats.count.clamp(min=torch.finfo(stats.sum.dtype).tiny)
    locs = stats.sum / count[:, None]
    scatter = stats.sum_outer / count[:, None, None] - locs[:, :, None] * locs[:, None, :]
    eye = torch.eye(locs.shape[-1], dtype=locs.dtype, device=locs.device)
    covariances = 0.5 * (scatter + scatter.transpose(-1, -2)) + min_covar * eye
    if previous is not None:
        empty = stats.count <= 1e-8 * stats.count.sum()
        locs = torch.where(empty[:, None], previous[0], locs)
        covariances = torch.where(empty[:, None, None], previous[1], covariances)
    return locs, covariances


class RegimeEM:
    """What the two classic models share: the chain's parameters, the EM loop and model selection."""

    def __init__(self, num_states: int, iterations: int, tol: float, min_covar: float, restarts: int, parallel: bool):
        if num_states < 1 or iterations < 0 or min_covar < 0:
            raise ValueError(
                f"need num_states >= 1, iterations >= 0 and min_covar >= 0, got {num_states}, {iterations}, {min_covar}"
            )
        self.num_states, self.iterations, self.tol = num_states, iterations, tol
        self.min_covar, self.restarts, self.parallel = min_covar, restarts, parallel
        self.init_probs = self.transition_probs = None
        #: the mean log-likelihood per frame after each E-step
        self.history: List[float] = []

    # ----- to be provided by each model -------------------------------------------------------

    def emission_log_prob(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-step log evidence of each state, ``(..., T, K)``."""
        raise NotImplementedError

    def _m_step_emissions(self, frames, state_probs, lengths):
        raise NotImplementedError

    def _emission_parameters(self) -> int:
        raise NotImplementedError

    # ----- the chain ------------------------------------------------------------------------------

    def posterior(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> ChainMarginals:
        """The chain's exact posterior given the frames (forward-backward)."""
        with torch.no_grad():
            return forward_backward(
                self.init_probs.log(),
                self.transition_probs.log()[None],
                self.emission_log_prob(frames),
                lengths,
                self.parallel,
            )

    def state_probs(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``p(z_t = k | y_{1:T})``, shape ``(N, T, K)`` (zeros after each sequence's end)."""
        return self.posterior(frames, lengths).marginals

    def log_likelihood(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p(y_{1:T})`` of each sequence, shape ``(N,)``."""
        return self.posterior(frames, lengths).log_normalizer

    @property
    def num_parameters(self) -> int:
        """How many free parameters the model has (``K - 1 + K (K - 1)`` in the chain, and the emissions')."""
        K = self.num_states
        return K - 1 + K * (K - 1) + self._emission_parameters()

    def bic(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> float:
        r"""The Bayesian information criterion ``-2 log p(y) + p log n`` (``n`` frames): lower is better."""
        frames_seen = _num_frames(frames, lengths)
        return float(-2 * self.log_likelihood(frames, lengths).sum() + self.num_parameters * math.log(frames_seen))

    def _chain_m_step(self, counts: ChainCounts):
        self.init_probs = _normalise(counts.first)
        self.transition_probs = _normalise(counts.transitions)

    def _em(self, frames, lengths, starts: List[torch.Tensor]):
        """EM from each of the states' responsibilities ``starts`` (an M-step first); the likeliest fit is kept."""
        fits = [copy.copy(self)._em_from(frames, lengths, probs, self.iterations) for probs in starts]
        self.__dict__.update(max(fits, key=lambda fit: fit.history[-1]).__dict__)
        return self

    def _em_from(self, frames, lengths, state_probs: torch.Tensor, iterations: int):
        K = self.num_states
        dtype, device = frames.dtype, frames.device
        self.init_probs = torch.full((K,), 1.0 / K, dtype=dtype, device=device)
        self.transition_probs = torch.full((K, K), 1.0 / K, dtype=dtype, device=device)
        self._m_step_emissions(frames, state_probs, lengths)
        self.history = []
        return self._iterate(frames, lengths, iterations)

    def _iterate(self, frames, lengths, iterations: int):
        frames_seen = _num_frames(frames, lengths)
        for _ in range(max(iterations, 0)):
            marginals = self.posterior(frames, lengths)
            self.history.append(float(marginals.log_normalizer.sum()) / frames_seen)
            if len(self.history) > 1 and self.history[-1] - self.history[-2] < self.tol:
                break
            self._chain_m_step(chain_counts(marginals))
            self._m_step_emissions(frames, marginals.marginals, lengths)
        return self

    def _kmeans_starts(self, points: torch.Tensor, exists: torch.Tensor, shape, generator) -> List[torch.Tensor]:
        """One-hot responsibilities ``shape + (K,)``, one per k-means run on ``points`` (the ``exists`` frames)."""
        starts = []
        for _ in range(max(1, self.restarts)):
            _, assignment = kmeans(points, self.num_states, generator)
            probs = points.new_zeros(shape + (self.num_states,))
            probs[exists] = _one_hot(assignment, self.num_states, points)
            starts.append(probs)
        return starts


def _num_frames(frames: torch.Tensor, lengths: Optional[torch.Tensor]) -> int:
    return int(frames.shape[:-1].numel() if lengths is None else lengths.sum())


def _step_weights(frames: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """``(N, T)``: 1 at the frames before each sequence's end, 0 after."""
    steps = torch.ones(frames.shape[:-1], dtype=frames.dtype, device=frames.device)
    if lengths is None:
        return steps
    return (torch.arange(frames.shape[-2], device=frames.device) < lengths[..., None]).to(frames.dtype)


def _weighted_frames_only(frames: torch.Tensor, state_probs: torch.Tensor) -> torch.Tensor:
    """The frames, with zeros where no state has weight (after a sequence's end, where they may be anything)."""
    return torch.where(state_probs.sum(-1, keepdim=True) > 0, frames, frames.new_zeros(()))


def _one_hot(assignment: torch.Tensor, num_states: int, like: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(assignment, num_states).to(like.dtype)


class GaussianHMM(RegimeEM):
    r"""
    A hidden Markov model with a full-covariance Gaussian per state, fitted by EM
    (Baum-Welch); hmmlearn's ``GaussianHMM(covariance_type="full")`` without its
    ``covars_prior``, which is ``min_covar`` here.

    :param int num_states: ``K``.
    :param int iterations: the most EM iterations.
    :param float tol: stop when the mean log-likelihood per frame rises by less than this.
    :param float min_covar: added to the diagonal of every covariance.
    :param int restarts: EM runs of the default start, each from its own k-means clusters, the
        likeliest kept: a poor local optimum less often, at ``restarts`` times the cost.
    :param bool parallel: forward-backward by a parallel scan over time (else sequentially).

    After :meth:`fit`: ``init_probs`` ``(K,)``, ``transition_probs`` ``(K, K)`` (rows indexed by
    the previous state), ``locs`` ``(K, D)``, ``covariances`` ``(K, D, D)``, ``history``.
    """

    def __init__(
        self, num_states: int, *, iterations: int = 100, tol: float = 1e-4, min_covar: float = 1e-3,
        restarts: int = 5, parallel: bool = True,
    ):
        super().__init__(num_states, iterations, tol, min_covar, restarts, parallel)
        self.locs = self.covariances = None

    @torch.no_grad()
    def fit(
        self,
        frames: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        *,
        state_probs: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> "GaussianHMM":
        """
        EM on sequences ``frames`` ``(N, T, D)``, started from the states' responsibilities
        ``state_probs`` ``(N, T, K)`` or, by default, from k-means on the frames (the states on
        the clusters, uniform initial and transition probabilities; ``restarts`` of them, the likeliest kept).

        :param torch.Generator generator: the random stream of the k-means start.
        """
        frames = frames.detach()
        if state_probs is not None:
            return self._em(frames, lengths, [state_probs])
        exists = _step_weights(frames, lengths).bool()
        return self._em(frames, lengths, self._kmeans_starts(frames[exists], exists, frames.shape[:-1], generator))

    def emission_log_prob(self, frames):
        return gaussian_log_prob(frames, self.locs, self.covariances)

    def gaussian_stats(self, frames: torch.Tensor, state_probs: torch.Tensor) -> GaussianStats:
        """``Σ_{n,t} q(z_{nt} = k) (1, y_{nt}, y_{nt} y_{nt}ᵀ)``, batch ``(K,)``."""
        frames = _weighted_frames_only(frames, state_probs)
        return GaussianStats(
            state_probs.sum((0, 1)),
            torch.einsum("ntk,nti->ki", state_probs, frames),
            torch.einsum("ntk,nti,ntj->kij", state_probs, frames, frames),
        )

    def _m_step_emissions(self, frames, state_probs, lengths):
        previous = None if self.locs is None else (self.locs, self.covariances)
        stats = self.gaussian_stats(frames, state_probs)
        self.locs, self.covariances = _gaussian_m_step(stats, self.min_covar, previous)

    def _emission_parameters(self):
        D = self.locs.shape[-1]
        return self.num_states * (D + D * (D + 1) // 2)


def select_num_states(
    frames: torch.Tensor,
    candidates: Sequence[int] = (2, 3, 4, 5, 6),
    lengths: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    **options,
) -> GaussianHMM:
    """
    The :class:`GaussianHMM` with the lowest BIC among ``candidates`` numbers of states.

    :param options: further arguments of :class:`GaussianHMM`.
    """
    fits = [GaussianHMM(K, **options).fit(frames, lengths, generator=generator) for K in candidates]
    return min(fits, key=lambda fit: fit.bic(frames, lengths))


class AutoregressiveHMM(RegimeEM):
    r"""
    A hidden Markov model whose regimes are linear regressions of each frame on the one
    before, ``y_t | y_{t-1}, z_t = k ~ N(A_k y_{t-1} + b_k, Σ_k)``, fitted by EM. The first
    frame of a sequence carries no regime evidence (its distribution is shared by the regimes).

    :param float ridge: added to the diagonal of every regression's input covariance (in
        units of the frames' second moment), so a regime with few frames stays well posed.

    Other arguments as for :class:`GaussianHMM`. After :meth:`fit`: ``init_probs``,
    ``transition_probs``, ``transitions`` ``(K, D, D + 1)`` (``[A_k b_k]``), ``covariances``.
    """

    def __init__(
        self, num_states: int, *, iterations: int = 100, tol: float = 1e-4, min_covar: float = 1e-3,
        ridge: float = 1e-3, restarts: int = 3, parallel: bool = True,
    ):
        super().__init__(num_states, iterations, tol, min_covar, restarts, parallel)
        self.ridge = ridge
        self.transitions = self.covariances = None

    @torch.no_grad()
    def fit(
        self,
        frames: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        *,
        state_probs: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> "AutoregressiveHMM":
        """
        EM on sequences ``frames`` ``(N, T, D)``, started from the regimes' responsibilities
        ``state_probs`` ``(N, T, K)`` (e.g. a :class:`GaussianHMM`'s) or, by default, from
        k-means on the steps ``y_t - y_{t-1}``.
        """
        frames = frames.detach()
        if state_probs is not None:
            return self._em(frames, lengths, [state_probs])
        steps = frames[:, 1:] - frames[:, :-1]
        exists = _step_weights(frames, lengths)[:, 1:].bool()
        starts = self._kmeans_starts(steps[exists], exists, steps.shape[:-1], generator)
        zero = frames.new_zeros(frames.shape[:1] + (1, self.num_states))  # the first frames carry no regime
        return self._em(frames, lengths, [torch.cat([zero, probs], 1) for probs in starts])

    @staticmethod
    def regression_stats(frames: torch.Tensor, state_probs: torch.Tensor) -> RegressionStats:
        r"""
        ``Σ_{n,t≥2} q(z_{nt} = k) (1, y_t uᵀ, u uᵀ, y_t y_tᵀ)`` with ``u = (y_{t-1}, 1)``, batch ``(K,)``
        (the regression statistics of :func:`~pyro_sin.distributions.regression_conjugate_update`).
        """
        frames = _weighted_frames_only(frames, state_probs)
        after = frames[:, 1:]
        inputs = torch.cat([frames[:, :-1], torch.ones_like(frames[:, :-1, :1])], -1)
        weights = state_probs[:, 1:]
        return RegressionStats(
            weights.sum((0, 1)),
            torch.einsum("ntk,nti,ntj->kij", weights, after, inputs),
            torch.einsum("ntk,nti,ntj->kij", weights, inputs, inputs),
            torch.einsum("ntk,nti,ntj->kij", weights, after, after),
        )

    def emission_log_prob(self, frames):
        D = frames.shape[-1]
        predicted = torch.einsum("kij,ntj->ntki", self.transitions[..., :D], frames[:, :-1]) + self.transitions[..., D]
        residual = frames[:, 1:, None, :] - predicted  # (N, T-1, K, D)
        tril = torch.linalg.cholesky(self.covariances)  # (K, D, D)
        white = torch.linalg.solve_triangular(tril, residual[..., None], upper=False)[..., 0]
        log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        pair = -0.5 * white.square().sum(-1) - log_det - 0.5 * D * _LOG_2PI
        return torch.cat([pair.new_zeros(pair.shape[:1] + (1,) + pair.shape[2:]), pair], 1)

    def _m_step_emissions(self, frames, state_probs, lengths):
        stats = self.regression_stats(frames, state_probs)
        D = frames.shape[-1]
        count = stats.count.clamp(min=torch.finfo(frames.dtype).tiny)
        scale = stats.input_outer.diagonal(dim1=-2, dim2=-1).sum(-1) / count / (D + 1)  # (K,) mean input power
        eye = torch.eye(D + 1, dtype=frames.dtype, device=frames.device)
        # a regime left with (almost) no frames has an (almost) zero Gram matrix: its ridge stays at least
        # that of one frame of unit power, so the solve never meets a singular matrix
        gram = stats.input_outer + (self.ridge * (scale * count).clamp(min=1.0))[:, None, None] * eye
        transitions = torch.linalg.solve(gram, stats.cross.transpose(-1, -2)).transpose(-1, -2)  # (K, D, D + 1)
        # Σ r (y - W u)(y - W u)ᵀ, exactly (with the ridge, W S_uu Wᵀ is not W S_uy)
        explained = transitions @ stats.cross.transpose(-1, -2)
        residual = stats.output_outer - explained - explained.transpose(-1, -2)
        residual = residual + transitions @ stats.input_outer @ transitions.transpose(-1, -2)
        residual = 0.5 * (residual + residual.transpose(-1, -2)) / count[:, None, None]
        covariances = residual + self.min_covar * torch.eye(D, dtype=frames.dtype, device=frames.device)
        if self.transitions is not None:
            empty = stats.count <= 1e-8 * stats.count.sum()
            transitions = torch.where(empty[:, None, None], self.transitions, transitions)
            covariances = torch.where(empty[:, None, None], self.covariances, covariances)
        self.transitions, self.covariances = transitions, covariances

    def _emission_parameters(self):
        D = self.covariances.shape[-1]
        return self.num_states * (D * (D + 1) + D * (D + 1) // 2)
