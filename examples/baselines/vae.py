r"""
A plain Pyro VAE with the same networks as SAN: ``x ~ N(0, I)``,
``y | x ~ p_θNN(y | x)``, ``q(x | y) = N(J⁻¹h, J⁻¹)`` from the encoder's potential.
"""

import torch

import pyro
import pyro.distributions as dist

from pyro_sin import evaluation
from pyro_sin.models import data_plate


class VAE:
    """
    :param encoder: a :class:`~pyro_sin.nn.GaussianEncoder`.
    :param decoder: a module with ``distribution(x)`` (e.g. :class:`~pyro_sin.nn.GaussianDecoder`).
    :param int num_data: size of the training set.
    """

    def __init__(self, encoder, decoder, num_data: int):
        self.encoder, self.decoder, self.num_data = encoder, decoder, num_data
        self.latent_dim = encoder.out_dim

    def prior(self, like: torch.Tensor):
        zeros = like.new_zeros(self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def model(self, y, indices=None):
        pyro.module("decoder", self.decoder)
        with data_plate(self.num_data, y, indices):
            x = pyro.sample("x", self.prior(y))
            pyro.sample("y", self.decoder.distribution(x), obs=y)

    def posterior(self, y) -> dist.Normal:
        potential = self.encoder(y)
        return dist.Normal(potential.mean, potential.precision.rsqrt()).to_event(1)

    def guide(self, y, indices=None):
        pyro.module("encoder", self.encoder)
        with data_plate(self.num_data, y, indices):
            pyro.sample("x", self.posterior(y))

    @torch.no_grad()
    def reconstruction_error(self, y, num_samples: int = 100) -> evaluation.Estimate:
        """``E_q(x|y_n) ‖y_n - E[y | x]‖²`` of every point (one component, ``r = 1``)."""
        return evaluation.reconstruction_error(self.decoder, y, self.posterior(y), num_samples=num_samples)

    @torch.no_grad()
    def test_mse(self, y, num_samples: int = 100) -> float:
        """The weighted test MSE with a single component: the mean of :meth:`reconstruction_error`."""
        return self.reconstruction_error(y, num_samples).mean

    @torch.no_grad()
    def log_likelihood(self, y, num_samples: int = 100) -> evaluation.Estimate:
        """``log p(y_n)`` of every point by importance sampling with ``q(x | y)`` as proposal."""
        return evaluation.log_likelihood(
            y, self.decoder.distribution, self.prior(y).log_prob, self.posterior(y), num_samples
        )

    @torch.no_grad()
    def test_log_likelihood(self, y, num_samples: int = 100) -> float:
        """The mean over points of :meth:`log_likelihood`."""
        return self.log_likelihood(y, num_samples).mean

    @torch.no_grad()
    def impute(self, y, observed, num_samples: int = 1000, rounds: int = 2) -> evaluation.Imputation:
        """
        The missing features of ``y`` imputed by ``E[y_m | y_o]`` under the learned model
        (see :meth:`pyro_sin.models.DeepLatentMixture.impute`): importance sampling from the
        prior first, then from the encoder's posterior of the filled-in point mixed with the prior.
        """
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        prior = self.prior(y)
        result = evaluation.conditional_mean(y, observed, self.decoder.distribution, prior, None, num_samples)
        for _ in range(rounds - 1):
            proposal = self.posterior(result.values)
            result = evaluation.conditional_mean(y, observed, self.decoder.distribution, prior, proposal, num_samples)
        return result
