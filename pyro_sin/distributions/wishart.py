"""A Wishart distribution whose ``rsample`` is the plain Bartlett construction."""

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
    gradients in ``df``), so we return it directly.
    """

    def rsample(self, sample_shape=torch.Size()):
        return self._bartlett_sampling(torch.Size(sample_shape))
