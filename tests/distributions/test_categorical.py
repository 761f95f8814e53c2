import torch

import pyro.distributions as dist
from pyro.ops.indexing import Vindex

from pyro_sin.distributions import Categorical
from pyro_sin.pgm.mixture import take_component


def test_inverse_cdf_sampler_draws_the_categorical_frequencies():
    torch.manual_seed(0)
    logits = torch.randn(3, 5) * 2
    draws = Categorical(logits=logits).expand((4000, 3)).sample()  # (4000, 3)
    assert draws.shape == (4000, 3) and draws.dtype == torch.long
    counts = torch.stack([torch.bincount(draws[:, b], minlength=5) for b in range(3)]).double()
    expected = 4000 * torch.softmax(logits, -1)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45  # 12 degrees of freedom: p < 1e-4 for larger values
    # zero-probability categories are never drawn
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5])
    assert set(Categorical(probs=probs).sample((2000,)).tolist()) == {1, 3}
    assert torch.equal(Categorical(logits=logits).log_prob(draws), dist.Categorical(logits=logits).log_prob(draws))


def test_take_component_is_vindex():
    values = torch.randn(6, 4, 2, 2)  # (B, K, D, D)
    for z in (torch.randint(4, (6,)), torch.randint(4, (3, 6)), torch.arange(4).reshape(4, 1)):
        assert torch.equal(take_component(values, z, 2), Vindex(values)[..., z, :, :])
        assert torch.equal(take_component(values[..., 0], z, 1), Vindex(values[..., 0])[..., z, :])
