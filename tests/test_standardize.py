import math
from contextlib import nullcontext

import pytest
import torch

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.models import DeepLatentMixture
from pyro_sin.nn import latent_scale, mirrored_autoencoder
from pyro_sin.pgm import GaussianMixture
from pyro_sin.standardize import Standardization, principal_directions, standardized_autoencoder
from pyro_sin.training import fit


def test_standardization_round_trip_and_statistics():
    y = torch.randn(500, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -2.0, 0.0])
    for per_feature in (False, True):
        st = Standardization.fit(y, per_feature=per_feature)
        u = st(y)
        assert torch.allclose(st.inverse(u), y)
        assert torch.allclose(u.mean(0), torch.zeros(3), atol=1e-12)
    # one scale keeps the features' relative sizes: the root-mean-square spread is 1
    assert torch.allclose(Standardization.fit(y)(y).var(0, unbiased=False).mean(), torch.tensor(1.0))
    # one scale per feature floors the smallest at a tenth of the median spread
    st = Standardization.fit(y, per_feature=True)
    std = y.std(0, unbiased=False)
    assert torch.allclose(st.scale[:2], std[:2])
    assert torch.allclose(st.scale[2], torch.maximum(std[2], 0.1 * std.median()))


def test_standardization_of_constant_features_and_data():
    y = torch.randn(100, 3)
    y[:, 1] = 7.0
    for per_feature in (False, True):
        st = Standardization.fit(y, per_feature=per_feature)
        assert (st.scale > 0).all() and torch.isfinite(st(y)).all()
        assert torch.equal(st(y)[:, 1], torch.zeros(100))
    constant = torch.full((50, 4), -3.0)
    st = Standardization.fit(constant)
    assert torch.equal(st.scale, torch.full((4,), 3.0)) and torch.equal(st(constant), torch.zeros(50, 4))
    with pytest.raises(ValueError, match="NaN"):
        Standardization.fit(torch.tensor([[0.0], [math.nan]]))


def test_constant_data_build_networks_that_train():
    # used to raise ZeroDivisionError: latent_scale was 0 and the encoder divided by it
    constant = torch.full((60, 3), 2.5)
    assert latent_scale(constant) > 0
    encoder, decoder = mirrored_autoencoder(3, 2, (8,), scale=latent_scale(constant))
    assert all(torch.isfinite(p).all() for p in [*encoder.parameters(), *decoder.parameters()])

    encoder, decoder = standardized_autoencoder(constant, 2, (8,), min_scale=0.1)
    gmm = GaussianMixture(3, 2)
    model = DeepLatentMixture(gmm, decoder, len(constant))
    svi = SVI(model, model.make_guide(encoder), NaturalAdam({"lr": 0.01}), SINELBO(num_particles=2))
    with pytest.warns(RuntimeWarning, match="collapsed"):  # one point, one cluster: a collapse
        history = fit(svi, constant, iterations=30, batch_size=20, progress=False)
    assert all(math.isfinite(loss) for loss in history.losses)
    _, scale = decoder(torch.zeros(1, 2))
    assert (scale >= 0.1 * 2.5 * (1 - 1e-12)).all()  # the floor, relative to the data's scale


def test_decoder_answers_in_data_units():
    y = torch.randn(40, 3)
    pyro.set_rng_seed(1)
    _, decoder = standardized_autoencoder(y, 2, (8,))
    pyro.set_rng_seed(1)
    _, scaled = standardized_autoencoder(1e3 * y + 5.0, 2, (8,))
    x = torch.randn(10, 2)
    loc, scale = decoder(x)
    loc_c, scale_c = scaled(x)
    assert torch.allclose(loc_c, 1e3 * loc + 5.0) and torch.allclose(scale_c, 1e3 * scale)
    lp, lp_c = decoder.distribution(x).log_prob(y[:10]), scaled.distribution(x).log_prob(1e3 * y[:10] + 5.0)
    assert torch.allclose(lp_c, lp - 3 * math.log(1e3))


def _train(data, steps=25, seed=0):
    """A few SAN steps on ``data``; returns the parameter store as a dict."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    encoder, decoder = standardized_autoencoder(data, 2, (8, 8), min_scale=0.01)
    gmm = GaussianMixture(4, 2)
    model = DeepLatentMixture(gmm, decoder, len(data))
    svi = SVI(model, model.make_guide(encoder), NaturalAdam({"lr": 0.01}), SINELBO(num_particles=3))
    history = fit(svi, data, iterations=steps, batch_size=25, progress=False)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, history.losses


@pytest.mark.parametrize("factor", [1e3, 1e-6])
def test_training_is_the_same_in_any_units(factor):
    # pinwheel x 1e3 used to train to nothing and x 1e-6 to fail with a non-PD Wishart scale
    y = torch.randn(100, 2) * torch.tensor([3.0, 1.0]) + 4.0
    params, losses = _train(y)
    scaled_params, scaled_losses = _train(factor * y)
    assert params.keys() == scaled_params.keys()
    for name, value in params.items():  # the same run, up to rounding
        assert torch.allclose(value, scaled_params[name], rtol=1e-9, atol=1e-12), name
    # the bound per point differs by the Jacobian of the change of units, D log c
    shift = torch.tensor(scaled_losses) - torch.tensor(losses)
    assert torch.allclose(shift, torch.full_like(shift, 2 * math.log(factor)), rtol=1e-9, atol=1e-9)


def _planar(num_points=300, dim=10, noise=0.05):
    """Points near a random plane in ``dim`` dimensions, and an orthonormal basis of the plane ``(2, dim)``."""
    plane = torch.linalg.qr(torch.randn(dim, 2))[0].T
    return torch.randn(num_points, 2) * torch.tensor([3.0, 2.0]) @ plane + noise * torch.randn(num_points, dim), plane


def test_principal_directions_span_the_data():
    data, plane = _planar()
    directions = principal_directions(data, 2)
    assert torch.allclose(directions @ directions.T, torch.eye(2), atol=1e-10)
    # the rows lie in the plane: projecting them onto it keeps their length
    assert torch.allclose((directions @ plane.T).norm(dim=1), torch.ones(2), atol=1e-3)
    with pytest.raises(ValueError):
        principal_directions(data, 11)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_pca_shortcut_encodes_the_principal_subspace(likelihood):
    data, plane = _planar()
    if likelihood == "bernoulli":
        data = (data > 0).to(data.dtype)
        plane = principal_directions(data, 2)
    encoder, _ = standardized_autoencoder(data, 2, (8,), likelihood=likelihood)  # "auto": latent 2 < 10 features
    rows = encoder.encoder.shortcut.weight
    rows = rows / rows.norm(dim=1, keepdim=True)
    assert torch.allclose((rows @ plane.T).norm(dim=1), torch.ones(2), atol=1e-3)
    # a random start keeps much less of the plane
    encoder, _ = standardized_autoencoder(data, 2, (8,), likelihood=likelihood, shortcut="random")
    rows = encoder.encoder.shortcut.weight
    assert (rows @ plane.T).norm() / rows.norm() < 0.9
    with pytest.raises(ValueError, match="shortcut"):
        standardized_autoencoder(data, 2, shortcut="svd")


def test_square_latent_space_keeps_the_random_shortcut():
    # latent_dim == data_dim (e.g. the pinwheel): "auto" changes nothing
    data = torch.randn(50, 2) * torch.tensor([3.0, 1.0])
    pyro.set_rng_seed(3)
    auto = standardized_autoencoder(data, 2, (8,))
    pyro.set_rng_seed(3)
    random = standardized_autoencoder(data, 2, (8,), shortcut="random")
    for a, b in zip(auto, random):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


def test_networks_name_what_is_wrong_with_the_data():
    import numpy as np

    y = torch.randn(60, 4)
    encoder, decoder = standardized_autoencoder(y, 2, (8,))
    with pytest.raises(ValueError, match="built for data with 4 features, got data of shape \\(60, 3\\)"):
        encoder(y[:, :3])
    with pytest.raises(ValueError, match="torch.float32 .* but the networks are torch.float64"):
        encoder(y.float())
    with pytest.raises(TypeError, match="torch.Tensor, got ndarray"):
        encoder(y.numpy())
    # building takes what a user has at hand: arrays, integers, another float dtype
    for data in (y.numpy(), (10 * y).round().long(), y.float()):
        built, _ = standardized_autoencoder(data, 2, (8,))
        assert built.standardization.loc.dtype == torch.get_default_dtype()
        assert torch.isfinite(built(torch.as_tensor(np.asarray(data), dtype=torch.get_default_dtype())).mean).all()


def test_one_column_in_huge_units_does_not_floor_the_others():
    """Per feature, a column x 1e12 or offset by 1e12 (float64 or float32) leaves the others their own scale."""
    y = torch.randn(400, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5, 1.0])
    for offset, huge in enumerate((y * torch.tensor([1.0, 1.0, 1.0, 1e12]), y + torch.tensor([0.0, 0.0, 0.0, 1e12]))):
        for dtype in (torch.float64, torch.float32):
            data = huge.to(dtype)
            lost = offset and dtype == torch.float32  # 1e12 + O(1) in float32: the column's variation is gone
            with pytest.warns(RuntimeWarning, match="column.s. 3 .* constant to") if lost else nullcontext():
                u = Standardization.fit(data, per_feature=True)(data)
            assert torch.allclose(
                u[:, :3].std(0, unbiased=False).double(), torch.ones(3, dtype=torch.float64), atol=1e-4
            )


@pytest.mark.parametrize("latent_dim", [4, 2])
def test_ppca_networks_start_as_probabilistic_pca(latent_dim):
    """Decoder u = ū + W x + N(0, σ²I); the encoder's potential is that decoder's exact likelihood of x."""
    from pyro_sin.standardize import ppca_autoencoder

    g = torch.Generator().manual_seed(0)
    y = torch.randn(300, 4, generator=g) @ torch.tensor(
        [[3.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 0.2, 0], [0, 2.0, 0, 5.0]]
    )
    y = y * torch.tensor([1.0, 100.0, 0.01, 1.0]) + 7.0
    start = ppca_autoencoder(y, latent_dim)
    st = start.encoder.standardization
    u = st(y)
    spectrum = torch.linalg.eigvalsh(torch.cov(u.T, correction=0)).flip(0)
    noise = spectrum[latent_dim:].mean() if latent_dim < 4 else 0.01 * spectrum[-1]
    noise = max(noise, 1e-4 * spectrum.mean())  # the floor relative to the mean variance
    assert abs(start.noise - float(noise)) < 1e-9 and torch.allclose(start.variances, spectrum[:latent_dim])
    W = start.directions.T * (start.variances - start.noise).clamp(min=1e-3 * start.noise).sqrt()  # (P, D)
    x = torch.randn(10, latent_dim, generator=g)
    loc, scale = start.decoder(x)
    assert torch.allclose(loc, st.inverse(u.mean(0) + x @ W.T))
    assert torch.allclose(scale, st.scale * start.noise**0.5)  # (its floor a tenth of it)
    # the potential of u: h = Wᵀ(u - ū)/σ², J = WᵀW/σ² (diagonal), from dense algebra
    potential = start.encoder(y)
    J = W.T @ W / start.noise
    assert torch.allclose(torch.diag_embed(potential.precision), J.expand(300, -1, -1), rtol=1e-6)
    assert torch.allclose(potential.info_vec, (u - u.mean(0)) @ W / start.noise, rtol=1e-6, atol=1e-8)
    # so the model's covariance of u is probabilistic PCA's, W Wᵀ + σ² I
    ppca = W @ W.T + start.noise * torch.eye(4)
    if latent_dim == 4:  # (exact but for the noise floor, which here exceeds the smallest variance)
        assert torch.allclose(ppca, torch.cov(u.T, correction=0), atol=2 * start.noise)
    assert start.encoder.standardization.loc.dtype == torch.get_default_dtype()
    assert ppca_autoencoder(y.float(), latent_dim).decoder.standardization.scale.dtype == torch.float32


def test_networks_take_numpy_lists_and_data_frames():
    pandas = pytest.importorskip("pandas")
    from pyro_sin.pgm.mixture import classic_start

    y = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    reference = classic_start(y, 2, generator=torch.Generator().manual_seed(0))
    for data in (y.numpy(), y.tolist(), pandas.DataFrame(y.numpy(), columns=list("abc"))):
        start = classic_start(data, 2, generator=torch.Generator().manual_seed(0))
        for key, value in reference.natural.items():
            assert torch.allclose(start.natural[key], value), key
    with pytest.raises(TypeError, match="numbers in a table"):
        classic_start([[1.0, 2.0], [3.0]], 2)
