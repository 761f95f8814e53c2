r"""
What the priors over latent sequences share, and the deep model that decodes them.

:class:`SequencePrior` declares the interface that :class:`DeepLatentSequence` and the
evaluation call (``latent_log_prob``, ``point_estimate``, ``proposal``, ``forecast``) and
checks the per-step potentials every sequence posterior takes; the linear dynamical system,
the latent HMM and the switching LDS implement it. A family whose predictions have a closed
form also offers :meth:`SequencePrior.smoothed_marginals` and
:meth:`SequencePrior.forecast_marginals`, and :class:`DeepLatentSequence` then predicts without
sampling. The helpers below treat padded sequences alike: the steps after a sequence's end do
not exist.
"""

from typing import Callable, NamedTuple, Optional

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
from pyro.poutine.runtime import get_plates

from .. import evaluation
from ..guide import SINGuide
from ..models import check_num_data, data_plate, frame_likelihood, observed_frames, register_decoder
from ..naming import NameOwner
from ..potential import GaussianPotential
from .base import StructuredPrior

#: draws per prediction where a family has no closed form (or none is asked for)
DEFAULT_SAMPLES = 50


def step_mask(lengths: Optional[torch.Tensor], num_steps: int) -> Optional[torch.Tensor]:
    """``(..., T)``: True where a step exists (before its sequence's end); None without lengths."""
    if lengths is None:
        return None
    return torch.arange(num_steps, device=lengths.device) < lengths[..., None]


def check_lengths(lengths, num_steps: int, owner: str = "the sequence model") -> None:
    """
    Refuses ``lengths`` that are not whole numbers in ``[1, num_steps]``: a sequence of no step
    (or of more steps than the data hold) has no posterior, and would otherwise surface as a
    NaN far from its cause.
    """
    if lengths is None:
        return
    whole = torch.is_tensor(lengths) and not (lengths.is_floating_point() or lengths.is_complex())
    if not whole or lengths.dtype == torch.bool:
        raise ValueError(
            f"{owner}: lengths must be an integer tensor (one length per sequence), got "
            f"{lengths.dtype if torch.is_tensor(lengths) else type(lengths).__name__}: pass torch.as_tensor(lengths)"
        )
    if lengths.numel() and not ((lengths >= 1) & (lengths <= num_steps)).all():
        bad = lengths[(lengths < 1) | (lengths > num_steps)]
        raise ValueError(
            f"{owner}: lengths must lie in [1, {num_steps}] (the number of frames of each sequence before "
            f"its padding), got {bad.tolist()}: drop the empty sequences, or pad the data to the longest one"
        )


def check_sequence_data(y, mask=None, lengths=None, owner: str = "the sequence model") -> None:
    """
    Refuses a ``mask`` that is not one flag per frame, ``(B, T)`` for data ``y`` of shape
    ``(B, T, P)``, and ``lengths`` that are not one whole number in ``[1, T]`` per sequence.
    """
    if not torch.is_tensor(y) or y.dim() < 2:
        return  # (the encoder and the decoder say what they need)
    frames, sequences = tuple(y.shape[:-1]), tuple(y.shape[:-2])
    if mask is not None and tuple(getattr(mask, "shape", ())) != frames:
        got = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(
            f"{owner}: mask must have shape (B, T) = {frames}, one flag per frame of y {tuple(y.shape)}, got {got}"
        )
    check_lengths(lengths, y.shape[-2], owner)
    if lengths is not None and tuple(lengths.shape) != sequences:
        count = sequences[0] if len(sequences) == 1 else sequences
        raise ValueError(
            f"{owner}: lengths must have one entry per sequence ({count}), got "
            f"{lengths.numel() if lengths.dim() == 1 else tuple(lengths.shape)}"
        )


def after_end_to_zero(value: torch.Tensor, mask: Optional[torch.Tensor], event_dims: int) -> torch.Tensor:
    """``value`` of shape ``(..., T) + event`` with zeros at the steps that do not exist."""
    if mask is None:
        return value
    return torch.where(mask.reshape(mask.shape + (1,) * event_dims), value, value.new_zeros(()))


def sum_transitions(per_transition: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The sum over the transitions into the steps that exist, ``(..., T-1) -> (...)``."""
    return after_end_to_zero(per_transition, None if mask is None else mask[..., 1:], 0).sum(-1)


def last_step(x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    The last step of each sequence, ``x`` of shape ``(..., T, E)`` whose batch ends in the
    shape of ``lengths``: the step ``lengths - 1`` of padded sequences; shape ``(..., E)``.
    """
    if lengths is None:
        return x[..., -1, :]
    index = (lengths - 1)[..., None, None].expand(x.shape[:-2] + (1, x.shape[-1]))
    return torch.gather(x, -2, index)[..., 0, :]


class LatentMarginals(NamedTuple):
    r"""
    The marginals of latent steps as Gaussian mixtures, ``Σ_k w_k N(x_t; m_{tk}, V_{tk})`` (one
    component for a Gaussian chain), from which :class:`DeepLatentSequence` computes predictions.
    """

    weights: torch.Tensor  # (..., K)  w_k, summing to one
    locs: torch.Tensor  # (..., K, D)
    covs: torch.Tensor  # (..., K, D, D)

    @classmethod
    def gaussian(cls, loc: torch.Tensor, cov: torch.Tensor) -> "LatentMarginals":
        """Gaussian marginals, ``loc`` ``(..., D)`` and ``cov`` ``(..., D, D)``, as one-component mixtures."""
        return cls(loc.new_ones(loc.shape[:-1] + (1,)), loc[..., None, :], cov[..., None, :, :])


def broadcast_to_plates(fn: dist.TorchDistribution) -> dist.TorchDistribution:
    """``fn`` expanded to the batch shape of the active plates, as ``pyro.sample`` broadcasts a site's distribution."""
    shape = list(fn.batch_shape)
    for frame in get_plates():
        if frame.dim is None or frame.size == -1:
            continue
        shape = [1] * (-frame.dim - len(shape)) + shape
        shape[frame.dim] = frame.size
    return fn.expand(torch.Size(shape))


class StepOfDrawnPath(dist.TorchDistribution):
    """
    One step of a path drawn jointly, as a sample site of its own: its value is that step of the
    draw, its density the step's conditional given the steps before it, so that the sites' log
    densities add up to the path's (what a model written one step at a time under ``pyro.markov``
    needs of its guide: :meth:`~pyro_sin.pgm.LatentHMM.unroll_sites`,
    :meth:`~pyro_sin.pgm.LinearDynamicalSystem.unroll_sites`). A ``pyro.sample`` of it returns the drawn
    value (with its reparameterisation gradient where the step has one).

    :param torch.Tensor value: the step's draw, of shape ``batch + event``.
    :param callable log_density: ``value -> log q(value | the steps before)``, shape ``batch``.
    :param support: the step's support.
    :param int event_dim: the number of the value's dimensions that are its event.
    :param bool has_rsample: whether ``value`` is a reparameterised draw.
    """

    arg_constraints = {}

    def __init__(self, value, log_density: Callable, support, event_dim: int, has_rsample: bool):
        self.value, self.log_density, self._support = value, log_density, support
        self._event_dim, self.has_rsample = event_dim, has_rsample
        cut = value.dim() - event_dim
        super().__init__(value.shape[:cut], value.shape[cut:], validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self._support

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        value = self.value.expand(batch_shape + self.event_shape)
        return StepOfDrawnPath(value, self.log_density, self._support, self._event_dim, self.has_rsample)

    def rsample(self, sample_shape=torch.Size()):
        if sample_shape:
            raise NotImplementedError("a step of a drawn path is one value: draw more paths instead")
        return self.value

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape).detach()

    def log_prob(self, value):
        return self.log_density(value)


def check_unrolled_steps(owner: str, num_sites: int, num_steps: int, lengths) -> None:
    """
    Refuses what a family that emits its steps at sites of their own (a model written one step
    at a time under ``pyro.markov``) cannot take: another number of steps, or padded sequences.
    """
    if num_steps != num_sites or lengths is not None:
        raise ValueError(
            f"{owner} emits its {num_sites} steps at sites of their own: it takes sequences "
            f"of {num_sites} steps without lengths, got {num_steps} steps" + ("" if lengths is None else " and lengths")
        )


class SequenceDistribution(dist.TorchDistribution):
    """A distribution over whole (possibly padded, ``self.lengths``) sequences with event shape ``(T, D)``."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def expand(self, batch_shape, _instance=None):
        return dist.ExpandedDistribution(self, batch_shape)

    @property
    def step_mask(self):
        return step_mask(self.lengths, self.event_shape[0])


class PosteriorDistribution(SequenceDistribution):
    """
    The marginal ``q(x_{1:T})`` of a SIN posterior over sequences as a distribution (a sample
    site of the guide, an importance-sampling proposal): the posterior's ``rsample`` and
    ``marginal_log_prob``, its ``batch_shape``, ``num_steps`` and ``dim``.
    """

    def __init__(self, posterior, validate_args=None):
        self.posterior = posterior
        event_shape = torch.Size((posterior.num_steps, posterior.dim))
        super().__init__(posterior.batch_shape, event_shape, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size()):
        return self.posterior.rsample(sample_shape)

    def log_prob(self, value):
        return self.posterior.marginal_log_prob(value)


class SequencePrior(StructuredPrior):
    r"""
    Base of the priors ``p(x_{1:T} | θ) p(θ)`` over latent sequences with event shape ``(T, D)``.

    The model emits ``sample_latent(params, num_steps, lengths=None)`` inside a plate over
    sequences; the SIN posterior (:meth:`~pyro_sin.pgm.base.StructuredPrior.posterior`) takes
    per-step potentials of shape ``(..., T, D)``, a zero precision marking a step without evidence. Sequences padded to
    ``T`` steps pass their ``lengths`` to ``sample_latent`` and the encoder returns them in
    its :class:`~pyro_sin.potential.GaussianPotential`: the steps after a sequence's end
    then do not exist in the prior, the SIN posterior, the bound or the natural step, so
    padding changes nothing. Prediction and evaluation
    (:class:`DeepLatentSequence`) call only :meth:`latent_log_prob`, :meth:`point_estimate`,
    :meth:`proposal` and :meth:`forecast`, and, where a family has them in closed form,
    :meth:`smoothed_marginals` and :meth:`forecast_marginals`.

    """

    def check_potential(self, potential: GaussianPotential):
        """Refuses potentials that are not per step, ``(..., T, D)``, or lengths that are not one per sequence."""
        shape, lengths = potential.info_vec.shape, potential.lengths
        owner, D = f"{type(self).__name__} '{self.name}'", self.latent_dim
        if len(shape) < 2 or shape[-1] != D:
            raise ValueError(f"{owner} needs per-step potentials of shape (..., T, {D}), got {tuple(shape)}")
        if lengths is not None and lengths.shape != shape[:-2]:
            batch = tuple(shape[:-2])
            raise ValueError(f"{owner} needs one length per sequence, shape {batch}, got {tuple(lengths.shape)}")
        check_lengths(lengths, shape[-2], owner)

    def sample_latent(self, params, num_steps: int, lengths=None) -> torch.Tensor:
        """Emits ``x_{1:T} ~ p(x | θ)`` inside the user's data plate; ``lengths`` ends padded sequences."""
        check_lengths(lengths, num_steps, f"{type(self).__name__} '{self.name}'")
        return super().sample_latent(params, num_steps, lengths)

    def latent_log_prob(self, params, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``log p(x_{1:T} | θ)`` of the steps up to each sequence's end, shape ``x.shape[:-2]``."""
        raise NotImplementedError

    def point_estimate(self, global_posterior):
        """Point parameters from ``q(θ)`` (its means), as :meth:`latent_log_prob` takes them."""
        raise NotImplementedError

    def proposal(self, posterior) -> dist.TorchDistribution:
        """The SIN posterior's marginal over ``x_{1:T}`` (event ``(T, D)``), an importance-sampling proposal."""
        raise NotImplementedError

    def forecast(self, global_posterior, posterior, horizon: int, num_samples: int, lengths=None) -> torch.Tensor:
        """
        Draws of ``x_{T+1..T+H}`` after each sequence's end (its own, with ``lengths``) for
        sequences of batch ``(B,)``: the last steps from the SIN posterior, then the prior's
        dynamics with their noise (each family says whether with ``θ`` drawn from ``q(θ)`` or at
        its :meth:`point_estimate`).

        :returns: shape ``(num_samples, B, horizon, D)``.
        """
        raise NotImplementedError

    def smoothed_marginals(self, global_posterior, potential: GaussianPotential) -> Optional[LatentMarginals]:
        """
        The marginals of ``x_t`` given the frames behind ``potential`` (per-step, ``(B, T, D)``; no
        evidence where a frame is missing), under the dynamics at :meth:`point_estimate`, in closed
        form: batch ``(B, T)``. None (the default) where the family has no closed form; predictions
        then sample.
        """
        return None

    def forecast_marginals(
        self, global_posterior, potential: GaussianPotential, horizon: int
    ) -> Optional[LatentMarginals]:
        """
        The marginals of ``x_{T+1..T+H}`` after each sequence's end given the frames behind
        ``potential``, under the dynamics at :meth:`point_estimate`, in closed form: batch
        ``(B, H)``. None (the default) where the family has no closed form.
        """
        return None


class DeepLatentSequence(NameOwner):
    r"""
    A neural decoder applied frame by frame to a latent sequence prior,

    .. math:: p(y, x, \theta) = \prod_n \prod_t p_{\theta_{NN}}(y_{nt} \mid x_{nt})\,
              p(x_{n,1:T} \mid \theta)\; p(\theta).

    Call it as ``model(y, mask=None, lengths=None, indices=None)`` with sequences ``y``
    of shape ``(B, T, P)``; ``mask`` (``(B, T)``, 1 = observed) marks missing frames,
    which remain latent steps without evidence; ``lengths`` (``(B,)``, integers) ends
    sequences padded to ``T`` frames, whose padding then changes nothing: the steps
    after a sequence's end do not exist. For :func:`~pyro_sin.training.fit`, pass
    ``data=(y, mask, lengths)`` (a mask of ones when no frame is missing).

    :param SequencePrior pgm: the latent structured prior over sequences (a
        :class:`~pyro_sin.pgm.lds.LinearDynamicalSystem`, a :class:`~pyro_sin.pgm.hmm.LatentHMM`,
        a :class:`~pyro_sin.pgm.slds.SwitchingLDS`); :meth:`predict` and :meth:`log_likelihood`
        call only its prediction interface.
    :param torch.nn.Module decoder: ``x_t ↦ p(y_t | x_t)``, with a ``distribution(x)`` method
        returning a Pyro distribution with event dimension 1.
    :param int num_data: number ``N`` of training sequences.
    :param str name: prefix of the decoder's parameters in Pyro's param store (default
        ``"DeepLatentSequence"``, made unique among live models).
    """

    def __init__(self, pgm: SequencePrior, decoder: torch.nn.Module, num_data: int, name=None):
        self.pgm = pgm
        self.decoder = decoder
        self.num_data = check_num_data(num_data, type(self).__name__)
        self._claim_name(name, type(self).__name__)

    def __call__(self, y, mask=None, lengths=None, indices=None):
        check_sequence_data(y, mask, lengths, type(self).__name__)
        register_decoder(self)
        params = self.pgm.sample_params()
        with data_plate(self.num_data, y, indices):
            x = self.pgm.sample_latent(params, y.shape[-2], lengths)
            pyro.sample("y", frame_likelihood(self.decoder, x, observed_frames(y, mask, lengths)), obs=y)

    def create_plates(self, y, mask=None, lengths=None, indices=None):
        return data_plate(self.num_data, y, indices)

    @staticmethod
    def encoder_input(y, mask=None, lengths=None, indices=None):
        check_sequence_data(y, mask, lengths, "DeepLatentSequence")
        if lengths is None:
            return y if mask is None else (y, mask)
        return (y, y.new_ones(y.shape[:-1]) if mask is None else mask, lengths)

    def make_guide(self, encoder, **kwargs) -> SINGuide:
        """
        A :class:`~pyro_sin.SINGuide` whose encoder receives ``y``, ``(y, mask)`` or
        ``(y, mask, lengths)``; with lengths it must return them in its
        :class:`~pyro_sin.potential.GaussianPotential` (as the encoders of
        :mod:`pyro_sin.nn` do).
        """
        return SINGuide(
            self, self.pgm, encoder, create_plates=self.create_plates, encoder_input=self.encoder_input, **kwargs
        )

    # ----- evaluation ------------------------------------------------------------------

    @torch.no_grad()
    def posterior(self, guide: SINGuide, y, mask=None, lengths=None):
        return guide.local_posterior(self.encoder_input(y, mask, lengths))

    def _closed_form(self, guide: SINGuide, y, mask, lengths, horizon: Optional[int]) -> Optional[LatentMarginals]:
        """The prior's closed-form marginals of the observed steps (``horizon`` None) or of the future ones."""
        potential = guide.encode(self.encoder_input(y, mask, lengths))
        if horizon is None:
            return self.pgm.smoothed_marginals(guide.global_posterior(), potential)
        return self.pgm.forecast_marginals(guide.global_posterior(), potential, horizon)

    def _decoded(self, marginals: Optional[LatentMarginals], draw, num_samples: int, return_stderr: bool):
        """The decoded mean: from closed-form ``marginals``, or else over ``num_samples`` latent draws ``draw(S)``."""
        if marginals is not None:
            mean = evaluation.decoded_marginal_mean(self.decoder, marginals)
            return evaluation.Prediction(mean, torch.zeros_like(mean)) if return_stderr else mean
        prediction = evaluation.sampled_mean(evaluation.decoded_mean(self.decoder, draw(num_samples)))
        return prediction if return_stderr else prediction.mean

    @torch.no_grad()
    def decode_posterior(
        self,
        guide: SINGuide,
        y,
        mask=None,
        num_samples: int = DEFAULT_SAMPLES,
        lengths=None,
        closed_form: bool = True,
        return_stderr: bool = False,
    ):
        """
        ``E[y_t | observed frames]`` for every frame, the missing ones (``mask == 0``) imputed,
        shape ``(B, T, P)`` (meaningless after a sequence's end).

        In closed form where the prior has one (:meth:`~pyro_sin.pgm.sequence.SequencePrior.smoothed_marginals`: for the
        LDS, Kalman smoothing under the posterior-mean dynamics), decoded by
        :func:`~pyro_sin.evaluation.decoded_marginal_mean` (exact for a decoder whose mean is
        linear in ``x``); otherwise, or with ``closed_form=False``, the mean over ``num_samples``
        draws from the SIN posterior.

        :param bool return_stderr: return an :class:`~pyro_sin.evaluation.Prediction`, the mean
            with its Monte Carlo standard error (zero in closed form).
        """
        closed = self._closed_form(guide, y, mask, lengths, None) if closed_form else None
        return self._decoded(
            closed, lambda S: self.posterior(guide, y, mask, lengths).rsample((S,)), num_samples, return_stderr
        )

    @torch.no_grad()
    def predict(
        self,
        guide: SINGuide,
        y_observed,
        horizon: int,
        num_samples: int = DEFAULT_SAMPLES,
        mask=None,
        lengths=None,
        closed_form: bool = True,
        return_stderr: bool = False,
    ):
        """
        The mean of frames ``T+1 .. T+horizon`` after the observed ones (after each sequence's own
        end when ``lengths`` are given), shape ``(B, horizon, P)``.

        In closed form where the prior has one (:meth:`~pyro_sin.pgm.sequence.SequencePrior.forecast_marginals`: for the
        LDS, the Kalman predictive moments under the posterior-mean dynamics), decoded by
        :func:`~pyro_sin.evaluation.decoded_marginal_mean`; otherwise, or with
        ``closed_form=False``, the mean over ``num_samples`` draws of ``x_T`` from the SIN
        posterior rolled forward by :meth:`~pyro_sin.pgm.sequence.SequencePrior.forecast`, decoded.

        :param bool return_stderr: return an :class:`~pyro_sin.evaluation.Prediction`, the mean
            with its Monte Carlo standard error (zero in closed form).
        """
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        closed = self._closed_form(guide, y_observed, mask, lengths, horizon) if closed_form else None

        def draw(S):
            posterior = self.posterior(guide, y_observed, mask, lengths)
            return self.pgm.forecast(guide.global_posterior(), posterior, horizon, S, lengths)  # (S, B, H, D)

        return self._decoded(closed, draw, num_samples, return_stderr)

    @torch.no_grad()
    def log_likelihood(
        self, guide: SINGuide, y, num_samples: int = 100, mask=None, lengths=None
    ) -> evaluation.Estimate:
        r"""
        ``log p(y_{1:T})`` (of the observed frames) of every sequence under the
        posterior-mean parameters, by importance sampling with the SIN posterior as
        proposal (for an HMM its marginal over ``x``, the states summed out; see
        :func:`~pyro_sin.evaluation.log_likelihood`).
        """
        params = self.pgm.point_estimate(guide.global_posterior())
        # a draw of x_{1:T} passes through T Gaussians of dimension 2D per sequence: batches of sequences bound that
        per_sequence = num_samples * y.shape[-2] * (2 * self.pgm.latent_dim) ** 2
        size = max(1, evaluation.MAX_ELEMENTS // per_sequence)
        estimates = []
        for start in range(0, len(y), size):
            rows = slice(start, start + size)
            batch_mask, batch_lengths = (None if t is None else t[rows] for t in (mask, lengths))
            proposal = self.pgm.proposal(self.posterior(guide, y[rows], batch_mask, batch_lengths))
            observed = observed_frames(y[rows], batch_mask, batch_lengths)
            estimates.append(
                evaluation.log_likelihood(
                    y[rows],
                    lambda x: frame_likelihood(self.decoder, x, observed),
                    lambda x: self.pgm.latent_log_prob(params, x, batch_lengths),
                    proposal,
                    num_samples,
                )
            )
        return evaluation.concatenate(estimates)

    @torch.no_grad()
    def test_log_likelihood(self, guide: SINGuide, y, num_samples: int = 100, mask=None, lengths=None) -> float:
        """The mean over sequences of :meth:`log_likelihood`."""
        return self.log_likelihood(guide, y, num_samples, mask, lengths).mean
