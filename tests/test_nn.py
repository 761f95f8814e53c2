import pytest
import torch
from torch.testing import assert_close

import pyro.distributions as dist

from pyro_sin.nn import (
    BernoulliDecoder,
    GaussianDecoder,
    PoissonDecoder,
    make_decoder,
    mirrored_autoencoder,
)

LATENT, DATA = 3, 5


def observations(likelihood, shape):
    if likelihood == "gaussian":
        return 2 * torch.randn(shape)
    if likelihood == "bernoulli":
        return torch.randint(0, 2, shape).to(torch.get_default_dtype())
    return torch.poisson(3 * torch.ones(shape))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "poisson"])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_decoder_distribution_shapes(likelihood, batch):
    decoder = make_decoder(likelihood, LATENT, DATA, (7,))
    d = decoder.distribution(torch.randn(batch + (LATENT,)))
    assert d.batch_shape == batch and d.event_shape == (DATA,)
    assert d.mean.shape == batch + (DATA,)
    assert d.log_prob(observations(likelihood, batch + (DATA,))).shape == batch


def torch_reference(decoder, x):
    """The same likelihood built from torch.distributions on the decoder's raw outputs."""
    if isinstance(decoder, GaussianDecoder):
        loc, scale = decoder(x)
        return torch.distributions.Normal(loc, scale), loc
    if isinstance(decoder, BernoulliDecoder):
        logits = decoder(x)
        return torch.distributions.Bernoulli(logits=logits), torch.sigmoid(logits)
    rate = decoder(x)
    return torch.distributions.Poisson(rate), rate


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "poisson"])
def test_decoder_log_prob_and_mean_match_torch(likelihood):
    decoder = make_decoder(likelihood, LATENT, DATA, (7,))
    x = 3 * torch.randn(6, LATENT)
    y = observations(likelihood, (6, DATA))
    reference, mean = torch_reference(decoder, x)
    d = decoder.distribution(x)
    assert_close(d.log_prob(y), reference.log_prob(y).sum(-1))
    assert_close(d.mean, mean)
    assert_close(d.mean, reference.mean)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "poisson"])
def test_gradients_reach_every_decoder_parameter(likelihood):
    decoder = make_decoder(likelihood, LATENT, DATA, (7,))
    x = torch.randn(6, LATENT, requires_grad=True)
    decoder.distribution(x).log_prob(observations(likelihood, (6, DATA))).sum().backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gaussian_decoder_scale_floor():
    """σ² = learned variance + σ_min², so σ ≥ σ_min even where the learned part vanishes."""
    floor = torch.linspace(0.1, 1.0, DATA)
    free = GaussianDecoder(LATENT, DATA, (7,))
    floored = GaussianDecoder(LATENT, DATA, (7,), min_scale=floor)
    floored.load_state_dict({**free.state_dict(), "min_scale": floor})
    with torch.no_grad():  # a learned variance that has collapsed
        for decoder in (free, floored):
            decoder.second.bias.fill_(-60.0)
    x = torch.randn(10, LATENT)
    (loc, scale_free), (loc_floored, scale) = free(x), floored(x)
    assert_close(loc, loc_floored)
    assert (scale_free < 1e-12).all()
    assert_close(scale, floor.expand(10, DATA))
    assert (scale >= floor).all()
    scalar = GaussianDecoder(LATENT, DATA, (7,), min_scale=0.5)
    assert_close(scalar.min_scale, torch.full((DATA,), 0.5))


def test_gaussian_decoder_default_is_unfloored():
    decoder = GaussianDecoder(LATENT, DATA, (7,), init_variance=0.3)
    _, scale = decoder(torch.randn(4, LATENT))
    assert_close(scale, torch.full((4, DATA), 0.3**0.5), atol=0.01, rtol=0)
    assert (decoder.min_scale == 0).all()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), torch.ones(DATA + 1), torch.ones(2, DATA)])
def test_gaussian_decoder_rejects_bad_floors(bad):
    with pytest.raises(ValueError, match="min_scale"):
        GaussianDecoder(LATENT, DATA, (7,), min_scale=bad)


def test_poisson_rate_is_positive_and_finite_at_extremes():
    decoder = PoissonDecoder(LATENT, DATA, (7,))
    with torch.no_grad():
        decoder.first.bias.copy_(torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4]))
    rate = decoder(torch.zeros(2, LATENT))
    assert (rate > 0).all() and torch.isfinite(rate).all()
    y = torch.tensor([[3.0, 0.0, 1.0, 50.0, 1e4]] * 2)
    assert torch.isfinite(decoder.distribution(torch.zeros(2, LATENT)).log_prob(y)).all()
    with pytest.raises(ValueError, match="min_rate"):
        PoissonDecoder(LATENT, DATA, min_rate=0.0)


def test_bernoulli_decoder_rejects_non_binary_data_under_validation():
    decoder = BernoulliDecoder(LATENT, DATA, (7,))
    with pytest.raises(ValueError):
        decoder.distribution(torch.zeros(1, LATENT)).log_prob(torch.full((1, DATA), 0.5))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "poisson"])
def test_mirrored_autoencoder_builds_the_matching_decoder(likelihood):
    scale = 2.5
    encoder, decoder = mirrored_autoencoder(DATA, LATENT, (7,), scale=scale, likelihood=likelihood)
    expected = {"gaussian": GaussianDecoder, "bernoulli": BernoulliDecoder, "poisson": PoissonDecoder}
    assert type(decoder) is expected[likelihood]
    assert isinstance(decoder.distribution(torch.randn(2, LATENT)), dist.Independent)
    # the shortcuts are inverse maps: y ↦ h / J ↦ decoder shortcut is an orthogonal projection
    encode = encoder.shortcut.weight / encoder.init_precision  # y ↦ J⁻¹h
    roundtrip = decoder.shortcut.weight @ encode
    assert_close(roundtrip @ roundtrip, roundtrip)
    assert_close(roundtrip, roundtrip.T)
    assert_close(torch.trace(roundtrip), torch.tensor(float(LATENT)))
    with pytest.raises(ValueError, match="unknown likelihood"):
        mirrored_autoencoder(DATA, LATENT, likelihood="cauchy")


def test_mirrored_autoencoder_default_is_unchanged():
    """The default decoder is Gaussian with the given initial variance and no floor."""
    _, decoder = mirrored_autoencoder(DATA, LATENT, (7,), scale=2.0, init_variance=0.25)
    assert type(decoder) is GaussianDecoder and (decoder.min_scale == 0).all()
    _, scale = decoder(torch.randn(3, LATENT))
    assert_close(scale, torch.full((3, DATA), 0.5), atol=0.01, rtol=0)
    _, floored = mirrored_autoencoder(DATA, LATENT, (7,), min_scale=0.1)
    assert_close(floored.min_scale, torch.full((DATA,), 0.1))


def test_mirrored_autoencoder_starts_on_a_given_basis():
    basis = torch.linalg.qr(torch.randn(DATA, LATENT))[0].T  # (LATENT, DATA), orthonormal rows
    encoder, decoder = mirrored_autoencoder(DATA, LATENT, (7,), scale=2.0, basis=basis)
    assert_close(encoder.shortcut.weight, (encoder.init_precision / 2.0) * basis)
    assert_close(decoder.shortcut.weight, 2.0 * basis.T)
    with pytest.raises(ValueError, match="shape"):
        mirrored_autoencoder(DATA, LATENT, basis=basis.T)
    with pytest.raises(ValueError, match="orthonormal"):
        mirrored_autoencoder(DATA, LATENT, basis=2 * basis)


def test_body_gain_gives_hidden_features_while_the_network_still_starts_as_its_shortcut():
    from pyro_sin.nn import TwoHeadedMLP

    x = 2 * torch.randn(500, 2)
    small, scaled = TwoHeadedMLP(2, 3), TwoHeadedMLP(2, 3, body_gain=1.0)
    # with every weight small the hidden features are all near zero (a saddle point) ...
    assert small.body(x).std() < 0.05
    # ... with LeCun-scaled hidden layers they spread, and the heads still start small
    assert scaled.body(x).std() > 0.3
    first, _ = scaled(x)
    assert (first - scaled.shortcut(x)).abs().max() < 0.2
    with pytest.raises(ValueError, match="body_gain"):
        TwoHeadedMLP(2, 3, body_gain=0.0)
