"""
SAN under the habits every Pyro program relies on: param-store checkpoints,
stock ELBOs and optimisers, poutine.scale, composed guides, several models in
one process, and clear errors for bad input. What every family must do
(checkpoint round trips, bad input, the natural domain) is the conformance
suite's, tests/test_conformance.py; the main job's checkpoint stays here.
"""

import io

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGuideList, AutoNormal

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.models import DeepLatentMixture
from pyro_sin.natural import is_natural_parameter
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import GaussianMixture, LinearDynamicalSystem

from tests.helpers import tiny_mixture_model


def minibatches(num_data, size, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(num_data, generator=gen)[:size] for _ in range(steps)]


def run(svi, y, batches):
    return [svi.step(y[i], i) for i in batches]


def new_svi(model, guide, natural_lr=0.2):
    optim = NaturalAdam({"lr": 0.01}, natural_lr=natural_lr)
    return SVI(model, guide, optim, SINELBO(num_particles=3, max_plate_nesting=1)), optim


# ----- checkpoints ---------------------------------------------------------------------


def test_param_store_round_trip_keeps_natural_parameters_natural():
    model, guide, y = tiny_mixture_model()
    svi, _ = new_svi(model, guide)
    run(svi, y, minibatches(len(y), 5, 2))
    store = pyro.get_param_store()
    natural = [p for p in store.values() if is_natural_parameter(p.unconstrained())]
    assert len(natural) == 1
    store.set_state(store.get_state())
    assert is_natural_parameter(store._params[store.param_name(natural[0].unconstrained())])
    run(svi, y, minibatches(len(y), 5, 3, seed=1))  # warnings are errors in the tests


def test_state_dict_resume_of_the_main_job_is_bit_identical():
    from pyro_sin.datasets import pinwheel

    from pinwheel import Config, build_san

    config = Config(iterations=6, num_particles=2, batch_size=50)
    train = pinwheel(num_per_class=30, seed=0).train
    batches = minibatches(len(train), config.batch_size, config.iterations)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, svi = build_san(config, train)
    uninterrupted = run(svi, train, batches)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, svi = build_san(config, train)
    first = run(svi, train, batches[:3])
    buffer = io.BytesIO()
    torch.save(
        {
            "guide": guide.state_dict(),
            "decoder": model.decoder.state_dict(),
            "optim": svi.optim.get_state(),
            "rng": pyro.util.get_rng_state(),
        },
        buffer,
    )
    pyro.clear_param_store()
    pyro.set_rng_seed(123)  # rebuilt with other weights, then restored
    model, guide, svi = build_san(config, train)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    guide.load_state_dict(state["guide"])
    model.decoder.load_state_dict(state["decoder"])
    svi.optim.set_state(state["optim"])
    pyro.util.set_rng_state(state["rng"])
    resumed = first + run(svi, train, batches[3:])
    assert resumed == uninterrupted


# ----- names ------------------------------------------------------------------------------


def test_a_second_model_in_the_same_process_trains_its_own_parameters():
    y = torch.randn(20, 2)
    idx = torch.arange(5)

    def build(K):
        gmm = GaussianMixture(K, 2, concentration=1.0)
        model = DeepLatentMixture(gmm, GaussianDecoder(2, 2, (8,)), len(y))
        return model, model.make_guide(GaussianEncoder(2, 2, (8,)))

    first_model, first_guide = build(3)
    run(new_svi(first_model, first_guide)[0], y, [idx] * 3)
    second_model, second_guide = build(5)  # another K, no clear_param_store
    assert second_model.param_prefix != first_model.param_prefix
    assert second_guide._pyro_name != first_guide._pyro_name
    before = {n: p.detach().clone() for n, p in second_model.decoder.named_parameters()}
    run(new_svi(second_model, second_guide)[0], y, [idx] * 3)
    moved = [not torch.equal(before[n], p) for n, p in second_model.decoder.named_parameters()]
    assert all(moved)
    assert second_guide.natural_params()["concentration"].shape == (5,)


def test_guide_and_model_with_different_data_sizes_raise():
    y = torch.randn(20, 2)
    model_700, guide_700, _ = tiny_mixture_model(num_data=700)
    model_200 = DeepLatentMixture(guide_700.pgm, model_700.decoder, 200)
    idx = torch.arange(5)
    with pytest.raises(ValueError, match="700"):
        SINELBO(num_particles=2).loss(model_200, guide_700, y[idx], idx)


# ----- stock ELBOs and optimisers ------------------------------------------------------------


def test_stock_elbo_and_adam_keep_lambda_valid_at_high_learning_rate():
    model, guide, y = tiny_mixture_model()
    elbo = TraceEnum_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, config_enumerate(guide), pyro.optim.Adam({"lr": 0.5}), elbo)
    for i in minibatches(len(y), 5, 30):
        svi.step(y[i], i)
    q = guide.global_posterior()  # raises if λ left its domain
    assert (q.concentration > 0).all() and (q.normal_wishart.df > 1).all()
    assert torch.isfinite(torch.tensor(SINELBO(num_particles=4).loss(model, guide, y, None)))


def test_natural_adam_with_a_stock_elbo_says_so():
    model, guide, y = tiny_mixture_model()
    svi = SVI(model, guide, NaturalAdam({"lr": 0.01}), Trace_ELBO(num_particles=2))
    with pytest.raises(ValueError, match="SINELBO"):
        svi.step(y[:5], torch.arange(5))


# ----- poutine.scale ------------------------------------------------------------------------


def repeated(fn, n):
    values = torch.tensor([fn() for _ in range(n)])
    return values.mean(), values.std() / n**0.5


@pytest.mark.parametrize("where", ["model", "local"])
def test_scale_on_the_model_alone_matches_traceenum(where):
    model, guide, y = tiny_mixture_model()
    idx = torch.arange(5)
    guide(y[idx], idx)
    if where == "model":
        scaled = poutine.scale(model, 0.1)
    else:  # KL annealing of the local latents only, written inside the model

        def scaled(y, indices=None):
            pyro.module(f"{model.param_prefix}.decoder", model.decoder, update_module_params=True)
            params = model.pgm.sample_params()
            with pyro.plate("data", model.num_data, subsample=indices):
                with poutine.scale(scale=0.1):
                    x = model.pgm.sample_latent(params)
                pyro.sample("y", model.decoder.distribution(x), obs=y)

    ours, ours_se = repeated(
        lambda: SINELBO(num_particles=2000, decoder_estimator="enumerate").loss(scaled, guide, y[idx], idx), 5
    )
    enum = TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    theirs, theirs_se = repeated(lambda: enum.loss(scaled, config_enumerate(guide), y[idx], idx), 5)
    unscaled = SINELBO(num_particles=2000, decoder_estimator="enumerate").loss(model, guide, y[idx], idx)
    assert abs(ours - theirs) < 4 * (ours_se**2 + theirs_se**2) ** 0.5 + 1e-3 * abs(theirs)
    assert abs(ours - unscaled) > 0.1 * abs(unscaled)


def test_natural_target_of_a_scaled_model_is_the_optimum_of_the_scaled_bound():
    """With p(x|θ) scaled by s, λ* = λ0 + s·(N/|B|)·Σ E[t]: the unscaled target at scale s·N/|B|."""
    model, guide, y = tiny_mixture_model(num_data=20)
    idx = torch.arange(5)
    guide(y[idx], idx)
    elbo = SINELBO(num_particles=2, max_plate_nesting=1)
    scaled = poutine.scale(model, 0.3)  # scales p(θ) as well: the prior's share is scaled too
    records = elbo._loss_surrogate_records(scaled, guide, (y[idx], idx), {})[2]
    ((domain, _, target),) = elbo.natural_targets(records).values()
    post = guide.local_posterior(y[idx])
    pgm = guide.pgm
    prior = domain.pack(pgm.prior_natural())
    stats = domain.pack(pgm.natural_target(post, 1.0)) - prior
    offset = domain.base_offset(prior)
    expected = offset + 0.3 * (prior - offset) + 0.3 * 4 * stats
    assert_close(target, expected)


# ----- composition --------------------------------------------------------------------------


def _model_with_nuisance(num_data, K=2):
    gmm = GaussianMixture(K, 2, concentration=1.0)
    decoder = GaussianDecoder(2, 2, (6,))

    def model(y, indices=None):
        pyro.module("nuisance_decoder", decoder)
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
        params = gmm.sample_params()
        with pyro.plate("data", num_data, subsample=indices):
            x = gmm.sample_latent(params)
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
            loc = decoder.distribution(x).mean + shift[..., None]
            pyro.sample("y", dist.Normal(loc, noise.unsqueeze(-1)).to_event(1), obs=y)

    return model, gmm


def test_autoguidelist_with_singuide_and_autonormal_matches_traceenum():
    y = torch.randn(12, 2)
    model, gmm = _model_with_nuisance(len(y))
    create_plates = lambda y, indices=None: pyro.plate("data", 12, subsample=indices)  # noqa: E731
    guide = AutoGuideList(model, create_plates=create_plates)
    guide.append(AutoNormal(poutine.block(model, hide=list(gmm.global_sites + gmm.local_sites))))
    pgm_part = poutine.block(model, expose=list(gmm.global_sites + gmm.local_sites))
    guide.append(SINGuide(pgm_part, gmm, GaussianEncoder(2, 2, (6,))))
    idx = torch.arange(4)
    guide(y[idx], idx)
    ours, ours_se = repeated(
        lambda: SINELBO(num_particles=1000, decoder_estimator="enumerate").loss(model, guide, y[idx], idx), 5
    )
    enum = TraceEnum_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs, theirs_se = repeated(lambda: enum.loss(model, config_enumerate(guide), y[idx], idx), 5)
    assert abs(ours - theirs) < 4 * (ours_se**2 + theirs_se**2) ** 0.5 + 1e-3 * abs(theirs)
    svi = SVI(model, guide, NaturalAdam({"lr": 0.01}), SINELBO(num_particles=2))
    losses = [svi.step(y[i], i) for i in minibatches(len(y), 4, 5)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_hand_written_guide_shares_the_plate_for_a_per_point_latent():
    y = torch.randn(12, 2)
    model, gmm = _model_with_nuisance(len(y))
    pgm_sites = list(gmm.global_sites + gmm.local_sites)
    sin = SINGuide(poutine.block(model, expose=pgm_sites), gmm, GaussianEncoder(2, 2, (6,)))
    globals_guide = AutoNormal(poutine.block(model, expose=["noise"]))

    def guide(y, indices=None):
        globals_guide(y, indices)
        with pyro.plate("data", 12, subsample=indices):
            sin(y, indices)
            loc = pyro.param("shift_loc", torch.zeros(len(y)))
            pyro.sample("shift", dist.Normal(loc[indices] if indices is not None else loc, 0.5))

    idx = torch.arange(4)
    ours, ours_se = repeated(
        lambda: SINELBO(num_particles=1000, decoder_estimator="enumerate").loss(model, guide, y[idx], idx), 5
    )
    enum = TraceEnum_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    theirs, theirs_se = repeated(lambda: enum.loss(model, config_enumerate(guide), y[idx], idx), 5)
    assert abs(ours - theirs) < 4 * (ours_se**2 + theirs_se**2) ** 0.5 + 1e-3 * abs(theirs)


# ----- bad input ------------------------------------------------------------------------------


def test_matrix_hyperparameters_are_described_in_errors_and_a_scalar_is_a_multiple_of_the_identity():
    """The other bad inputs of every family are the conformance suite's (test_conformance.py)."""
    # a matrix that is not positive definite is described, not printed whole
    with pytest.raises(ValueError, match="eigenvalues from") as error:
        GaussianMixture(50, 4, scale_inv=torch.ones(4, 4))
    assert len(str(error.value)) < 300
    with pytest.raises(ValueError, match="positive definite|scale_inv"):
        GaussianMixture(3, 2, scale_inv=2.0 * torch.ones(2, 2))
    assert_close(GaussianMixture(3, 2, scale_inv=2.0).prior_scale_inv[0], 2.0 * torch.eye(2))
    assert_close(LinearDynamicalSystem(2, scale_inv=2.0).prior_scale_inv, 2.0 * torch.eye(2))


# ----- posterior predictive --------------------------------------------------------------------


def test_posterior_predictive_on_new_data_of_any_size_replicates_it():
    model, guide, y = tiny_mixture_model(num_data=20)
    run(new_svi(model, guide)[0], y, minibatches(len(y), 5, 3))
    for rows in (7, 30):  # fewer and more rows than the training set
        y_new = 3 * torch.randn(rows, 2)
        replicates = model.posterior_predictive(guide, y_new, num_samples=200)["y"]
        assert replicates.shape == (200, rows, 2)
        assert not torch.equal(replicates[0], y_new)  # replicates, not the observations
        # their mean is the decoder's mean under the SIN posterior of each new point
        post = guide.local_posterior(y_new)
        x = post.rsample_components((400,))  # (S, rows, K, D)
        expected = (post.probs[..., None] * model.decoder.distribution(x).mean).sum(-2).mean(0)
        spread = replicates.std(0) / 200**0.5 + x.new_tensor(0.05)
        assert ((replicates.mean(0) - expected).abs() < 5 * spread).all()


def test_the_stock_optimiser_warning_is_scale_free():
    """A faithful natural step never warns, even where sums of squares overflow (float32, λ ~ 1e30)."""
    import warnings

    gmm = GaussianMixture(2, 2).float()
    domain = gmm.natural_domain()

    def natural(scale):
        return domain.pack(
            {
                "concentration": torch.full((2,), scale),
                "loc": torch.zeros(2, 2),
                "kappa": torch.ones(2),
                "scale": scale * torch.eye(2).expand(2, 2, 2),
                "df": torch.full((2,), 10.0),
            }
        ).float()

    before, target = natural(1e30), natural(3e30)
    elbo = SINELBO()
    param = torch.zeros(1)  # stands for the tensor the targets are keyed by
    elbo._last_natural_step = {param: (before, before - target)}
    after = domain.from_unconstrained(domain.to_unconstrained(torch.lerp(before, target, 0.3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo._check_previous_natural_step({param: (domain, after, target)})
    elbo._last_natural_step = {param: (after, after - target)}
    # a step of Adam's kind: every unconstrained coordinate moved by the same amount
    adam_like = domain.from_unconstrained(domain.to_unconstrained(after) + 0.05)
    with pytest.warns(RuntimeWarning, match="NaturalAdam"):
        elbo._check_previous_natural_step({param: (domain, adam_like, target)})


def test_no_info_log_about_a_guessed_plate_nesting():
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collect = Collect()
    logger = logging.getLogger("pyro.infer.elbo")  # Pyro's own handlers do not propagate
    logger.addHandler(collect)
    try:
        model, guide, y = tiny_mixture_model()
        for _ in range(2):
            SINELBO(num_particles=3).loss(model, guide, y[:5], torch.arange(5))
    finally:
        logger.removeHandler(collect)
    assert not [m for m in collect.messages if "max_plate_nesting" in m]
