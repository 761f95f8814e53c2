import math

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Predictive, TraceEnum_ELBO, config_enumerate

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import GaussianMixture
from pyro_sin.pgm.mixture import BayesianGMM
from pyro_sin.training import fit, minibatch_indices

from tests.helpers import tiny_mixture_model


def train(model, guide, y, steps, optim=None, elbo=None, seed=None):
    optim = optim or NaturalAdam({"lr": 0.01}, natural_lr=0.2)
    svi = SVI(model, guide, optim, elbo or SINELBO(num_particles=4))
    gen = torch.Generator().manual_seed(0)  # on the CPU: the same minibatches on every device
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=gen, device=gen.device)[:5].to(y.device)
        losses.append(svi.step(y[idx], idx))
    return losses, optim


def test_predictive_gives_posterior_predictive_samples():
    model, guide, y = tiny_mixture_model()
    train(model, guide, y, 5)
    predictive = Predictive(model, guide=guide, num_samples=7, return_sites=["y", "x_assignment", "x_weights"])
    samples = predictive(y, None)
    assert samples["x_assignment"].shape == (7, len(y))
    assert samples["x_weights"].squeeze(1).shape == (7, 3)
    assert samples["y"].shape == (7, len(y), 2)
    # assignments follow the SIN posterior: the most frequent one is the argmax of r_nk
    modes = samples["x_assignment"].mode(0).values
    probs = guide.local_posterior(y).probs
    confident = probs.max(-1).values > 0.9
    assert confident.sum() >= 5
    assert (modes[confident] == probs.argmax(-1)[confident]).all()


def test_stock_traceenum_and_adam_train_the_guide_unchanged():
    model, guide, y = tiny_mixture_model()
    elbo = TraceEnum_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    eval_elbo = SINELBO(num_particles=200, decoder_estimator="enumerate")
    before = eval_elbo.loss(model, guide, y, None)
    train(model, config_enumerate(guide), y, 150, optim=pyro.optim.Adam({"lr": 0.02}), elbo=elbo)
    after = eval_elbo.loss(model, guide, y, None)
    assert after < before - 0.05 * abs(before)


def test_free_factor_parameters_keep_their_constraints():
    model, guide, y = tiny_mixture_model(factor="free")
    train(model, guide, y, 20)
    tril = guide.free.precision_tril
    assert torch.equal(tril, tril.tril()) and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_subsampling_with_full_data_argument():
    """The encoder input may be the full data set; the guide picks the plate's rows."""
    N = 12
    gmm = GaussianMixture(2, 2)
    dec, enc = GaussianDecoder(2, 2, (4,)), GaussianEncoder(2, 2, (4,))
    data = torch.randn(N, 2)

    def model(data):
        pyro.module("decoder", dec)
        params = gmm.sample_params()
        with pyro.plate("data", N, subsample_size=4) as idx:
            x = gmm.sample_latent(params)
            pyro.sample("y", dec.distribution(x), obs=data[idx])

    guide = SINGuide(model, gmm, enc)
    tr = pyro.poutine.trace(guide).get_trace(data)
    assert tr.nodes["x"]["value"].shape == (4, 2)
    loss = SINELBO(num_particles=2).loss(model, guide, data)
    assert torch.isfinite(torch.tensor(loss))


def test_model_guide_mismatch_raises():
    gmm = GaussianMixture(2, 2)
    enc = GaussianEncoder(2, 2, (4,))

    def model_without_pgm(y):
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(0.0, 1.0).expand([len(y), 2]).to_event(1), obs=y)

    with pytest.raises(ValueError, match="has no sample site"):
        SINGuide(model_without_pgm, gmm, enc)(torch.zeros(3, 2))

    def model_with_extra_latent(y):
        params = gmm.sample_params()
        noise = pyro.sample("noise", dist.HalfNormal(1.0))
        with pyro.plate("data", len(y)):
            x = gmm.sample_latent(params)
            pyro.sample("y", dist.Normal(x, noise).to_event(1), obs=y)

    with pytest.raises(ValueError, match="noise"):
        SINGuide(model_with_extra_latent, gmm, enc)(torch.zeros(3, 2))

    def model_without_plate(y):
        params = gmm.sample_params()
        x = gmm.sample_latent(params)
        pyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)

    with pytest.raises(ValueError, match="plate"):
        SINGuide(model_without_plate, gmm, enc)(torch.zeros(2))
    with pytest.raises(ValueError, match="factor"):
        SINGuide(model_without_plate, gmm, enc, factor="mean-field")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    torch.set_default_device("cuda")
    try:
        model, guide, y = tiny_mixture_model()
        assert y.is_cuda
        losses, _ = train(model, guide, y, 3)
        assert all(torch.isfinite(torch.tensor(losses)))
        assert guide.natural_params()["kappa"].is_cuda
        # the package's own loop with its default CPU generator
        svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.2), SINELBO(num_particles=4))
        history = fit(svi, y, iterations=3, batch_size=5, progress=False)
        assert len(history.losses) == 3 and all(map(math.isfinite, history.losses))
    finally:
        torch.set_default_device("cpu")


def test_minibatches_and_initial_draws_follow_the_generator_not_the_default_device():
    """With ``torch.set_default_device("cuda")`` a CPU generator must not meet a CUDA draw;
    the meta device stands in for CUDA on machines without one."""
    data = torch.randn(30, 2)
    gmm = BayesianGMM(3, 2)
    torch.set_default_device("meta")
    try:
        idx = next(minibatch_indices(30, 5, torch.Generator().manual_seed(0)))
        gmm.initialize(data, torch.Generator().manual_seed(0))
    finally:
        torch.set_default_device("cpu")
    assert idx.device.type == "cpu" and len(idx.unique()) == 5
    assert gmm.natural["loc"].device.type == "cpu"
