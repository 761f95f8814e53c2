"""
The drop-in guide for a latent LDS written with plain Pyro statements (a MultivariateNormal chain
under ``pyro.markov``, one site per step, its dynamics drawn from the package's
Matrix-Normal-Wishart): recognised (:mod:`pyro_sin.recognize`) and trained exactly as the
hand-written :class:`~pyro_sin.pgm.LinearDynamicalSystem` is (the same bounds, natural targets,
gradients and local posteriors to 1e-6 in float64), its per-step guide sites a correct guide for
Pyro's own ELBOs, and what is not recognised refused with a message that names the site.
"""

import copy

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.distributions import MatrixNormal, MatrixNormalWishart
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import LinearDynamicalSystem
from pyro_sin.recognize import NotRecognizedError, _LDSRecognizer, recognize

from tests.helpers import random_spd

D, P, N, T = 2, 3, 6, 5
EXACT = dict(rtol=0, atol=1e-6)


def hyperparameters():
    return dict(
        m0=torch.tensor([0.3, -0.2]),
        P0=random_spd((), D, 0.5),
        M0=torch.cat([0.8 * torch.eye(D), torch.tensor([[0.1], [-0.3]])], -1),
        K0=random_spd((), D + 1, 1.0),
        Psi=random_spd((), D, 0.5),
        df=D + 2.5,
    )


def _affine(transition, x):
    return (transition[..., :D] @ x[..., None])[..., 0] + transition[..., D]


def plain_lds(decoder, h, dynamics=None, step=None, observe=None, markov=True, mask=None):
    """A Pyro model written step by step under pyro.markov; one part replaceable."""

    def model(y, idx=None):
        pyro.module("decoder", decoder)
        mnw = MatrixNormalWishart(h["M0"], h["K0"], h["Psi"], torch.tensor(h["df"]))
        noise_precision = pyro.sample("noise_precision", mnw.precision_dist())
        if dynamics:
            transition = dynamics(mnw, noise_precision)
        else:
            transition = pyro.sample("dynamics", mnw.loc_dist(noise_precision))
        with pyro.plate("sequences", N, subsample=idx):
            x = None
            for t in pyro.markov(range(T)) if markov else range(T):
                with poutine.mask(mask=mask(t)) if mask else poutine.block(hide_all=False):
                    if x is None:
                        x = pyro.sample("x_0", dist.MultivariateNormal(h["m0"], precision_matrix=h["P0"]))
                    elif step:
                        x = step(t, transition, noise_precision, x)
                    else:
                        loc = _affine(transition, x)
                        x = pyro.sample(f"x_{t}", dist.MultivariateNormal(loc, precision_matrix=noise_precision))
                    fn = observe(x, transition) if observe else decoder.distribution(x)
                    pyro.sample(f"y_{t}", fn, obs=y[..., t, :])

    return model


def hand_written(decoder, h):
    """The same model around LinearDynamicalSystem's own sample statements (one site per path)."""
    lds = LinearDynamicalSystem(
        D,
        "x",
        init_loc=h["m0"],
        init_precision=h["P0"],
        transition_loc=h["M0"],
        col_precision=h["K0"],
        scale_inv=h["Psi"],
        df=h["df"],
    )

    def model(y, idx=None):
        pyro.module("hand_decoder", decoder)  # its own parameters in the param store
        params = lds.sample_params()
        with pyro.plate("sequences", N, subsample=idx):
            x = lds.sample_latent(params, T)
            pyro.sample("y", decoder.distribution(x).to_event(1), obs=y)

    return model, lds


def both_routes(factor="tied"):
    """(plain model, its drop-in guide), (hand-written model, its guide), data: same networks and λ."""
    h = hyperparameters()
    decoder, encoder = GaussianDecoder(D, P, (6,)), GaussianEncoder(P, D, (6,))
    y = 2 * torch.randn(N, T, P)
    hand_model, lds = hand_written(copy.deepcopy(decoder), h)
    init = lds.init_natural()
    hand_guide = SINGuide(hand_model, lds, copy.deepcopy(encoder), factor=factor, init_natural=init, name="hand")
    model = plain_lds(decoder, h)
    guide = SINGuide(model, encoder=encoder, factor=factor, init_natural=init, name="dropin")
    return (model, guide), (hand_model, hand_guide), y


# ----- recognition ------------------------------------------------------------------------


def test_the_recognised_prior_is_the_hand_written_lds():
    (model, guide), (_, hand_guide), y = both_routes()
    guide(y[:4], torch.arange(4))
    recognition, prior, lds = guide.recognition, guide.pgm, hand_guide.pgm
    assert recognition.family == "lds" and isinstance(prior, LinearDynamicalSystem) and prior.name == "x_0"
    assert prior.global_sites == ("noise_precision", "dynamics")
    assert prior.local_sites == tuple(f"x_{t}" for t in range(T))
    assert recognition.steps == (tuple(f"x_{t}" for t in range(T)),)
    for buffer in (
        "init_loc",
        "init_precision",
        "prior_transition_loc",
        "prior_col_precision",
        "prior_scale_inv",
        "prior_df",
    ):
        assert_close(getattr(prior, buffer), getattr(lds, buffer), **EXACT)
    before = torch.get_rng_state()  # recognition consumes none of the user's random numbers
    recognize(model, y[:4], torch.arange(4))
    assert torch.equal(before, torch.get_rng_state())


def test_the_per_step_sites_are_the_path_distributions_of_the_hand_written_route():
    """
    Model and guide, the sites' log densities summed over the steps are the hand-written route's
    densities of the whole path (the family's p(x | θ), the SIN's q(x), whose steps are the Kalman
    smoother's conditionals q(x_t | x_{t-1})), on the same draws: what makes the per-step guide
    correct for Pyro's own ELBOs.
    """
    (model, guide), (hand_model, hand_guide), y = both_routes()
    traces = []
    for m, g in ((model, guide), (hand_model, hand_guide)):
        pyro.set_rng_seed(5)
        guide_trace = poutine.trace(g).get_trace(y, None)
        model_trace = poutine.trace(poutine.replay(m, trace=guide_trace)).get_trace(y, None)
        traces.append((guide_trace, model_trace))
    (guide_trace, model_trace), (hand_guide_trace, hand_model_trace) = traces
    x = torch.stack([guide_trace.nodes[f"x_{t}"]["value"] for t in range(T)], -2)
    assert_close(x, hand_guide_trace.nodes["x"]["value"], **EXACT)  # the same random numbers
    for ours, theirs in ((guide_trace, hand_guide_trace), (model_trace, hand_model_trace)):
        per_step = sum(ours.nodes[name]["fn"].log_prob(ours.nodes[name]["value"]) for name in guide.pgm.local_sites)
        path = theirs.nodes["x"]["fn"].log_prob(theirs.nodes["x"]["value"])
        if ours is model_trace:  # the model's θ are drawn from q(θ) by either guide: the same values
            assert_close(ours.nodes["dynamics"]["value"], theirs.nodes["x_transition"]["value"], **EXACT)
        assert per_step.shape == path.shape == (N,)
        assert_close(per_step, path, **EXACT)


# ----- training: the same numbers as the hand-written route -------------------------------------


@pytest.mark.parametrize("factor", ["tied", "free"])
def test_training_with_the_drop_in_guide_repeats_the_hand_written_lds(factor):
    (model, guide), (hand_model, hand_guide), y = both_routes(factor)
    batches = [torch.randperm(N, generator=torch.Generator().manual_seed(s))[:4] for s in range(3)]

    def train(model, guide):
        pyro.set_rng_seed(7)
        svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.3), SINELBO(num_particles=3))
        return torch.tensor([svi.step(y[i], i) for i in batches])

    losses, hand_losses = train(model, guide), train(hand_model, hand_guide)
    assert_close(losses, hand_losses, **EXACT)
    assert_close(guide.natural.detach(), hand_guide.natural.detach(), **EXACT)
    assert not torch.allclose(hand_losses[0], hand_losses[-1])  # it trained


def test_natural_target_gradients_and_local_posterior_match_the_hand_written_lds():
    (model, guide), (hand_model, hand_guide), y = both_routes()
    idx = torch.tensor([1, 4, 5])  # a minibatch: the target's scale N/|B| is read off the model's plate
    results = []
    for m, g in ((model, guide), (hand_model, hand_guide)):
        elbo = SINELBO(num_particles=3)
        pyro.set_rng_seed(3)
        loss, surrogate, records = elbo._loss_surrogate_records(m, g, (y[idx], idx), {})
        surrogate.backward()
        ((_, _, target),) = elbo.natural_targets(records).values()
        grads = [p.grad.clone() for p in g.encoder.parameters()]
        results.append((loss.detach(), target, grads, g.local_posterior(y)))
    (loss, target, grads, post), (hand_loss, hand_target, hand_grads, hand_post) = results
    assert_close(loss, hand_loss, **EXACT)
    assert_close(target, hand_target, **EXACT)
    for grad, hand_grad in zip(grads, hand_grads):
        assert_close(grad, hand_grad, **EXACT)
    assert_close(post.log_normalizer, hand_post.log_normalizer, **EXACT)
    assert_close(post.marginal_means(), hand_post.marginal_means(), **EXACT)
    assert_close(post.marginal_covariances(), hand_post.marginal_covariances(), **EXACT)


def test_the_drop_in_lds_guide_serves_pyros_stock_elbo():
    (model, guide), _, y = both_routes()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(num_particles=2))
    losses = [svi.step(y[:4], torch.arange(4)) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))


# ----- refusals -------------------------------------------------------------------------------


def _mvn(loc, precision):
    return dist.MultivariateNormal(loc, precision_matrix=precision)


def _gaussian_hmm_model(y, idx=None):
    """Pyro's GaussianHMM: the chain summed out within the observations' site."""
    h = hyperparameters()
    hmm = dist.GaussianHMM(
        _mvn(h["m0"], h["P0"]),
        h["M0"][:, :D].T,
        _mvn(torch.zeros(D), torch.eye(D)),
        torch.ones(D, P),
        dist.Normal(torch.zeros(P), 1.0).to_event(1),
        duration=T,
    )
    pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("sequences", N, subsample=idx):
        pyro.sample("y", hmm, obs=y)


#: case -> (model options, the message that refuses it)
REFUSED = {
    "a chain without pyro.markov": (
        dict(markov=False),
        "site 'x_1': found a second continuous latent site besides 'x_0' in the plate of the observations, "
        "outside any pyro.markov context",
    ),
    "a location not linear in the previous state": (
        dict(step=lambda t, B, lam, x: pyro.sample(f"x_{t}", _mvn(torch.tanh(_affine(B, x)), lam))),
        "site 'x_1': found a location that is not a linear map A x_0 \\+ b of the previous state",
    ),
    "a location without bias": (
        dict(
            dynamics=lambda mnw, lam: pyro.sample("dynamics", MatrixNormal(mnw.loc[:, :D], lam, torch.eye(D))),
            step=lambda t, A, lam, x: pyro.sample(f"x_{t}", _mvn((A @ x[..., None])[..., 0], lam)),
        ),
        "site 'x_1': found a location A x_0 with the site 'dynamics' of shape \\(2, 2\\) and no bias",
    ),
    "dynamics fixed by pyro.param": (
        dict(dynamics=lambda mnw, lam: pyro.param("dynamics", mnw.loc.clone())),
        "site 'dynamics': found a dynamics fixed by pyro.param",
    ),
    "a diagonal Normal chain": (
        dict(step=lambda t, B, lam, x: pyro.sample(f"x_{t}", dist.Normal(_affine(B, x), 1.0).to_event(1))),
        "site 'x_1': found a Normal of batch shape .* in the pyro.markov chain \\(independent coordinates",
    ),
    "dynamics whose prior ignores the noise precision": (
        dict(dynamics=lambda mnw, lam: pyro.sample("dynamics", MatrixNormal(mnw.loc, torch.eye(D), mnw.col_precision))),
        "site 'dynamics': found a MatrixNormal whose row precision is not the noise precision 'noise_precision'",
    ),
    "a precision that is not the noise precision": (
        dict(step=lambda t, B, lam, x: pyro.sample(f"x_{t}", _mvn(_affine(B, x), lam + torch.eye(D)))),
        "site 'x_1': found a precision that is no site's value outside the plate of sequences",
    ),
    "a decoder that reads the dynamics": (
        dict(observe=lambda x, B: dist.Normal(x[..., :1] + B.sum(), 1.0).expand(x.shape[:-1] + (P,)).to_event(1)),
        "site 'y_0': found a site that depends on the dynamics or the noise precision",
    ),
    "masked sequences": (
        dict(mask=lambda t: t < torch.tensor([T, 2] * (N // 2))),
        "site 'x_0': found a masked state .*; expected sequences of equal length",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED) + ["Pyro's GaussianHMM"])
def test_what_is_not_a_latent_lds_is_refused_naming_the_site(case):
    pyro.set_rng_seed(0)
    if case == "Pyro's GaussianHMM":
        model = _gaussian_hmm_model
        message = "site 'y': found a GaussianHMM .*; expected the latent LDS written one step at a time"
    else:
        options, message = REFUSED[case]
        model = plain_lds(GaussianDecoder(D, P, (4,)), hyperparameters(), **options)
    guide = SINGuide(model, encoder=GaussianEncoder(P, D, (4,)))
    with pytest.raises(NotRecognizedError, match=message) as refusal:
        guide(torch.randn(N, T, P), None)
    assert "; expected " in str(refusal.value)


# ----- the set-up checks ------------------------------------------------------------------------


def test_the_familys_per_step_statements_reproduce_the_model():
    """The recognised family's own (unrolled) sample statements give the model's sites and densities."""
    model, y = plain_lds(GaussianDecoder(D, P, (4,)), hyperparameters()), torch.randn(N, T, P)
    recognition = recognize(model, y)
    prior, trace = recognition.prior, recognition.trace
    names = prior.global_sites + prior.local_sites

    def family():
        params = prior.sample_params()
        with pyro.plate("sequences", N):
            prior.sample_latent(params, T)

    data = {name: trace.nodes[name]["value"] for name in names}
    ours = poutine.trace(poutine.condition(family, data=data)).get_trace()
    for name in names:
        model_site, family_site = trace.nodes[name], ours.nodes[name]
        assert family_site["cond_indep_stack"] == model_site["cond_indep_stack"]
        assert_close(
            family_site["fn"].log_prob(family_site["value"]), model_site["fn"].log_prob(model_site["value"]), **EXACT
        )


def test_a_chain_whose_steps_do_not_make_the_familys_path_is_refused():
    """The set-up check: per-step densities summed against the family's whole-path density."""
    model, y = plain_lds(GaussianDecoder(D, P, (4,)), hyperparameters()), torch.randn(N, T, P)
    recognizer = _LDSRecognizer(model, (y,), {}, recognize(model, y).trace, [f"x_{t}" for t in range(T)])
    recognizer._steps()
    recognizer._initial_state()
    recognizer._dynamics()
    prior = recognizer._prior()
    recognizer._check_path_reproduces(prior)
    with torch.no_grad():
        prior.init_loc.add_(0.5)  # a family whose first step is not the model's
    with pytest.raises(NotRecognizedError, match="site 'x_0': found per-step log densities that sum to"):
        recognizer._check_path_reproduces(prior)
