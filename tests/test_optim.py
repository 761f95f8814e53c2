import pytest
import torch
from torch.testing import assert_close

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.distributions import NormalWishart
from pyro_sin.natural import is_natural_parameter
from pyro_sin.optim import NaturalStep, decaying_schedule

from tests.helpers import tiny_mixture_model


def expected_conjugate_update(guide, y):
    """Standard-coordinate conjugate posterior (docs/mathematics.rst) from the guide's exact statistics."""
    with torch.no_grad():
        post = guide.local_posterior(y)
    gmm = guide.pgm
    scale = guide.model.num_data / len(y)
    r = post.probs
    Nk = scale * r.sum(0)
    s1 = scale * torch.einsum("nk,nkd->kd", r, post.loc)
    s2 = scale * torch.einsum("nk,nkij->kij", r, post.second_moment())
    prior = gmm.prior()
    kappa = prior.kappa + Nk
    m = (prior.kappa[:, None] * prior.loc + s1) / kappa[:, None]
    W_inv = (
        prior.scale_inv + s2 + prior.kappa[:, None, None] * prior.loc[:, :, None] * prior.loc[:, None, :]
        - kappa[:, None, None] * m[:, :, None] * m[:, None, :]
    )
    return gmm.prior_concentration + Nk, NormalWishart(m, kappa, W_inv, prior.df + Nk)


def natural_of(guide):
    return {k: v.detach().clone() for k, v in guide.natural_params().items()}


@pytest.mark.parametrize("estimator", ["sample", "enumerate"])
def test_full_natural_step_is_the_exact_conjugate_update(estimator):
    model, guide, y = tiny_mixture_model(num_data=20)
    idx = torch.arange(5)
    elbo = SINELBO(num_particles=3, decoder_estimator=estimator)
    svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=1.0), elbo)
    guide(y[idx], idx)
    concentration, nw = expected_conjugate_update(guide, y[idx])
    svi.step(y[idx], idx)
    q = guide.global_posterior()
    assert_close(q.concentration, concentration)
    assert_close(q.normal_wishart.kappa, nw.kappa)
    assert_close(q.normal_wishart.loc, nw.loc)
    assert_close(q.normal_wishart.scale_inv, nw.scale_inv)
    assert_close(q.normal_wishart.df, nw.df)


def test_partial_natural_step_is_a_convex_combination_and_adam_moves_the_rest():
    model, guide, y = tiny_mixture_model(num_data=20)
    idx = torch.arange(5)
    optim = NaturalAdam({"lr": 0.01}, natural_lr=0.3)
    svi = SVI(model, guide, optim, SINELBO(num_particles=3))
    guide(y[idx], idx)
    before = natural_of(guide)
    target = SINELBO().natural_targets(
        SINELBO(num_particles=3)._loss_surrogate_records(model, guide, (y[idx], idx), {})[2]
    )
    ((domain, _, packed),) = target.values()
    target = domain.unpack(packed)
    nn_before = {n: p.detach().clone() for n, p in guide.encoder.named_parameters()}
    svi.step(y[idx], idx)
    for key, value in natural_of(guide).items():
        assert_close(value, 0.7 * before[key] + 0.3 * target[key])
    # Adam's first step moves every parameter with a gradient by about lr
    for name, p in guide.encoder.named_parameters():
        moved = (p.detach() - nn_before[name]).abs()
        assert_close(moved.max(), torch.tensor(0.01), rtol=1e-3, atol=0)
    kinds = {type(o) for p, o in optim.optim_objs.items() if is_natural_parameter(p)}
    assert kinds == {NaturalStep} and set(optim.optim_objs) == {p for p in optim.optim_objs if is_natural_parameter(p)}
    assert type(optim._fused) is torch.optim.Adam
    assert {id(p) for p in optim._fused_params} == {id(p) for p in guide.encoder.parameters()} | {
        id(p) for p in model.decoder.parameters()
    }
    # one argument set, one parameter group: one fused update for every network tensor
    assert len(optim._fused.param_groups) == 1


def test_natural_parameters_are_not_clipped():
    model, guide, y = tiny_mixture_model()
    idx = torch.arange(5)
    optim = NaturalAdam({"lr": 0.01}, natural_lr=1.0, clip_args={"clip_norm": 1e-6})
    svi = SVI(model, guide, optim, SINELBO(num_particles=2))
    guide(y[idx], idx)
    concentration, _ = expected_conjugate_update(guide, y[idx])
    svi.step(y[idx], idx)
    assert_close(guide.global_posterior().concentration, concentration)


def test_decaying_schedule_survives_save_and_load(tmp_path):
    schedule = decaying_schedule(0.2, 0.5, 2)
    assert [round(schedule(t), 6) for t in (0, 2, 4)] == [0.2, 0.1, 0.05]
    model, guide, y = tiny_mixture_model()
    idx = torch.arange(5)
    optim = NaturalAdam({"lr": 0.01}, natural_lr=schedule)
    svi = SVI(model, guide, optim, SINELBO(num_particles=2))
    for _ in range(3):
        svi.step(y[idx], idx)
    optim.save(tmp_path / "optim.pt")
    restored = NaturalAdam({"lr": 0.01}, natural_lr=schedule)
    restored.load(tmp_path / "optim.pt")
    SVI(model, guide, restored, SINELBO(num_particles=2)).step(y[idx], idx)
    steps = {o.state[p]["step"] for p, o in restored.optim_objs.items() if is_natural_parameter(p)}
    assert steps == {4}


def test_bad_step_sizes_raise():
    with pytest.raises(ValueError, match="natural_lr"):
        NaturalAdam({"lr": 0.01}, natural_lr=1.5)
    with pytest.raises(ValueError):
        decaying_schedule(0.0, 0.9, 10)


def test_stock_optimiser_on_natural_parameters_is_reported():
    model, guide, y = tiny_mixture_model()
    idx = torch.arange(5)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), SINELBO(num_particles=2))
    svi.step(y[idx], idx)
    with pytest.warns(RuntimeWarning, match="NaturalAdam"):
        svi.step(y[idx], idx)


def test_fused_adam_matches_per_parameter_adam_and_round_trips_its_state(tmp_path):
    """NaturalAdam's one (fused) Adam takes the steps of pyro.optim.Adam's per-parameter ones."""

    def steps(optim, n, seed=0):
        pyro.clear_param_store()
        model, guide, y = tiny_mixture_model(seed=seed)
        model.param_prefix = "model"
        svi = SVI(model, guide, optim, SINELBO(num_particles=2, max_plate_nesting=1))
        pyro.set_rng_seed(5)
        for i in range(n):
            idx = torch.arange(i % 4 * 5, i % 4 * 5 + 5)
            svi.step(y[idx], idx)
        return {n: p.detach().clone() for n, p in model.decoder.named_parameters()}, optim

    per_parameter = NaturalAdam({"lr": 0.01}, natural_lr=0.2)
    per_parameter._step_fused = lambda params: pyro.optim.PyroOptim.__call__(per_parameter, params)
    ours, optim = steps(NaturalAdam({"lr": 0.01}, natural_lr=0.2), 4)
    theirs, _ = steps(per_parameter, 4)
    for name in ours:
        assert_close(ours[name], theirs[name])
    optim.save(tmp_path / "optim.pt")
    restored = NaturalAdam({"lr": 0.01}, natural_lr=0.2)
    restored.load(tmp_path / "optim.pt")
    assert set(restored._loaded_state) == set(optim.get_state())
