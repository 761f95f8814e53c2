import torch
from torch.testing import assert_close

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.baselines import VAE, TwoStageLDS
from pyro_sin.datasets import bouncing_dot
from pyro_sin.nn import mirrored_autoencoder
from pyro_sin.pgm import LinearDynamicalSystem


def test_two_stage_fits_the_dynamics_of_its_latent_means():
    """If the VAE's latent means follow x_t = A x_{t-1} + b exactly, the fit recovers (A, b)."""
    encoder, decoder = mirrored_autoencoder(2, 2, (4,))
    vae = VAE(encoder, decoder, 10)
    A, b = torch.tensor([[0.9, -0.2], [0.2, 0.9]]), torch.tensor([0.1, -0.3])
    x = [torch.randn(50, 2)]
    for _ in range(29):
        x.append(x[-1] @ A.T + b)
    x = torch.stack(x, 1)  # (50, 30, 2)
    # feed sequences whose encoder means are x: invert the (initially linear) encoder exactly
    with torch.no_grad():
        for module in encoder.body:
            if hasattr(module, "weight"):
                module.weight.zero_()
                module.bias.zero_()
        encoder.first.weight.zero_()
        encoder.first.bias.zero_()
        encoder.second.weight.zero_()
        W = encoder.shortcut.weight
        J = encoder(torch.zeros(1, 2)).precision[0]
    y = torch.linalg.solve(W, (x * J).reshape(-1, 2).T).T.reshape(50, 30, 2)
    lds = LinearDynamicalSystem(2, col_precision=1e-6 * torch.eye(3), scale_inv=1e-6 * torch.eye(2))
    fitted = TwoStageLDS(vae, lds).fit_dynamics(y)
    assert_close(fitted.transition[:, :2], A, atol=1e-4, rtol=0)
    assert_close(fitted.transition[:, 2], b, atol=1e-4, rtol=0)


def test_vae_baseline_learns():
    pyro.set_rng_seed(0)
    data = bouncing_dot(32, 10).frames.reshape(-1, 16)
    encoder, decoder = mirrored_autoencoder(16, 2, (20,))
    vae = VAE(encoder, decoder, len(data))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    before = vae.test_mse(data, 10)
    for _ in range(200):
        svi.step(data)
    assert vae.test_mse(data, 10) < 0.5 * before
