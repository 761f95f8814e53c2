r"""
The SAN paper's deep latent Gaussian mixture,

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

from ... import evaluation
from ...guide import SINGuide
from ...models import check_num_data, data_plate, register_decoder
from ...naming import NameOwner
from .gaussian import GaussianMixture


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
        self.num_data = check_num_data(num_data, type(self).__name__)
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
        y = guide.as_input(y)
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
        y = guide.as_input(y)
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
        y = guide.as_input(y)
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
