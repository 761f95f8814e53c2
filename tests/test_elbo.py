import pytest
import torch
from torch.testing import assert_close

import pyro
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_sin import SINELBO
from pyro_sin.pgm.mixture import MixturePosterior
from pyro_sin.potential import GaussianPotential

from tests.helpers import tiny_mixture_model


def repeated(fn, n):
    values = torch.tensor([fn() for _ in range(n)])
    return values.mean(), values.std() / n**0.5


@pytest.mark.parametrize("factor", ["tied", "free"])
@pytest.mark.parametrize("estimator", ["enumerate", "sample"])
def test_sinelbo_agrees_with_pyro_estimators(estimator, factor):
    model, guide, y = tiny_mixture_model(factor=factor)
    idx = torch.arange(5)
    ours, ours_se = repeated(
        lambda: SINELBO(num_particles=2000, decoder_estimator=estimator).loss(model, guide, y[idx], idx), 10
    )
    enum_elbo = TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    theirs, theirs_se = repeated(lambda: enum_elbo.loss(model, config_enumerate(guide), y[idx], idx), 10)
    plain, plain_se = repeated(
        lambda: Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(model, guide, y[idx], idx), 10
    )
    for other, other_se in ((theirs, theirs_se), (plain, plain_se)):
        assert abs(ours - other) < 4 * (ours_se**2 + other_se**2) ** 0.5 + 1e-3 * abs(other)


def test_sinelbo_gradients_agree_with_traceenum():
    model, guide, y = tiny_mixture_model()
    idx = torch.arange(5)
    ours = SINELBO(num_particles=20000, decoder_estimator="enumerate")
    theirs = TraceEnum_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    guide(y[idx], idx)  # sets up the guide's parameters
    params = dict(guide.named_parameters())
    params.update({f"decoder.{k}": v for k, v in model.decoder.named_parameters()})
    names = [n for n in params if "natural" not in n]

    def grads(elbo, g):
        loss = elbo.differentiable_loss(model, g, y[idx], idx)
        return torch.autograd.grad(loss, [params[n] for n in names])

    g_ours = grads(ours, guide)
    g_theirs = [torch.stack(gs).mean(0) for gs in zip(*[grads(theirs, config_enumerate(guide)) for _ in range(4)])]
    flat_ours = torch.cat([g.flatten() for g in g_ours])
    flat_theirs = torch.cat([g.flatten() for g in g_theirs])
    cos = flat_ours @ flat_theirs / (flat_ours.norm() * flat_theirs.norm())
    assert cos > 0.99
    assert_close(flat_ours.norm(), flat_theirs.norm(), rtol=0.05, atol=0)


def test_score_function_gradient_matches_enumeration():
    model, guide, y = tiny_mixture_model()
    idx = torch.arange(5)
    guide(y[idx], idx)
    enc = list(guide.encoder.parameters())

    def grad(estimator, particles):
        elbo = SINELBO(num_particles=particles, decoder_estimator=estimator)
        loss = elbo.differentiable_loss(model, guide, y[idx], idx)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, enc)])

    exact = grad("enumerate", 50000)
    sampled = torch.stack([grad("sample", 5000) for _ in range(8)]).mean(0)
    assert_close(sampled, exact, rtol=0.05, atol=0.02 * exact.abs().max())


def test_closed_form_terms_pass_gradcheck():
    """The closed-form part of the bound, differentiated by autograd, against finite differences."""
    model, guide, y = tiny_mixture_model(factor="free")
    gmm = guide.pgm
    q = guide.global_posterior()
    factor_params = {k: getattr(guide.free, k).detach().clone().requires_grad_() for k in guide._free_names}

    def local(h, log_j, logits, loc):
        factor = gmm.free_factor({"logits": logits, "loc": loc, "precision_tril": factor_params["precision_tril"]})
        post = MixturePosterior(GaussianPotential(h, log_j.exp()), factor)
        return gmm.local_elbo(q, post)

    h = torch.randn(4, 2, requires_grad=True)
    log_j = torch.randn(4, 2, requires_grad=True)
    assert torch.autograd.gradcheck(local, (h, log_j, factor_params["logits"], factor_params["loc"]))


def test_minibatch_scale_and_kl_annealing():
    """The local terms carry N/|B|, the global KL does not; poutine.scale scales both."""
    model, guide, y = tiny_mixture_model(num_data=20)
    elbo = SINELBO(num_particles=1)
    idx = torch.arange(5)
    elbo.loss(model, guide, y[idx], idx)  # sets up the guide and max_plate_nesting
    pyro.set_rng_seed(1)
    full = elbo.loss(model, guide, y[idx], idx)
    pyro.set_rng_seed(1)
    annealed = elbo.loss(pyro.poutine.scale(model, 0.5), pyro.poutine.scale(guide, 0.5), y[idx], idx)
    assert_close(torch.tensor(annealed), torch.tensor(0.5 * full))
    # the natural target scales the minibatch's statistics by N/|B| = 4, the prior by 1
    records = elbo._loss_surrogate_records(model, guide, (y[idx], idx), {})[2]
    ((_, [(_, local_ratio, global_ratio)]),) = records
    assert (local_ratio, global_ratio) == (4.0, 1.0)


def test_bad_estimator_name():
    with pytest.raises(ValueError, match="decoder_estimator"):
        SINELBO(decoder_estimator="exact")
