"""A Wishart distribution whose ``rsample`` is the plain Bartlett construction."""

import warnings

import torch

import pyro.distributions as dist


class Wishart(dist.Wishart):
    r"""
    :class:`pyro.distributions.Wishart` with a quiet, single-pass ``rsample``.

    ``torch.distributions.Wishart.rsample`` (torch 2.x) tests its samples with
    ``support.check`` but reads the result inverted, so every draw is reported
    as "singular", warned about and drawn again. The Bartlett construction

    .. math:: \Lambda = L A A^\top L^\top,\quad A_{ii} = \sqrt{\chi^2_{\nu - i + 1}},
              \ A_{ij} \sim N(0, 1)\ (i > j)

    is exact and reparameterised (the chi-square draws carry implicit
    gradients in ``df``), so we return it directly. Degrees of freedom in
    ``(D - 1, D)`` are valid (the density exists there) and accepted without
    torch's "low df" warning.
    """

    def __init__(self, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Low df values detected")
            super().__init__(*args, **kwargs)

    def expand(self, batch_shape, _instance=None):
        new = _instance if _instance is not None else type(self).__new__(type(self))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Low df values detected")
            return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()):
        return self._bartlett_sampling(torch.Size(sample_shape))
