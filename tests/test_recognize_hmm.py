"""
The drop-in guide for a latent HMM written with plain Pyro statements (a Categorical chain under
``pyro.markov``, one site per step): recognised (:mod:`pyro_sin.recognize`) and trained exactly
as the hand-written :class:`~pyro_sin.pgm.LatentHMM` is (the same bounds, natural targets,
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
from pyro.ops.indexing import Vindex

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import LatentHMM
from pyro_sin.recognize import NotRecognizedError, _check_path_reproduces, recognize

from tests.helpers import random_spd

K, D, P, N, T = 3, 2, 3, 8, 4
EXACT = dict(rtol=0, atol=1e-6)


def hyperparameters():
    return dict(
        alpha=torch.tensor([0.4, 1.0, 2.5]),
        beta=torch.tensor([[3.0, 0.5, 0.7], [0.6, 2.5, 0.4], [0.8, 0.9, 4.0]]),
        df=D + 1.5,
        cov=random_spd((), D, 0.5),
        m0=torch.tensor([0.3, -0.2]),
        kappa=0.7,
    )


def plain_hmm(decoder, h, transitions=None, state=None, latent=None, observe=None, markov=True):
    """Pyro's HMM tutorial style: a states plate, Vindex, pyro.markov; one part replaceable."""

    def model(y, idx=None):
        pyro.module("decoder", decoder)
        init = pyro.sample("init", dist.Dirichlet(h["alpha"]))
        with pyro.plate("states", K):
            trans = transitions() if transitions else pyro.sample("trans", dist.Dirichlet(h["beta"]))
            prec = pyro.sample("prec", dist.Wishart(h["df"], covariance_matrix=h["cov"]))
            locs = pyro.sample("locs", dist.MultivariateNormal(h["m0"], precision_matrix=h["kappa"] * prec))
        with pyro.plate("sequences", N, subsample=idx):
            z, states = None, []
            for t in pyro.markov(range(T)) if markov else range(T):
                if state and z is not None:
                    z = state(t, trans, z, states)
                else:
                    z = pyro.sample(f"z_{t}", dist.Categorical(init if z is None else Vindex(trans)[..., z, :]))
                states.append(z)
                if latent:
                    x = latent(t, locs, prec, states)
                else:
                    x = pyro.sample(
                        f"x_{t}",
                        dist.MultivariateNormal(Vindex(locs)[..., z, :], precision_matrix=Vindex(prec)[..., z, :, :]),
                    )
                fn = observe(x, z) if observe else decoder.distribution(x)
                pyro.sample(f"y_{t}", fn, obs=y[..., t, :])

    return model


def hand_written(decoder, h):
    """The same model around LatentHMM's own sample statements (one site per path)."""
    hmm = LatentHMM(
        K,
        D,
        "x",
        init_concentration=h["alpha"],
        transition_concentration=h["beta"],
        loc=h["m0"],
        kappa=h["kappa"],
        scale_inv=torch.linalg.inv(h["cov"]),
        df=h["df"],
    )

    def model(y, idx=None):
        pyro.module("hand_decoder", decoder)  # its own parameters in the param store
        params = hmm.sample_params()
        with pyro.plate("sequences", N, subsample=idx):
            x = hmm.sample_latent(params, T)
            pyro.sample("y", decoder.distribution(x).to_event(1), obs=y)

    return model, hmm


def both_routes(factor="tied"):
    """(plain model, its drop-in guide), (hand-written model, its guide), data: same networks and λ."""
    h = hyperparameters()
    decoder, encoder = GaussianDecoder(D, P, (6,)), GaussianEncoder(P, D, (6,))
    y = 2 * torch.randn(N, T, P)
    hand_model, hmm = hand_written(copy.deepcopy(decoder), h)
    init = hmm.init_natural()
    hand_guide = SINGuide(hand_model, hmm, copy.deepcopy(encoder), factor=factor, init_natural=init, name="hand")
    model = plain_hmm(decoder, h)
    guide = SINGuide(model, encoder=encoder, factor=factor, init_natural=init, name="dropin")
    return (model, guide), (hand_model, hand_guide), y


# ----- recognition ------------------------------------------------------------------------


def test_the_recognised_prior_is_the_hand_written_latent_hmm():
    (model, guide), (_, hand_guide), y = both_routes()
    guide(y[:4], torch.arange(4))
    recognition, prior, hmm = guide.recognition, guide.pgm, hand_guide.pgm
    assert recognition.family == "hmm" and isinstance(prior, LatentHMM) and prior.name == "x_0"
    assert prior.global_sites == ("init", "trans", "prec", "locs")
    assert prior.local_sites == tuple(f"{site}_{t}" for t in range(T) for site in ("z", "x"))
    assert recognition.steps == (tuple(f"z_{t}" for t in range(T)), tuple(f"x_{t}" for t in range(T)))
    for buffer in (
        "prior_init_concentration",
        "prior_transition_concentration",
        "prior_loc",
        "prior_kappa",
        "prior_scale_inv",
        "prior_df",
    ):
        assert_close(getattr(prior, buffer), getattr(hmm, buffer), **EXACT)
    before = torch.get_rng_state()  # recognition consumes none of the user's random numbers
    recognize(model, y[:4], torch.arange(4))
    assert torch.equal(before, torch.get_rng_state())


def test_the_per_step_sites_are_the_path_distributions_of_the_hand_written_route():
    """
    Model and guide, the sites' log densities summed over the steps are the hand-written route's
    densities of the whole path (the family's p(z) p(x | z), the SIN's q(z) q(x | z)), on the same
    draws: what makes the per-step guide correct for Pyro's own ELBOs.
    """
    (model, guide), (hand_model, hand_guide), y = both_routes()
    traces = []
    for m, g in ((model, guide), (hand_model, hand_guide)):
        pyro.set_rng_seed(5)
        guide_trace = poutine.trace(g).get_trace(y, None)
        model_trace = poutine.trace(poutine.replay(m, trace=guide_trace)).get_trace(y, None)
        traces.append((guide_trace, model_trace))
    (guide_trace, model_trace), (hand_guide_trace, hand_model_trace) = traces
    states = torch.stack([guide_trace.nodes[f"z_{t}"]["value"] for t in range(T)], -1)
    x = torch.stack([guide_trace.nodes[f"x_{t}"]["value"] for t in range(T)], -2)
    assert torch.equal(states, hand_guide_trace.nodes["x_states"]["value"])  # the same random numbers
    assert_close(x, hand_guide_trace.nodes["x"]["value"], **EXACT)
    for ours, theirs in ((guide_trace, hand_guide_trace), (model_trace, hand_model_trace)):
        per_step = sum(ours.nodes[name]["fn"].log_prob(ours.nodes[name]["value"]) for name in guide.pgm.local_sites)
        path = sum(theirs.nodes[name]["fn"].log_prob(theirs.nodes[name]["value"]) for name in ("x_states", "x"))
        if ours is model_trace:  # the model's θ are drawn from q(θ) by either guide: the same values
            assert_close(ours.nodes["trans"]["value"], theirs.nodes["x_transition_probs"]["value"], **EXACT)
        assert_close(per_step, path, **EXACT)


def test_a_chain_whose_steps_do_not_make_the_familys_path_is_refused():
    """The set-up check: per-step densities summed against the family's whole-path density."""
    model, y = plain_hmm(GaussianDecoder(D, P, (4,)), hyperparameters()), torch.randn(N, T, P)
    recognition = recognize(model, y)
    chain, latents = recognition.steps
    _check_path_reproduces(recognition.prior, recognition.trace, chain, latents)
    swapped = (chain[0], chain[2], chain[1]) + chain[3:]  # the same sites, in another order
    with pytest.raises(NotRecognizedError, match="site 'z_0': found per-step log densities that sum to"):
        _check_path_reproduces(recognition.prior, recognition.trace, swapped, latents)


# ----- training: the same numbers as the hand-written route -------------------------------------


@pytest.mark.parametrize("factor", ["tied", "free"])
def test_training_with_the_drop_in_guide_repeats_the_hand_written_latent_hmm(factor):
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


def test_natural_target_gradients_and_local_posterior_match_the_hand_written_latent_hmm():
    (model, guide), (hand_model, hand_guide), y = both_routes()
    idx = torch.tensor([1, 4, 6])  # a minibatch: the target's scale N/|B| is read off the model's plate
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
    assert_close(post.state_probs, hand_post.state_probs, **EXACT)
    assert_close(post.transition_counts, hand_post.transition_counts, **EXACT)
    assert_close(post.emission.loc, hand_post.emission.loc, **EXACT)
    assert_close(post.log_normalizer, hand_post.log_normalizer, **EXACT)


def test_the_drop_in_hmm_guide_serves_pyros_stock_elbo():
    (model, guide), _, y = both_routes()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(num_particles=2))
    losses = [svi.step(y[:4], torch.arange(4)) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))


# ----- refusals -------------------------------------------------------------------------------


def _mvn(loc, precision):
    return dist.MultivariateNormal(loc, precision_matrix=precision)


def _lognormal_transitions():
    return pyro.sample("trans", dist.LogNormal(0.0, 1.0).expand([K]).to_event(1))


def _normalised_row(t, trans, z, states):
    row = Vindex(trans)[..., z, :]
    return pyro.sample(f"z_{t}", dist.Categorical(row / row.sum(-1, keepdim=True)))


#: case -> (model options, the message that refuses it)
REFUSED = {
    "a chain without pyro.markov": (
        dict(markov=False),
        "site 'z_1': found a second discrete latent site besides 'z_0', outside any pyro.markov context",
    ),
    "log-normal transitions": (
        dict(transitions=_lognormal_transitions, state=_normalised_row),
        "site 'trans': found a LogNormal of batch shape .* as the prior of the transition rows; expected a Dirichlet",
    ),
    "fixed transitions": (
        dict(transitions=lambda: pyro.param("trans", torch.full((K, K), 1.0 / K), constraint=dist.constraints.simplex)),
        "site 'trans': found transition probabilities fixed by pyro.param",
    ),
    "transitions not indexed by the previous state": (
        dict(
            state=lambda t, trans, z, states: pyro.sample(f"z_{t}", dist.Categorical(trans[0].expand(z.shape + (K,))))
        ),
        "site 'z_1': found probabilities that are no \\(K, K\\) site's rows indexed by the previous state 'z_0'",
    ),
    "transitions indexed by the first state at every step": (
        dict(
            state=lambda t, trans, z, states: pyro.sample(f"z_{t}", dist.Categorical(Vindex(trans)[..., states[0], :]))
        ),
        "site 'z_2': found probabilities that are not the rows of 'trans' indexed by the previous state 'z_1'",
    ),
    "emissions not indexed by the state": (
        dict(
            latent=lambda t, locs, prec, states: pyro.sample(
                f"x_{t}", _mvn(Vindex(locs)[..., states[t - 1], :], Vindex(prec)[..., states[t], :, :])
            )
        ),
        "site 'x_1': found a mean that is not a component mean indexed by the state 'z_1'",
    ),
    "a diagonal Normal emission": (
        dict(
            latent=lambda t, locs, prec, states: pyro.sample(
                f"x_{t}", dist.Normal(Vindex(locs)[..., states[t], :], 1.0).to_event(1)
            )
        ),
        "site 'x_0': found a Normal of batch shape",
    ),
    "a decoder that reads the states": (
        dict(
            observe=lambda x, z: (
                dist.Normal(x.sum(-1, keepdim=True) + z[..., None], 1.0).expand(x.shape[:-1] + (P,)).to_event(1)
            )
        ),
        "site 'y_0': found a site that depends on the chain's parameters or states other than through its latents",
    ),
}


def _masked(y, idx=None):
    """Sequences of different lengths, written with a mask: refused for now."""
    h = hyperparameters()
    init = pyro.sample("init", dist.Dirichlet(h["alpha"]))
    with pyro.plate("states", K):
        trans = pyro.sample("trans", dist.Dirichlet(h["beta"]))
        prec = pyro.sample("prec", dist.Wishart(h["df"], covariance_matrix=h["cov"]))
        locs = pyro.sample("locs", _mvn(h["m0"], h["kappa"] * prec))
    lengths = torch.tensor([T, 2] * (N // 2))
    with pyro.plate("sequences", N, subsample=idx):
        z = None
        for t in pyro.markov(range(T)):
            with poutine.mask(mask=t < lengths):
                z = pyro.sample(f"z_{t}", dist.Categorical(init if z is None else Vindex(trans)[..., z, :]))
                pyro.sample(f"x_{t}", _mvn(Vindex(locs)[..., z, :], Vindex(prec)[..., z, :, :]))


@pytest.mark.parametrize("case", list(REFUSED) + ["masked sequences"])
def test_what_is_not_a_latent_hmm_is_refused_naming_the_site(case):
    pyro.set_rng_seed(0)
    if case == "masked sequences":
        model, message = _masked, "site 'z_0': found a masked state .*; expected sequences of equal length"
    else:
        options, message = REFUSED[case]
        model = plain_hmm(GaussianDecoder(D, P, (4,)), hyperparameters(), **options)
    guide = SINGuide(model, encoder=GaussianEncoder(P, D, (4,)))
    with pytest.raises(NotRecognizedError, match=message) as refusal:
        guide(torch.randn(N, T, P), None)
    assert "; expected " in str(refusal.value)
