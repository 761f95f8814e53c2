"""A Categorical distribution whose sampler costs one lookup per draw."""

import torch

import pyro.distributions as dist


class Categorical(dist.Categorical):
    r"""
    :class:`pyro.distributions.Categorical` sampled by inverting its CDF,

    .. math:: z = \min\{k : \textstyle\sum_{j \le k} \pi_j > u\},\qquad u \sim U(0, 1),

    which is exact and, for a batch broadcast over particles, several times faster
    than torch's sampler (one ``multinomial`` row per draw).
    """

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        cdf = self.probs.cumsum(-1)
        cdf = cdf.expand(shape + cdf.shape[-1:]).contiguous()
        u = torch.rand(shape + (1,), dtype=cdf.dtype, device=cdf.device) * cdf[..., -1:]
        return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
