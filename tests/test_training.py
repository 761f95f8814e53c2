import math

import pytest
import torch

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.datasets import pinwheel
from pyro_sin.models import DeepLatentMixture
from pyro_sin.pgm import GaussianMixture
from pyro_sin.standardize import standardized_autoencoder
from pyro_sin.training import DivergenceError, DivergenceGuard, fit


class _ScriptedSVI:
    """An SVI stand-in whose losses and gradients follow a script; counts the updates applied."""

    def __init__(self, losses, bad_grad_at=None):
        self.losses, self.bad_grad_at = list(losses), bad_grad_at
        self.calls, self.updates = 0, 0
        self.model = self.guide = None

    def loss_and_grads(self, model, guide, *args, **kwargs):
        weight = pyro.param("weight", torch.zeros(2))
        self.calls += 1
        grad = torch.full((2,), math.nan) if self.calls == self.bad_grad_at else torch.ones(2)
        weight.unconstrained().grad = grad
        return self.losses[self.calls - 1]

    def optim(self, params):
        self.updates += 1


def test_guard_refuses_a_non_finite_gradient_before_the_update():
    svi = _ScriptedSVI([5.0] * 10, bad_grad_at=4)
    with pytest.raises(DivergenceError, match=r"non-finite gradient at step 4.*weight.*learning rate"):
        fit(svi, torch.zeros(10, 1), iterations=10, batch_size=10, progress=False)
    assert svi.updates == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e6])
def test_guard_refuses_a_non_finite_or_exploding_loss_before_the_update(bad):
    svi = _ScriptedSVI([10.0, 8.0, 6.0, bad * 10, 5.0])  # fit divides by the 10 data points
    with pytest.raises(DivergenceError, match="step 4.*not applied.*unscaled data"):
        fit(svi, torch.zeros(10, 1), iterations=5, batch_size=10, progress=False)
    assert svi.updates == 3


def test_guard_leaves_healthy_noise_alone():
    guard = DivergenceGuard()
    torch.manual_seed(0)
    for step, loss in enumerate(10 - torch.linspace(0, 5, 200) + torch.randn(200), 1):
        guard.check(step, float(loss), [])
    with pytest.raises(ValueError):
        DivergenceGuard(max_rise=0)


def _san(train, num_components=10, lr=0.01, natural_lr=0.1):
    encoder, decoder = standardized_autoencoder(train, 2, (20, 20))
    model = DeepLatentMixture(GaussianMixture(num_components, 2), decoder, len(train))
    guide = model.make_guide(encoder)
    return SVI(model, guide, NaturalAdam({"lr": lr}, natural_lr=natural_lr), SINELBO(num_particles=2))


def test_too_high_a_learning_rate_is_caught_before_the_parameters_break():
    # Adam with lr 1.0 used to return normally with a loss of 1e18 (or break the weights)
    train = pinwheel().train
    svi = _san(train, lr=1.0)
    with pytest.raises(DivergenceError, match="learning rate"):
        fit(svi, train, iterations=200, batch_size=100, progress=False)
    assert all(torch.isfinite(value).all() for value in pyro.get_param_store().values())


def test_history_counts_components_and_collapse_is_reported():
    train = pinwheel().train
    history = fit(_san(train), train, iterations=20, batch_size=100, progress=False)
    assert len(history.components) == 20 and all(1 <= k <= 10 for k in history.components)
    assert history.components[0] == 10  # every component starts with an equal share

    # one point repeated: the components compete for identical points until one holds them all
    pyro.clear_param_store()
    repeated = torch.tensor([[1.0, -2.0]]).expand(60, 2)
    with pytest.warns(RuntimeWarning, match="collapsed onto one of 3 mixture components"):
        history = fit(_san(repeated, 3, natural_lr=0.5), repeated, iterations=60, batch_size=20, progress=False)
    assert history.components[-1] == 1


class RecordingSVI:
    """Stands in for pyro.infer.SVI: records each step's arguments."""

    def __init__(self):
        self.calls = []

    def step(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return 1.0


def test_fit_indexes_every_tensor_of_tuple_data_by_the_same_minibatch():
    y = torch.arange(10.0)[:, None].expand(10, 3)
    mask = torch.arange(10.0)[:, None].expand(10, 4) + 100
    lengths = torch.arange(10) + 1000
    svi = RecordingSVI()
    fit(svi, (y, mask, lengths), iterations=7, batch_size=4, progress=False)
    assert len(svi.calls) == 7
    for args, kwargs in svi.calls:
        idx = kwargs["indices"]
        assert len(args) == 3 and len(idx.unique()) == 4
        torch.testing.assert_close(args[0], y[idx])
        torch.testing.assert_close(args[1], mask[idx])
        torch.testing.assert_close(args[2], lengths[idx])


def test_fit_passes_a_single_tensor_as_before():
    y = torch.randn(6, 2)
    svi = RecordingSVI()
    fit(svi, y, iterations=3, batch_size=3, progress=False)
    for args, kwargs in svi.calls:
        assert len(args) == 1
        torch.testing.assert_close(args[0], y[kwargs["indices"]])


def test_fit_rejects_tuple_data_of_different_lengths():
    with pytest.raises(ValueError, match="first dimension"):
        fit(RecordingSVI(), (torch.zeros(5, 2), torch.zeros(4)), iterations=1, batch_size=2, progress=False)


def test_fit_trains_a_deep_lds_on_padded_sequences_with_mask_and_lengths():
    """The lengths reach the model and the guide: one full natural step counts only real transitions."""
    from pyro.infer import SVI

    import pyro_sin
    from pyro_sin.models import DeepLatentSequence
    from pyro_sin.nn import GaussianDecoder, GaussianEncoder
    from pyro_sin.pgm import LinearDynamicalSystem

    N, T, P = 6, 10, 3
    y = torch.randn(N, T, P)
    mask = torch.ones(N, T)
    mask[:, 2] = 0
    lengths = torch.tensor([10, 3, 7, 1, 5, 9])
    lds = LinearDynamicalSystem(2)
    model = DeepLatentSequence(lds, GaussianDecoder(2, P, (8,)), N)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)))
    optim = pyro_sin.NaturalAdam({"lr": 0.01}, natural_lr=1.0)
    svi = SVI(model, guide, optim, pyro_sin.SINELBO(max_plate_nesting=1))

    class FirstBatch:
        def step(self, *args, indices):
            self.indices = indices
            return svi.step(*args, indices=indices)

    recorder = FirstBatch()
    fit(recorder, (y, mask, lengths), iterations=1, batch_size=3, progress=False)
    transitions = (lengths[recorder.indices] - 1).sum()
    df = guide.global_posterior().matrix_normal_wishart.df
    torch.testing.assert_close(df - lds.prior().df, N / 3 * transitions.to(df.dtype))


def test_history_counts_the_states_of_an_hmm_and_nothing_for_an_lds():
    from pyro_sin.models import DeepLatentSequence
    from pyro_sin.nn import GaussianDecoder, GaussianEncoder
    from pyro_sin.pgm import LatentHMM, LinearDynamicalSystem

    y = torch.randn(6, 5, 3)
    for prior in (LatentHMM(3, 2), LinearDynamicalSystem(2)):
        pyro.clear_param_store()
        model = DeepLatentSequence(prior, GaussianDecoder(2, 3, (8,)), len(y))
        guide = model.make_guide(GaussianEncoder(3, 2, (8,)))
        svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.1), SINELBO())
        history = fit(svi, y, iterations=3, batch_size=3, progress=False)
        if isinstance(prior, LatentHMM):  # states in use, read off the Normal-Wisharts' counts
            assert len(history.components) == 3 and all(1 <= k <= 3 for k in history.components)
        else:  # an LDS has no units to count
            assert history.components == []


class _DriftingSVI(_ScriptedSVI):
    """A _ScriptedSVI whose update moves the parameter ``weight`` by one each step."""

    def optim(self, params):
        super().optim(params)
        with torch.no_grad():
            for p in params:
                p.add_(1.0)


@pytest.mark.parametrize("best_at", [0, 20, 40])
def test_select_returns_the_parameters_of_the_best_evaluation(best_at):
    """A held-out score peaking at ``best_at``: fit hands back the parameters it had then, step 0 included."""
    svi = _DriftingSVI([1.0] * 40)
    pyro.param("weight", torch.zeros(2))
    score = lambda: -abs(pyro.param("weight")[0].item() - best_at)  # noqa: E731
    history = fit(
        svi,
        torch.zeros(10, 1),
        iterations=40,
        batch_size=10,
        progress=False,
        evaluate=lambda: {"s": score()},
        eval_every=10,
        select="s",
    )
    assert history.selected_step == best_at and history.eval_steps == [0, 10, 20, 30, 40]
    assert torch.equal(pyro.param("weight"), torch.full((2,), float(best_at)))


def test_select_with_patience_stops_once_the_score_has_not_improved():
    svi = _DriftingSVI([1.0] * 100)
    pyro.param("weight", torch.zeros(2))
    history = fit(
        svi,
        torch.zeros(10, 1),
        iterations=100,
        batch_size=10,
        progress=False,
        eval_every=10,
        select=lambda: -pyro.param("weight")[0].item() if pyro.param("weight")[0].item() > 10 else 0.0,
        patience=3,
    )
    # scores 0 (step 0), 0 (10: not better), -20, -30 -> three evaluations without improvement after step 0
    assert len(history.losses) == 30 and history.selected_step == 0
    assert torch.equal(pyro.param("weight"), torch.zeros(2))
    with pytest.raises(ValueError, match="patience needs select"):
        fit(svi, torch.zeros(10, 1), iterations=1, batch_size=10, progress=False, patience=2)
    with pytest.raises(ValueError, match="no evaluate"):
        fit(svi, torch.zeros(10, 1), iterations=1, batch_size=10, progress=False, select="s")


def test_select_restores_the_networks_of_step_0_that_the_first_step_registers():
    """The networks enter the param store on the first call of the model and guide; a selected step 0 still has them."""
    split = pinwheel(seed=0)
    svi = _san(split.train, lr=0.3)
    start = {k: v.clone() for k, v in svi.guide.encoder.state_dict().items()}
    scores = iter([1.0, 0.0, 0.0])
    history = fit(
        svi, split.train, iterations=20, batch_size=100, progress=False, eval_every=10, select=lambda: next(scores)
    )
    assert history.selected_step == 0
    for name, value in svi.guide.encoder.state_dict().items():
        assert torch.equal(value, start[name]), name


def test_select_never_ends_below_the_start_on_held_out_data():
    """SAN with an absurd learning rate for the networks: the held-out bound is never worse than at step 0."""
    split = pinwheel(seed=0)
    svi = _san(split.train, lr=0.3)
    # the model scales any batch to the 700 training points: the bound per point divides by 700
    heldout = lambda: {"bound": -svi.evaluate_loss(split.test) / len(split.train)}  # noqa: E731
    start = heldout()["bound"]
    history = fit(
        svi,
        split.train,
        iterations=60,
        batch_size=100,
        progress=False,
        evaluate=heldout,
        eval_every=20,
        select="bound",
        guard=False,
    )
    scores = [e["bound"] for e in history.evals]
    assert history.selected_step == history.eval_steps[scores.index(max(scores))]
    assert heldout()["bound"] >= start - 0.05 * abs(start)  # the held-out bound is itself a Monte Carlo estimate


# ----- the guard outside fit: NaturalAdam checks every step before it moves anything --------------------


def _store_copy():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def test_plain_svi_step_refuses_a_diverging_update_with_the_parameters_unchanged():
    # the case: lr 1.0 on the pinwheel data took the loss per point from 8.7 to 8e5 without a word
    train = pinwheel().train
    svi = _san(train, lr=1.0)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(DivergenceError, match=r"^NaturalAdam: the loss per data point rose .* not applied"):
        for _ in range(50):
            idx = torch.randperm(len(train), generator=generator)[:100]
            before = _store_copy()
            svi.step(train[idx], idx)
    after = _store_copy()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_nan_data_are_refused_and_a_diverged_encoder_raises_a_divergence_error_with_validation_off():
    train = pinwheel().train.clone()
    svi = _san(pinwheel().train)
    idx = torch.arange(100)
    pyro.enable_validation(False)
    try:
        svi.step(train[idx], idx)
        train[:, 0] = math.nan  # NaN data are refused where they enter the guide, whatever the validation setting
        with pytest.raises(ValueError, match=r"the data contain NaN or inf \(minibatch rows \[0, 1, 2, 3, 4\]\)"):
            svi.step(train[idx], idx)
        # finite data through an encoder whose weights went NaN: a DivergenceError naming the potentials, not a
        # LinAlgError from inside the family, and no parameter moved
        with torch.no_grad():
            for name in [name for name in pyro.get_param_store().keys() if "encoder" in name]:
                pyro.param(name).unconstrained().fill_(math.nan)
        before = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
        with pytest.raises(DivergenceError, match="non-finite Gaussian potential"):
            svi.step(pinwheel().train[idx], idx)
        for name, value in pyro.get_param_store().items():
            assert torch.equal(value.detach(), before[name]) or not torch.isfinite(before[name]).all(), name
    finally:
        pyro.enable_validation(True)


def test_natural_adam_refuses_a_non_finite_gradient_and_can_be_told_not_to_check():
    weight = pyro.param("weight", torch.ones(3)).unconstrained()
    weight.grad = torch.tensor([1.0, math.inf, 0.0])
    with pytest.raises(DivergenceError, match=r"NaturalAdam: non-finite gradient at step 1 in 1 parameter.*weight"):
        NaturalAdam({"lr": 0.1})([weight])
    assert torch.equal(weight.detach(), torch.ones(3))
    unguarded = NaturalAdam({"lr": 0.1}, guard=False)
    unguarded([weight])  # the opt-out: what a stock optimiser would do
    assert not torch.isfinite(weight.detach()).all()


def test_fit_reports_with_its_own_guard_and_puts_the_optimisers_back():
    train = pinwheel().train
    svi = _san(train, lr=1.0)
    guard = svi.optim.guard
    with pytest.raises(DivergenceError, match=r"^SVI: "):  # fit's guard, not NaturalAdam's
        fit(svi, train, iterations=200, batch_size=100, progress=False)
    assert svi.optim.guard is guard
    svi = _san(train, lr=1.0)
    fit(svi, train, iterations=10, batch_size=100, progress=False, guard=False)  # guard=False switches both off
    assert svi.optim.guard is not None
