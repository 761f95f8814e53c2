"""Small models shared by the tests."""

import torch

import pyro

from pyro_sin.models import DeepLatentMixture
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import GaussianMixture


def tiny_mixture_model(num_data=20, K=3, D=2, data_dim=2, hidden=(8,), seed=0, factor="tied"):
    """A small deep latent mixture, its SIN guide, and data."""
    pyro.set_rng_seed(seed)
    y = torch.randn(num_data, data_dim) * 3
    gmm = GaussianMixture(K, D, concentration=1.0)
    model = DeepLatentMixture(gmm, GaussianDecoder(D, data_dim, hidden), num_data)
    guide = model.make_guide(GaussianEncoder(data_dim, D, hidden), factor=factor)
    return model, guide, y


def random_spd(batch, D, scale=1.0):
    """A random symmetric positive definite matrix (batch of them), well conditioned."""
    A = torch.randn(batch + (D, D))
    return scale * (A @ A.transpose(-1, -2) / D + torch.eye(D))
