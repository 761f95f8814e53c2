r"""
Ready-made deep generative models with a structured latent prior.

:class:`DeepLatentMixture` is the SAN paper's model,

.. math:: p(y, x, z, \theta) = \prod_n p_{\theta_{NN}}(y_n \mid x_n)\, p(x_n \mid z_n, \theta)\,
          p(z_n \mid \pi)\; p(\theta),

written as an ordinary Pyro program; its evaluation helpers compute the
paper's metrics from a trained :class:`~pyro_sin.SINGuide`.
"""

import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import Predictive

from . import evaluation
from .guide import SINGuide
from .naming import NameOwner
from .pgm.lds import last_step, rollout  # noqa: F401  (re-exported: the baselines roll LDS dynamics forward)
from .pgm.mixture import GaussianMixture


def data_plate(num_data: int, y: torch.Tensor, indices=None) -> pyro.plate:
    """
    The plate over data points: ``y`` is the minibatch, ``indices`` its rows in
    the full data set (random ones when omitted; only the scale ``N/|B|`` matters then).
    """
    size = len(y) if indices is None else len(indices)
    if size == 0:
        raise ValueError("the minibatch is empty: pass at least one data point")
    if indices is not None:
        return pyro.plate("data", num_data, subsample=indices)
    if len(y) >= num_data:  # a data set of its own (e.g. held-out data larger than N)
        return pyro.plate("data", len(y))
    return pyro.plate("data", num_data, subsample_size=len(y))


def register_decoder(model):
    """
    Registers ``model.decoder`` under ``"<model name>.decoder"``, adopting values already in
    the param store (a loaded checkpoint), so that the tensors Adam trains are the decoder's.
    """
    model._mark_registered()
    pyro.module(f"{model.param_prefix}.decoder", model.decoder, update_module_params=True)


class DeepLatentMixture(NameOwner):
    r"""
    A neural decoder on top of a latent mixture prior.

    :param GaussianMixture pgm: the latent structured prior.
    :param torch.nn.Module decoder: ``x ↦ p(y | x)``, with a ``distribution(x)`` method
        returning a Pyro distribution with event dimension 1 (e.g.
        :class:`~pyro_sin.nn.GaussianDecoder`).
    :param int num_data: size ``N`` of the training set (for the minibatch scale).
    :param str name: prefix of the decoder's parameters in Pyro's param store (default
        ``"DeepLatentMixture"``, made unique among live models; see :mod:`pyro_sin.naming`).
    """

    def __init__(self, pgm: GaussianMixture, decoder: torch.nn.Module, num_data: int, name=None):
        self.pgm = pgm
        self.decoder = decoder
        self.num_data = num_data
        self._claim_name(name, type(self).__name__)

    def __call__(self, y, indices=None):
        register_decoder(self)
        params = self.pgm.sample_params()
        with data_plate(self.num_data, y, indices):
            x = self.pgm.sample_latent(params)
            pyro.sample("y", self.decoder.distribution(x), obs=y)

    def create_plates(self, y, indices=None):
        """For :class:`~pyro_sin.SINGuide`'s ``create_plates``: the same data plate."""
        return data_plate(self.num_data, y, indices)

    def make_guide(self, encoder, **kwargs) -> SINGuide:
        """A :class:`~pyro_sin.SINGuide` for this model."""
        return SINGuide(self, self.pgm, encoder, create_plates=self.create_plates, **kwargs)

    def posterior_predictive(self, guide: SINGuide, y, num_samples: int = 100, return_sites=("y",)):
        r"""
        Replicated data for posterior predictive checks on ``y`` (training or new data, any
        number of rows): draws of ``y_rep ~ p(y_rep | x) q(x | y) q(θ)`` from Pyro's
        :class:`~pyro.infer.Predictive` on the *unconditioned* model (the conditioned one
        would return ``y`` itself).

        :returns: a dict of samples, e.g. ``["y"]`` of shape ``(num_samples,) + y.shape``.
        """
        predictive = Predictive(
            poutine.uncondition(self), guide=guide, num_samples=num_samples, return_sites=list(return_sites)
        )
        with torch.no_grad():
            return predictive(y)

    # ----- evaluation -------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, guide: SINGuide, y, num_samples: int = 100):
        """
        :returns: ``(r, ŷ)``: assignment probabilities ``(N, K)`` and decoder means of
            ``num_samples`` draws from every component's posterior, ``(S, N, K, P)``.
        """
        post = guide.local_posterior(y)
        return post.probs, evaluation.decoded_mean(self.decoder, post.rsample_components((num_samples,)))

    @torch.no_grad()
    def reconstruction_error(self, guide: SINGuide, y, num_samples: int = 100) -> evaluation.Estimate:
        """The weighted reconstruction error of every point (see :func:`~pyro_sin.evaluation.reconstruction_error`)."""
        post = guide.local_posterior(y)
        return evaluation.reconstruction_error(self.decoder, y, _components(post), post.probs, num_samples)

    @torch.no_grad()
    def test_mse(self, guide: SINGuide, y, num_samples: int = 100) -> float:
        """The paper's weighted test MSE: the mean of :meth:`reconstruction_error`."""
        return self.reconstruction_error(guide, y, num_samples).mean

    @torch.no_grad()
    def log_likelihood(self, guide: SINGuide, y, num_samples: int = 100) -> evaluation.Estimate:
        r"""
        ``log p(y_n)`` of every point under the posterior-mean PGM parameters, by
        importance sampling with the SIN marginal ``q(x_n | y_n) = Σ_k r_nk q(x_n | z_n = k)``
        as proposal (see :func:`~pyro_sin.evaluation.log_likelihood`).
        """
        post = guide.local_posterior(y)
        params = self.pgm.point_estimate(guide.global_posterior())
        proposal = dist.MixtureSameFamily(dist.Categorical(logits=post.log_probs), _components(post))
        return evaluation.log_likelihood(
            y, self.decoder.distribution, lambda x: self.pgm.latent_log_prob(params, x), proposal, num_samples
        )

    @torch.no_grad()
    def test_log_likelihood(self, guide: SINGuide, y, num_samples: int = 100) -> float:
        """The mean over points of :meth:`log_likelihood`."""
        return self.log_likelihood(guide, y, num_samples).mean

    @torch.no_grad()
    def impute(
        self, guide: SINGuide, y, observed, num_samples: int = 1000, rounds: int = 2
    ) -> evaluation.Imputation:
        r"""
        The missing features of ``y`` imputed by ``E[y_m | y_o]`` under the learned
        generative model (posterior-mean PGM parameters), conditioning on the observed
        features alone by importance sampling (see :func:`~pyro_sin.evaluation.conditional_mean`).
        The first round proposes from the latent mixture prior; each later round from the
        SIN posterior of the point as the round before filled it in, mixed with the prior.

        :param observed: boolean, ``(P,)`` or ``(N, P)``: True where a feature is observed.
        :returns: an :class:`~pyro_sin.evaluation.Imputation`.
        """
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        params = self.pgm.point_estimate(guide.global_posterior())
        prior = dist.MixtureSameFamily(dist.Categorical(params.weights), self.pgm.components(params))
        result = evaluation.conditional_mean(y, observed, self.decoder.distribution, prior, None, num_samples)
        for _ in range(rounds - 1):
            post = guide.local_posterior(result.values)
            proposal = dist.MixtureSameFamily(dist.Categorical(logits=post.log_probs), _components(post))
            result = evaluation.conditional_mean(y, observed, self.decoder.distribution, prior, proposal, num_samples)
        return result

    @torch.no_grad()
    def cluster(self, guide: SINGuide, y) -> torch.Tensor:
        """The most probable component of each point, ``argmax_k r_nk``."""
        return evaluation.cluster(guide.local_posterior(y).log_probs)

    @torch.no_grad()
    def generate(self, guide: SINGuide, num_samples: int = None, *, component_ids=None, draw: bool = False):
        """
        Samples of the learned generative model under the posterior-mean parameters
        (see :func:`~pyro_sin.evaluation.generate`).

        :param component_ids: sample these components, shape ``(S,)``, instead of ``z ~ Cat(π)``.
        :param bool draw: return draws of ``y`` instead of decoder means.
        :returns: ``(y, z, weights)``: decoder means (or draws) ``(S, P)``, components ``(S,)``
            and the mixture weights ``(K,)``.
        """
        params = self.pgm.point_estimate(guide.global_posterior())
        samples = evaluation.generate(
            self.decoder, params.weights, self.pgm.components(params), num_samples, component_ids
        )
        return samples.draw if draw else samples.mean, samples.components, params.weights

    @torch.no_grad()
    def component_means(self, guide: SINGuide) -> torch.Tensor:
        """The decoder's mean at each component's posterior-mean location, ``(K, P)``."""
        params = self.pgm.point_estimate(guide.global_posterior())
        return evaluation.decoded_mean(self.decoder, params.locs)


def _components(post) -> dist.MultivariateNormal:
    """The per-component SIN posteriors ``q(x_n | z_n = k)`` as a distribution with batch ``(N, K)``."""
    return dist.MultivariateNormal(post.loc, scale_tril=post.scale_tril)


def frame_likelihood(decoder, x, mask=None):
    """``p(y_{1:T} | x_{1:T})`` with independent frames; missing frames (``mask == 0``) drop out."""
    frames = decoder.distribution(x)  # batch (..., T), event (P,)
    if mask is not None:
        frames = frames.mask(mask.bool())
    return frames.to_event(1)


def observed_frames(y, mask=None, lengths=None):
    """
    ``(B, T)``: True at the frames whose likelihood counts, those observed (``mask``)
    and before their sequence's end (``lengths``); None when every frame counts.
    """
    if lengths is None:
        return None if mask is None else mask.bool()
    steps = torch.arange(y.shape[-2], device=lengths.device) < lengths[..., None]
    return steps if mask is None else steps & mask.bool()


class DeepLatentLDS(NameOwner):
    r"""
    A neural decoder applied frame by frame to a latent linear dynamical system,

    .. math:: p(y, x, \theta) = \prod_n \prod_t p_{\theta_{NN}}(y_{nt} \mid x_{nt})\,
              p(x_{n,1:T} \mid \theta)\; p(\theta).

    Call it as ``model(y, mask=None, lengths=None, indices=None)`` with sequences ``y``
    of shape ``(B, T, P)``; ``mask`` (``(B, T)``, 1 = observed) marks missing frames,
    which remain latent steps without evidence; ``lengths`` (``(B,)``, integers) ends
    sequences padded to ``T`` frames, whose padding then changes nothing: the steps
    after a sequence's end do not exist. For :func:`~pyro_sin.training.fit`, pass
    ``data=(y, mask, lengths)`` (a mask of ones when no frame is missing).

    :param pgm: the latent structured prior over sequences: a
        :class:`~pyro_sin.pgm.LinearDynamicalSystem`, a :class:`~pyro_sin.pgm.LatentHMM`, or any
        prior with the same prediction interface (``forecast``, ``proposal``,
        ``latent_log_prob``; :meth:`predict` and :meth:`log_likelihood` call only these).
    :param torch.nn.Module decoder: ``x_t ↦ p(y_t | x_t)``, with a ``distribution(x)`` method
        returning a Pyro distribution with event dimension 1.
    :param int num_data: number ``N`` of training sequences.
    :param str name: prefix of the decoder's parameters in Pyro's param store (default
        ``"DeepLatentLDS"``, made unique among live models).
    """

    def __init__(self, pgm, decoder: torch.nn.Module, num_data: int, name=None):
        self.pgm = pgm
        self.decoder = decoder
        self.num_data = num_data
        self._claim_name(name, type(self).__name__)

    def __call__(self, y, mask=None, lengths=None, indices=None):
        register_decoder(self)
        params = self.pgm.sample_params()
        with data_plate(self.num_data, y, indices):
            x = self.pgm.sample_latent(params, y.shape[-2], lengths)
            pyro.sample("y", frame_likelihood(self.decoder, x, observed_frames(y, mask, lengths)), obs=y)

    def create_plates(self, y, mask=None, lengths=None, indices=None):
        return data_plate(self.num_data, y, indices)

    @staticmethod
    def encoder_input(y, mask=None, lengths=None, indices=None):
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

    # ----- evaluation -------------------------------------------------------------

    @torch.no_grad()
    def posterior(self, guide: SINGuide, y, mask=None, lengths=None):
        return guide.local_posterior(self.encoder_input(y, mask, lengths))

    @torch.no_grad()
    def decode_posterior(self, guide: SINGuide, y, mask=None, num_samples: int = 50, lengths=None):
        """Mean decoded frames under the SIN posterior, shape ``(B, T, P)`` (meaningless after a sequence's end)."""
        x = self.posterior(guide, y, mask, lengths).rsample((num_samples,))
        return evaluation.decoded_mean(self.decoder, x).mean(0)

    @torch.no_grad()
    def predict(self, guide: SINGuide, y_observed, horizon: int, num_samples: int = 50, mask=None, lengths=None):
        """
        Mean decoded frames ``T+1 .. T+horizon`` after the observed ones (after each
        sequence's own end when ``lengths`` are given): ``x_T`` from the SIN posterior,
        then the model's dynamics rolled forward with ``θ ~ q(θ)`` and process noise,
        decoded and averaged over samples.

        :returns: shape ``(B, horizon, P)``.
        """
        posterior = self.posterior(guide, y_observed, mask, lengths)
        future = self.pgm.forecast(guide.global_posterior(), posterior, horizon, num_samples, lengths)  # (S, B, H, D)
        return evaluation.decoded_mean(self.decoder, future).mean(0)

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
        proposal = self.pgm.proposal(self.posterior(guide, y, mask, lengths))
        params = self.pgm.point_estimate(guide.global_posterior())
        observed = observed_frames(y, mask, lengths)
        return evaluation.log_likelihood(
            y,
            lambda x: frame_likelihood(self.decoder, x, observed),
            lambda x: self.pgm.latent_log_prob(params, x, lengths),
            proposal,
            num_samples,
        )

    @torch.no_grad()
    def test_log_likelihood(self, guide: SINGuide, y, num_samples: int = 100, mask=None, lengths=None) -> float:
        """The mean over sequences of :meth:`log_likelihood`."""
        return self.log_likelihood(guide, y, num_samples, mask, lengths).mean
