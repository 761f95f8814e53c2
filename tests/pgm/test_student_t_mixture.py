"""
The Student-t mixture's own mathematics: E[log St] against quadrature, the bound against
TraceEnum_ELBO, the components trained by Adam. What every family must do is checked by the
conformance suite, tests/test_conformance.py.
"""

import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate

import pyro_sin
from pyro_sin.models import DeepLatentMixture
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import StudentTMixture
from pyro_sin.potential import GaussianPotential


def tiny_tmm_model(num_data=20):
    pyro.set_rng_seed(0)
    y = torch.randn(num_data, 2) * 3
    tmm = StudentTMixture(3, 2, concentration=1.0, num_samples=20)
    model = DeepLatentMixture(tmm, GaussianDecoder(2, 2, (8,)), num_data)
    guide = model.make_guide(GaussianEncoder(2, 2, (8,)), factor="free")
    return model, guide, y


def test_expected_log_student_t_matches_quadrature():
    tmm = StudentTMixture(2, 2, df=4.0)
    with torch.no_grad():
        tmm.locs = torch.tensor([[1.0, -1.0], [-2.0, 0.5]])
    factor = tmm.free_factor({k: v for k, (v, _) in tmm.init_free_factor(tmm.init_natural()).items()})
    post = tmm.posterior(GaussianPotential(torch.tensor([[0.5, 0.2]]), torch.tensor([[1.5, 0.8]])), factor)
    axes = torch.linspace(-10, 10, 801)
    grid = torch.stack(torch.meshgrid(axes, axes, indexing="ij"), -1).reshape(-1, 2)
    cell = (axes[1] - axes[0]) ** 2
    q = tmm.global_posterior(tmm.init_natural())
    comps = tmm.components(q.params)
    q_x = dist.MultivariateNormal(post.loc[0], scale_tril=post.scale_tril[0])  # batch K
    density = q_x.log_prob(grid[:, None, :]).exp() * cell  # (G, K)
    quadrature = (density * comps.log_prob(grid[:, None, :])).sum(0)
    with torch.no_grad():
        estimate = tmm.expected_log_components(q, post, num_samples=200000)[0]
    assert_close(estimate, quadrature, rtol=0, atol=0.01)


def test_sinelbo_agrees_with_traceenum_on_the_student_t_mixture():
    model, guide, y = tiny_tmm_model()
    idx = torch.arange(5)
    ours = torch.tensor(
        [
            pyro_sin.SINELBO(num_particles=2000, decoder_estimator="enumerate").loss(model, guide, y[idx], idx)
            for _ in range(8)
        ]
    )
    elbo = TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    theirs = torch.tensor([elbo.loss(model, config_enumerate(guide), y[idx], idx) for _ in range(8)])
    se = (ours.var() / 8 + theirs.var() / 8).sqrt()
    assert abs(ours.mean() - theirs.mean()) < 4 * se + 1e-3 * abs(theirs.mean())


def test_components_take_adam_while_the_weights_take_the_natural_step():
    """The weights' full natural step is the conformance suite's (test_conformance.py, tmm-free)."""
    model, guide, y = tiny_tmm_model()
    idx = torch.arange(5)
    guide(y[idx], idx)
    locs_before = guide.pgm.locs.detach().clone()
    svi = SVI(model, guide, pyro_sin.NaturalAdam({"lr": 0.01}, natural_lr=1.0), pyro_sin.SINELBO(num_particles=4))
    svi.step(y[idx], indices=idx)
    moved = (guide.pgm.locs.detach() - locs_before).abs()
    assert_close(moved.max(), torch.tensor(0.01), rtol=1e-3, atol=0)
