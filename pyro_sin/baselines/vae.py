r"""
A plain Pyro VAE with the same networks as SAN: ``x ~ N(0, I)``,
``y | x ~ p_θNN(y | x)``, ``q(x | y) = N(J⁻¹h, J⁻¹)`` from the encoder's potential.
"""

import torch

import pyro
import pyro.distributions as dist

from ..metrics import importance_log_likelihood, weighted_mse
from ..models import data_plate


class VAE:
    """
    :param encoder: a :class:`~pyro_sin.nn.GaussianEncoder`.
    :param decoder: a :class:`~pyro_sin.nn.GaussianDecoder`.
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
    def test_mse(self, y, num_samples: int = 100) -> float:
        """The weighted test MSE with a single component (``r = 1``)."""
        x = self.posterior(y).sample((num_samples,))
        loc, _ = self.decoder(x)
        return float(weighted_mse(y, y.new_ones(len(y), 1), loc[:, :, None, :]))

    @torch.no_grad()
    def test_log_likelihood(self, y, num_samples: int = 100) -> float:
        """Mean ``log p(y_n)`` by importance sampling with ``q(x | y)`` as proposal."""
        q = self.posterior(y)
        x = q.sample((num_samples,))
        log_joint = self.decoder.distribution(x).log_prob(y) + self.prior(y).log_prob(x)
        return float(importance_log_likelihood(log_joint, q.log_prob(x)).mean())
