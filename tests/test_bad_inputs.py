"""
Every misuse a user can make at a public entry point gets the package's own message, naming the
argument and the fix, or the right result; nothing is silently wrong. One small case per misuse, so
that none comes back (issue 19).
"""

import warnings

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI
from pyro.ops.indexing import Vindex

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.initialization import best_kmeans
from pyro_sin.models import DeepLatentMixture, DeepLatentSequence
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import FAMILIES, GaussianMixture, LatentHMM, LinearDynamicalSystem, StudentTMixture, SwitchingLDS
from pyro_sin.pgm.mixture import classic_start
from pyro_sin.standardize import Standardization, ppca_autoencoder, standardized_autoencoder
from pyro_sin.training import fit

from tests.families import CONFORMANCE

P = 2


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def points(n=30, p=P, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


# ----- structured priors: sizes and hyperparameters ------------------------------------------------------


@pytest.mark.parametrize("key", FAMILIES)
def test_a_fractional_size_is_refused_with_its_name(key):
    family = CONFORMANCE[key]
    for name in family.sizes:
        with pytest.raises(TypeError, match=rf"{FAMILIES[key].__name__} {name} must be a whole number, got 2.5"):
            FAMILIES[key](**{**family.sizes, name: 2.5})


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: GaussianMixture(3, 2, loc=torch.zeros(4, 5)),
            r"GaussianMixture loc .* shape \(3, 2\), got shape \(4, 5\)",
        ),
        (
            lambda: GaussianMixture(3, 2, concentration=torch.ones(4)),
            r"concentration .* shape \(3,\), got shape \(4,\)",
        ),
        (
            lambda: GaussianMixture(3, 2, scale_inv=torch.eye(3)),
            r"scale_inv must be a scalar or have shape \(\.\.\., 2, 2\)",
        ),
        (lambda: GaussianMixture(3, 2, scale_inv=torch.eye(2).expand(4, 2, 2)), r"scale_inv must broadcast to"),
        (
            lambda: StudentTMixture(3, 2, concentration=torch.ones(2)),
            r"concentration .* shape \(3,\), got shape \(2,\)",
        ),
        (lambda: LatentHMM(3, 2, init_concentration=torch.ones(4)), r"LatentHMM init_concentration .* \(3,\)"),
        (lambda: LatentHMM(3, 2, transition_concentration=torch.ones(2, 2)), r"transition_concentration .* \(3, 3\)"),
        (lambda: LatentHMM(3, 2, loc=torch.zeros(5, 2)), r"LatentHMM loc .* shape \(3, 2\), got shape \(5, 2\)"),
        (lambda: SwitchingLDS(3, 2, init_concentration=torch.ones(4)), r"SwitchingLDS init_concentration .* \(3,\)"),
        (lambda: SwitchingLDS(3, 2, transition_loc=torch.zeros(2, 2, 2)), r"transition_loc .* \(3, 2, 3\)"),
        (lambda: SwitchingLDS(3, 2, init_transition_noise=float("nan")), "init_transition_noise must be finite"),
        (lambda: LinearDynamicalSystem(2, init_loc=torch.zeros(3)), r"init_loc .* shape \(2,\), got shape \(3,\)"),
        (lambda: LinearDynamicalSystem(0), "LinearDynamicalSystem: need latent_dim >= 1"),
        (lambda: LatentHMM(0, 2), "LatentHMM: need num_states >= 1"),
    ],
    ids=lambda case: case if isinstance(case, str) else None,
)
def test_constructor_misuse_names_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ----- sequence lengths: one check, whatever the validation setting -------------------------------------


SEQUENCE_PRIORS = {
    "lds": lambda: LinearDynamicalSystem(2),
    "hmm": lambda: LatentHMM(3, 2),
    "slds": lambda: SwitchingLDS(3, 2),
}


@pytest.mark.parametrize("key", SEQUENCE_PRIORS)
@pytest.mark.parametrize("bad", [0, -1, 7])
@pytest.mark.parametrize("validate", [True, False])
def test_bad_lengths_are_refused_in_training(key, bad, validate):
    y = torch.randn(4, 6, P)
    model = DeepLatentSequence(SEQUENCE_PRIORS[key](), GaussianDecoder(2, P, (8,)), 4)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)))
    svi = SVI(model, guide, NaturalAdam({"lr": 1e-3}), SINELBO())
    with pyro.validation_enabled(validate):
        with pytest.raises(
            ValueError, match=rf"lengths must lie in \[1, 6\] .*got \[{bad}\]: drop the empty sequences"
        ):
            svi.step(y, None, torch.tensor([6, bad, 3, 6]))


@pytest.mark.parametrize("key", SEQUENCE_PRIORS)
def test_fractional_lengths_are_refused(key):
    prior = SEQUENCE_PRIORS[key]()
    with pytest.raises(ValueError, match="lengths must be an integer tensor"):
        prior.sample_latent(prior.sample_params(), 6, torch.tensor([6.0, 3.0]))


# ----- the mixture start and the standardised networks ---------------------------------------------------


@pytest.mark.parametrize(
    "data, K, match",
    [
        (points(1), 10, "K=10 components need at least 10 rows, got 1"),
        (points(5), 10, "K=10 components need at least 10 rows, got 5"),
        (points(1), 1, "K=1 components need at least 2 rows, got 1"),
        (torch.zeros(0, P), 3, "needs at least 1 row"),
        (torch.randn(50), 3, r"reshape it to \(N, 1\)"),
        (points(50), 2.5, "num_components must be a whole number >= 1, got 2.5"),
        (points(50), 0, "num_components must be a whole number >= 1, got 0"),
    ],
)
def test_classic_start_names_what_is_wrong(data, K, match):
    with pytest.raises(ValueError, match=match):
        classic_start(data, K)


@pytest.mark.parametrize("build", [standardized_autoencoder, ppca_autoencoder])
def test_networks_refuse_a_vector_and_say_how_to_make_a_table(build):
    with pytest.raises(ValueError, match=r"reshape it to \(N, 1\)"):
        build(torch.randn(50), 1)


def test_kmeans_says_how_many_points_the_clusters_need():
    with pytest.raises(ValueError, match="K=10 clusters need at least 10 points"):
        best_kmeans(points(3), 10)


def test_the_mixture_start_takes_numpy_lists_and_pandas_alike():
    pandas = pytest.importorskip("pandas")
    y = points(40).double().numpy()

    def start(data):
        pyro.set_rng_seed(0)  # (the networks' hidden layers are drawn)
        return classic_start(data, 2, hidden=(4,), generator=torch.Generator().manual_seed(0)).natural

    reference = start(torch.as_tensor(y))
    for data in (y, y.tolist(), pandas.DataFrame(y)):
        natural = start(data)
        for key, value in reference.items():
            assert_close(natural[key], value)


def test_the_mixture_start_of_data_times_1e20_in_float32_is_finite_and_the_same():
    y = points(60).float()
    base = classic_start(y, 2, hidden=(4,))
    huge = classic_start(y * 1e20, 2, hidden=(4,))
    assert huge.networks.encoder.standardization.loc.dtype == torch.float32
    for key, value in base.natural.items():
        assert torch.isfinite(huge.natural[key]).all()
        assert_close(huge.natural[key], value, rtol=1e-3, atol=1e-3)


# ----- scaling robust to extreme columns ----------------------------------------------------------------


def test_one_dominant_column_under_one_scale_warns_and_names_per_feature():
    y = points(100) * torch.tensor([1e12, 1.0])
    with pytest.warns(RuntimeWarning, match="column 0's spread .* Pass per_feature=True"):
        Standardization.fit(y, per_feature=False)


def test_per_feature_scaling_with_a_column_at_1e12_gives_every_column_unit_spread():
    y = (points(100, 3) * torch.tensor([1e12, 1.0, 3.0])).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn of: every column is served
        u = Standardization.fit(y, per_feature=True)(y)
    assert_close(u.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_a_column_constant_to_float32_precision_warns_and_leaves_the_others_their_spread():
    y = points(100, 3).double() + torch.tensor([1e12, 0.0, 0.0], dtype=torch.float64)
    data = y.float()  # 1e12 + O(1): the first column's variation is lost in float32
    with pytest.warns(RuntimeWarning, match=r"column\(s\) 0 .* constant to torch.float32's precision .* centre them"):
        standardization = Standardization.fit(data, per_feature=True)
    u = standardization(data)
    assert_close(u[:, 1:].std(0, unbiased=False), torch.ones(2, dtype=u.dtype), rtol=1e-4, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Standardization.fit(y, per_feature=True)  # float64 keeps it: no warning


@pytest.mark.parametrize("init", ["mirrored", "independent"])
def test_the_pinwheel_scripts_alternative_networks_are_scale_free(init):
    """The networks read standardised data: scaling the data by 2¹⁰ leaves every encoding unchanged."""
    from pinwheel import Config, build_networks

    y = points(50)
    encodings = []
    for scale in (1.0, 1024.0):
        torch.manual_seed(0)
        encoder, decoder = build_networks(Config(init=init, hidden=8, decoder_body_gain=None), y * scale)
        potential = encoder(y * scale)
        encodings.append(potential)
        loc, _ = decoder(potential.info_vec)
        assert_close(loc.mean(0) / scale, y.mean(0), atol=5.0, rtol=0)  # answers in the data's units
    assert_close(encodings[1].info_vec, encodings[0].info_vec)
    assert_close(encodings[1].precision, encodings[0].precision)


# ----- the guide, the model's plate and training --------------------------------------------------------


def mixture(num_data=20, K=3, name=None, init_natural=None):
    model = DeepLatentMixture(GaussianMixture(K, 2), GaussianDecoder(2, P, (8,)), num_data, name=name)
    guide_name = None if name is None else f"{name}.guide"
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)), name=guide_name, init_natural=init_natural)
    return model, guide, SVI(model, guide, NaturalAdam({"lr": 1e-3}), SINELBO())


@pytest.mark.parametrize("validate", [True, False])
def test_nan_data_are_refused_with_our_message_whatever_the_validation(validate):
    y = points(20)
    y[3, 1] = float("nan")
    _, _, svi = mixture()
    with pyro.validation_enabled(validate), pytest.raises(ValueError, match=r"NaN or inf \(minibatch rows \[3\]\)"):
        svi.step(y[:5], torch.arange(5))


@pytest.mark.parametrize(
    "rows, indices, match",
    [
        (slice(0, 1), torch.tensor(0), r"indices must be a 1-D integer tensor.* shape \(\)"),
        (slice(0, 20), torch.arange(5), "the minibatch has 20 rows but 5 indices: pass the minibatch's rows"),
        (slice(0, 5), torch.arange(18, 23), r"indices must lie in \[0, 20\)"),
        (slice(0, 2), torch.tensor([0.0, 1.0]), "indices must be a 1-D integer tensor"),
    ],
)
def test_bad_indices_are_named(rows, indices, match):
    _, _, svi = mixture()
    with pytest.raises(ValueError, match=match):
        svi.step(points(20)[rows], indices)


def test_a_param_store_clash_says_to_clear_the_store_or_rename():
    y, idx = points(20), torch.arange(5)
    mixture(K=3, name="run")[2].step(y[idx], idx)
    _, _, svi = mixture(K=5, name="run")  # the same explicit name, another K
    with pytest.raises(
        ValueError, match=r"pyro.clear_param_store\(\) before building the new model, or give the guide"
    ):
        svi.step(y[idx], idx)


def test_a_second_run_with_default_names_neither_clashes_nor_warm_starts():
    """A notebook cell run twice: the second run starts from its own start, whatever K."""
    y, idx = points(20), torch.arange(5)
    for K in (3, 3, 5):
        start = GaussianMixture(K, 2).init_natural()
        model, guide, svi = mixture(K=K, init_natural=start)
        guide(y[idx], idx)  # the first call registers λ, adopting what the store holds under the name
        for key, value in start.items():
            assert_close(guide.natural_params()[key].detach(), value)
        for _ in range(2):
            svi.step(y[idx], idx)
        del model, guide, svi  # the run is over; its parameters stay in the store


def test_numpy_data_are_converted_for_the_guide_the_model_and_fit():
    y = points(20)
    model, guide, svi = mixture()
    fit(svi, y.double().numpy(), iterations=2, batch_size=5, progress=False)  # float64 numpy, float32 networks
    from_numpy = guide.local_posterior(y.numpy()).probs
    assert_close(from_numpy, guide.local_posterior(y).probs)
    assert_close(model.cluster(guide, y.tolist()), model.cluster(guide, y))


def test_a_tensor_of_another_dtype_is_refused_with_the_conversion_to_make():
    _, guide, _ = mixture()
    with pytest.raises(ValueError, match=r"convert one to match the other"):
        guide.local_posterior(points(5).float())  # the networks are float64 here


def test_a_guide_without_data_says_how_to_pass_them():
    def model(*, y):
        params = pgm.sample_params()
        with pyro.plate("data", 3):
            pgm.sample_latent(params)

    pgm = GaussianMixture(2, 2)
    guide = SINGuide(model, pgm, GaussianEncoder(P, 2, (8,)))
    with pytest.raises(ValueError, match="encoder_input"):
        guide(y=points(3))


def test_fit_refuses_data_without_rows():
    _, _, svi = mixture()
    with pytest.raises(TypeError, match="one row per data point"):
        fit(svi, 3.0, iterations=1, batch_size=1, progress=False)


def test_fit_refuses_a_batch_larger_than_the_data():
    _, _, svi = mixture()
    with pytest.raises(ValueError, match=r"batch_size x processes must lie in \[1, 20\]"):
        fit(svi, points(20), iterations=1, batch_size=50, progress=False)


def test_decoder_estimator_names_its_choices():
    with pytest.raises(ValueError, match="decoder_estimator must be one of"):
        SINELBO(decoder_estimator="exact")


def test_standardization_refuses_nan_data():
    y = points(10)
    y[0, 0] = float("inf")
    with pytest.raises(ValueError, match="cannot standardise data that contain NaN or inf"):
        Standardization.fit(y)


def test_ragged_rows_are_refused_as_a_table_of_one_width():
    with pytest.raises(TypeError, match="numbers in a table of one width"):
        classic_start([[1.0, 2.0], [3.0]], 1)


def test_numpy_arrays_for_the_networks_are_named():
    encoder, _ = standardized_autoencoder(points(20), 2, (4,))
    with pytest.raises(TypeError, match="convert with torch.as_tensor"):
        encoder(np.zeros((3, P), dtype=np.float32))


def test_reading_the_store_for_leftovers_keeps_pyros_unconstrained_marks():
    """
    The leftover bookkeeping runs from a finalizer, at any moment, inside an SVI step too: it must not strip
    the ``.unconstrained`` marks Pyro's step reads (ParamStoreDict.get_state does, and broke runs at random).
    """
    from pyro_sin import naming

    pyro.clear_param_store()
    value = pyro.param("leftover_probe.weight", torch.ones(3))
    assert naming._stored("leftover_probe") and value.unconstrained() is not None
    assert hasattr(pyro.param("leftover_probe.weight"), "unconstrained")
    naming._stored("leftover_probe")
    assert value.unconstrained() is not None  # still marked after the read
# ----- the drop-in guide of a plain Pyro model (the README's quick start) ----------------------------------


def plain_mixture(num_data=20, K=3):
    """The README's model: Pyro's GMM tutorial plus a decoder, and the guide that recognises it."""
    decoder = GaussianDecoder(2, P, (8,))

    def model(y, idx):
        pyro.module("decoder", decoder)
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
        with pyro.plate("components", K):
            precisions = pyro.sample("precisions", dist.Wishart(4.0, covariance_matrix=torch.eye(2)))
            locs = pyro.sample("locs", dist.MultivariateNormal(torch.zeros(2), precision_matrix=0.5 * precisions))
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("assignment", dist.Categorical(weights))
            x = pyro.sample(
                "x", dist.MultivariateNormal(Vindex(locs)[..., z, :], precision_matrix=Vindex(precisions)[..., z, :, :])
            )
            pyro.sample("y", decoder.distribution(x), obs=y)

    guide = SINGuide(
        model,
        encoder=GaussianEncoder(P, 2, (8,)),
        create_plates=lambda y, idx: pyro.plate("data", num_data, subsample=idx),
    )
    return model, guide, SVI(model, guide, NaturalAdam({"lr": 1e-3}), SINELBO())


@pytest.mark.parametrize(
    "rows, indices, match",
    [
        (slice(0, 1), torch.tensor(0), r"indices must be a 1-D integer tensor.*idx.reshape\(-1\)"),
        (slice(0, 0), torch.arange(0), "the minibatch is empty"),
    ],
)
def test_the_drop_in_guide_names_a_scalar_index_and_an_empty_minibatch(rows, indices, match):
    y = points(20)
    _, _, svi = plain_mixture()
    svi.step(y[:5], torch.arange(5))  # recognised at the first call
    with pytest.raises(ValueError, match=match):
        svi.step(y[rows], indices)


def test_a_scalar_index_at_the_drop_in_guides_first_call_is_named():
    _, _, svi = plain_mixture()
    with pytest.raises(ValueError, match=r"indices must be a 1-D integer tensor"):
        svi.step(points(1), torch.tensor(0))


def test_the_local_posterior_before_recognition_says_to_take_a_step_first():
    _, guide, _ = plain_mixture()
    with pytest.raises(RuntimeError, match=r"take one step \(or call guide\(\*args\)\) before local_posterior"):
        guide.local_posterior(points(5))


def test_a_latent_site_no_guide_covers_is_warned_of_by_name():
    model, guide, _ = mixture()

    def with_extra(y, indices=None):
        pyro.sample("extra", dist.Normal(0.0, 1.0))
        return model(y, indices)

    svi = SVI(with_extra, guide, NaturalAdam({"lr": 1e-3}), SINELBO())
    with pytest.warns(
        RuntimeWarning, match=r"latent sites in the model but not in the guide: \['extra'\].*AutoGuideList"
    ):
        svi.step(points(20)[:5], torch.arange(5))


# ----- settings of the optimiser, the bound, fit and the models ----------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: NaturalAdam({"lr": -0.05}), r"NaturalAdam: optim_args\['lr'\] must be positive or 0, got -0.05"),
        (lambda: NaturalAdam({"lr": float("nan")}), r"optim_args\['lr'\] must be positive or 0, got nan"),
        (lambda: SINELBO(num_particles=0), "SINELBO: num_particles must be at least 1, got 0"),
        (
            lambda: DeepLatentMixture(GaussianMixture(2, 2), GaussianDecoder(2, P, (8,)), 0),
            r"DeepLatentMixture: num_data must be at least 1 \(the training set's size N\), got 0",
        ),
        (
            lambda: DeepLatentSequence(LatentHMM(2, 2), GaussianDecoder(2, P, (8,)), 2.5),
            "DeepLatentSequence: num_data must be at least 1",
        ),
    ],
)
def test_settings_out_of_range_are_refused_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(iterations=-3), "fit: iterations must be at least 0, got -3"),
        (dict(iterations=2, eval_every=0, evaluate=lambda: {"a": 1.0}), "fit: eval_every must be at least 1"),
    ],
)
def test_fit_refuses_a_negative_iteration_count_and_a_zero_evaluation_period(settings, match):
    _, _, svi = mixture()
    with pytest.raises(ValueError, match=match):
        fit(svi, points(20), batch_size=5, progress=False, **settings)


def test_a_nan_selection_score_is_warned_of_and_never_selected_over_a_number():
    for scores, nan_steps, selected in [
        ([1.0, float("nan"), float("nan")], [2, 4], 0),  # evaluations at steps 0, 2, 4: only the start has a number
        ([float("nan"), 1.0, float("nan")], [0, 4], 2),  # a NaN start gives way to the first number
    ]:
        pyro.clear_param_store()
        _, _, svi = mixture()
        metrics = iter(scores)
        with pytest.warns(RuntimeWarning, match=r"selection score 'a' is NaN at step") as caught:
            history = fit(
                svi,
                points(20),
                iterations=4,
                batch_size=5,
                progress=False,
                evaluate=lambda: {"a": next(metrics)},
                eval_every=2,
                select="a",
            )
        assert [str(w.message).split("NaN at step ")[1].split(";")[0] for w in caught] == [str(s) for s in nan_steps]
        assert history.selected_step == selected


# ----- sequence inputs: one check of the mask and the lengths for every family --------------------------------


@pytest.mark.parametrize("key", SEQUENCE_PRIORS)
@pytest.mark.parametrize(
    "mask, lengths, match",
    [
        (torch.ones(4, 3), None, r"mask must have shape \(B, T\) = \(4, 5\).*got \(4, 3\)"),
        (None, torch.tensor([5, 5]), r"lengths must have one entry per sequence \(4\), got 2"),
    ],
)
def test_a_mask_or_lengths_of_the_wrong_shape_are_named(key, mask, lengths, match):
    model = DeepLatentSequence(SEQUENCE_PRIORS[key](), GaussianDecoder(2, P, (8,)), 4)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)))
    svi = SVI(model, guide, NaturalAdam({"lr": 1e-3}), SINELBO())
    with pytest.raises(ValueError, match=match):
        svi.step(torch.randn(4, 5, P), mask, lengths)
