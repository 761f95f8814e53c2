"""
The drop-in guide: a Gaussian mixture written with plain Pyro statements is recognised
(:mod:`pyro_sin.recognize`) and trained exactly as the hand-written structured prior is
(the same bounds, natural targets, gradients and local posteriors to 1e-6 in float64), and
what is not recognised is refused with a message that names the site.
"""

import copy

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
from pyro.ops.indexing import Vindex

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.nn import GaussianDecoder, GaussianEncoder
from pyro_sin.pgm import GaussianMixture
from pyro_sin.recognize import NotRecognizedError, _check_reproduces, recognize

from tests.helpers import random_spd

K, D, P, N = 3, 2, 3, 12
EXACT = dict(rtol=0, atol=1e-6)


def hyperparameters():
    return dict(
        alpha=torch.tensor([0.4, 1.0, 2.5]),
        df=D + 1.5,
        cov=random_spd((), D, 0.5),
        m0=torch.tensor([0.3, -0.2]),
        kappa=0.7,
    )


# ----- the same Gaussian mixture in several writing styles --------------------------------


def vindex_style(decoder, h):
    """Pyro's GMM tutorial style: a components plate, Vindex, Wishart by its covariance."""

    def model(y, idx=None):
        pyro.module("decoder", decoder)
        weights = pyro.sample("weights", dist.Dirichlet(h["alpha"]))
        with pyro.plate("components", K):
            precisions = pyro.sample("precisions", dist.Wishart(h["df"], covariance_matrix=h["cov"]))
            locs = pyro.sample("locs", dist.MultivariateNormal(h["m0"], precision_matrix=h["kappa"] * precisions))
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("assignment", dist.Categorical(weights))
            loc, precision = Vindex(locs)[..., z, :], Vindex(precisions)[..., z, :, :]
            x = pyro.sample("x", dist.MultivariateNormal(loc, precision_matrix=precision))
            pyro.sample("y", decoder.distribution(x), obs=y)

    return model


def indexing_style(decoder, h):
    """Plain indexing, .to_event(1) instead of a plate, other names and parametrisations."""

    def model(y, idx=None):
        pyro.module("decoder", decoder)
        pi = pyro.sample("pi", dist.Dirichlet(h["alpha"]))
        scale_tril = torch.linalg.cholesky(h["cov"])
        lam = pyro.sample("lam", dist.Wishart(h["df"], scale_tril=scale_tril).expand([K]).to_event(1))
        covariance = torch.linalg.inv(h["kappa"] * lam)
        mu = pyro.sample("mu", dist.MultivariateNormal(h["m0"].expand(K, D), covariance_matrix=covariance).to_event(1))
        with pyro.plate("points", N, subsample=idx):
            c = pyro.sample("c", dist.Categorical(logits=pi.log()))
            cov_c = torch.cholesky_inverse(torch.linalg.cholesky(lam[c]))
            h_ = pyro.sample("h", dist.MultivariateNormal(mu[c], covariance_matrix=cov_c))
            pyro.sample("y", decoder.distribution(h_), obs=y)

    return model


def mixture_same_family_style(decoder, h):
    """The assignments summed out by the model: one MixtureSameFamily site."""

    def model(y, idx=None):
        pyro.module("decoder", decoder)
        weights = pyro.sample("weights", dist.Dirichlet(h["alpha"]))
        with pyro.plate("components", K):
            precisions = pyro.sample("precisions", dist.Wishart(h["df"], covariance_matrix=h["cov"]))
            locs = pyro.sample("locs", dist.MultivariateNormal(h["m0"], precision_matrix=h["kappa"] * precisions))
        with pyro.plate("data", N, subsample=idx):
            components = dist.MultivariateNormal(locs, precision_matrix=precisions)
            x = pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(weights), components))
            pyro.sample("y", decoder.distribution(x), obs=y)

    return model


STYLES = {"vindex": (vindex_style, "x"), "indexing": (indexing_style, "h"), "mixture": (mixture_same_family_style, "x")}


def hand_written(decoder, h, name):
    """The same model around the family's own sample statements."""
    gmm = GaussianMixture(
        K,
        D,
        name,
        concentration=h["alpha"],
        loc=h["m0"],
        kappa=h["kappa"],
        scale_inv=torch.linalg.inv(h["cov"]),
        df=h["df"],
    )

    def model(y, idx=None):
        pyro.module("hand_decoder", decoder)  # its own parameters in the param store
        params = gmm.sample_params()
        with pyro.plate("data", N, subsample=idx):
            x = gmm.sample_latent(params)
            pyro.sample("y", decoder.distribution(x), obs=y)

    return model, gmm


def both_routes(style, factor="tied"):
    """(recognised model, its drop-in guide), (hand-written model, its guide), data: same networks and λ."""
    h = hyperparameters()
    build, name = STYLES[style]
    decoder, encoder = GaussianDecoder(D, P, (6,)), GaussianEncoder(P, D, (6,))
    y = 2 * torch.randn(N, P)
    hand_model, gmm = hand_written(copy.deepcopy(decoder), h, name)
    init = gmm.init_natural()
    hand_guide = SINGuide(hand_model, gmm, copy.deepcopy(encoder), factor=factor, init_natural=init, name="hand")
    model = build(decoder, h)
    guide = SINGuide(model, encoder=encoder, factor=factor, init_natural=init, name="dropin")
    return (model, guide), (hand_model, hand_guide), y


# ----- recognition --------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_the_recognised_prior_is_the_hand_written_one(style):
    (model, guide), (_, hand_guide), y = both_routes(style)
    guide(y[:4], torch.arange(4))
    assert guide.recognition.family == "gmm"
    prior, gmm = guide.pgm, hand_guide.pgm
    assert isinstance(prior, GaussianMixture) and prior.name == STYLES[style][1]
    expected_sites = {
        "vindex": ("weights", "precisions", "locs", "assignment", "x"),
        "indexing": ("pi", "lam", "mu", "c", "h"),
        "mixture": ("weights", "precisions", "locs", "x_assignment", "x"),  # the assignments summed out
    }[style]
    assert prior.global_sites + prior.local_sites == expected_sites
    for buffer in ("prior_concentration", "prior_loc", "prior_kappa", "prior_scale_inv", "prior_df"):
        assert_close(getattr(prior, buffer), getattr(gmm, buffer), **EXACT)
    # recognition reads the model's traces without consuming the user's random numbers
    before = torch.get_rng_state()
    recognize(model, y[:4], torch.arange(4))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("factor", ["tied", "free"])
@pytest.mark.parametrize("style", STYLES)
def test_training_with_the_drop_in_guide_repeats_the_hand_written_route(style, factor):
    """The same bounds, step by step (SINELBO + NaturalAdam, fixed seeds), and the same λ at the end."""
    (model, guide), (hand_model, hand_guide), y = both_routes(style, factor)
    batches = [torch.randperm(N, generator=torch.Generator().manual_seed(s))[:4] for s in range(4)]

    def train(model, guide):
        pyro.set_rng_seed(7)
        svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.3), SINELBO(num_particles=3))
        return torch.tensor([svi.step(y[i], i) for i in batches])

    losses, hand_losses = train(model, guide), train(hand_model, hand_guide)
    assert_close(losses, hand_losses, **EXACT)
    assert_close(guide.natural.detach(), hand_guide.natural.detach(), **EXACT)
    assert not torch.allclose(hand_losses[0], hand_losses[-1])  # it trained


@pytest.mark.parametrize("style", STYLES)
def test_natural_target_gradients_and_local_posterior_match_the_hand_written_route(style):
    (model, guide), (hand_model, hand_guide), y = both_routes(style)
    idx = torch.tensor([1, 5, 7, 10])  # a minibatch: the target's scale N/|B| is read off the model's plate
    results = []
    for m, g in ((model, guide), (hand_model, hand_guide)):
        elbo = SINELBO(num_particles=3)
        pyro.set_rng_seed(3)
        loss, surrogate, records = elbo._loss_surrogate_records(m, g, (y[idx], idx), {})
        surrogate.backward()
        ((_, _, target),) = elbo.natural_targets(records).values()
        grads = [p.grad.clone() for p in list(g.encoder.parameters())]
        post = g.local_posterior(y)
        results.append((loss.detach(), target, grads, post))
    (loss, target, grads, post), (hand_loss, hand_target, hand_grads, hand_post) = results
    assert_close(loss, hand_loss, **EXACT)
    assert_close(target, hand_target, **EXACT)
    for grad, hand_grad in zip(grads, hand_grads):
        assert_close(grad, hand_grad, **EXACT)
    for attribute in ("log_probs", "loc", "scale_tril"):
        assert_close(getattr(post, attribute), getattr(hand_post, attribute), **EXACT)


def test_the_drop_in_guide_serves_pyros_stock_elbo():
    (model, guide), _, y = both_routes("vindex")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(num_particles=2))
    losses = [svi.step(y[:4], torch.arange(4)) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_a_prior_that_does_not_reproduce_the_model_is_refused():
    """The set-up check that guards against a silently wrong structure."""
    h = hyperparameters()
    model = vindex_style(GaussianDecoder(D, P, (6,)), h)
    y = torch.randn(N, P)
    recognition = recognize(model, y)
    prior = recognition.prior
    _check_reproduces(prior, recognition.trace, _frame(recognition))
    with torch.no_grad():
        prior.prior_concentration.mul_(1.01)
    with pytest.raises(NotRecognizedError, match="site 'weights': found log density"):
        _check_reproduces(prior, recognition.trace, _frame(recognition))


def _frame(recognition):
    site = recognition.trace.nodes[recognition.sites["assignment"]]
    return next(f for f in site["cond_indep_stack"] if f.name == recognition.data_plate)


# ----- refusals ---------------------------------------------------------------------------------


def _mixture(weights=None, assignment=None, latent=None, precisions=None, locs=None, plate_z=True, observe=None):
    """A Gaussian-mixture model with one part replaced (each a function of what comes before)."""
    h = hyperparameters()
    decoder = GaussianDecoder(D, P, (4,))

    def model(y, idx=None):
        pyro.module("decoder", decoder)
        w = weights() if weights else pyro.sample("weights", dist.Dirichlet(h["alpha"]))
        with pyro.plate("components", K):
            if precisions:
                prec = precisions()
            else:
                prec = pyro.sample("precisions", dist.Wishart(h["df"], covariance_matrix=h["cov"]))
            if locs:
                mu = locs(prec)
            else:
                mu = pyro.sample("locs", dist.MultivariateNormal(h["m0"], precision_matrix=h["kappa"] * prec))
        if not plate_z:
            z = pyro.sample("assignment", dist.Categorical(w))
        with pyro.plate("data", N, subsample=idx):
            if assignment:
                z = assignment(w)
            elif plate_z:
                z = pyro.sample("assignment", dist.Categorical(w))
            if latent:
                x = latent(w, z, mu, prec)
            else:
                x = pyro.sample("x", dist.MultivariateNormal(mu[z], precision_matrix=prec[z]))
            fn = observe(x, z, mu) if observe else decoder.distribution(x)
            pyro.sample("y", fn, obs=y)

    return model


def _mvn(loc, precision):
    return dist.MultivariateNormal(loc, precision_matrix=precision)


def _plain_vae(y, idx=None):
    with pyro.plate("data", N, subsample=idx):
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(D), torch.eye(D)))
        pyro.sample("y", dist.Normal(x.sum(-1, keepdim=True).expand(x.shape[:-1] + (P,)), 1.0).to_event(1), obs=y)


def _unrolled_chain(y, idx=None):
    """Two discrete steps of a chain written without pyro.markov."""
    w = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    with pyro.plate("data", N, subsample=idx):
        z0 = pyro.sample("z_0", dist.Categorical(w))
        pyro.sample("z_1", dist.Categorical(Vindex(torch.eye(K) * 0.5 + 0.5 / K)[z0]))


def _logits_model():
    """The Dirichlet's draw passed as the Categorical's logits."""
    h = hyperparameters()

    def model(y, idx=None):
        w = pyro.sample("weights", dist.Dirichlet(h["alpha"]))
        with pyro.plate("components", K):
            prec = pyro.sample("precisions", dist.Wishart(h["df"], covariance_matrix=h["cov"]))
            mu = pyro.sample("locs", _mvn(h["m0"], h["kappa"] * prec))
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("assignment", dist.Categorical(logits=w))
            pyro.sample("x", _mvn(mu[z], prec[z]))

    return model


#: case -> (a function building the model, the message that refuses it)
REFUSED = {
    "log-normal weights": (
        lambda: _mixture(weights=lambda: pyro.sample("weights", dist.LogNormal(0.0, 1.0).expand([K]).to_event(1))),
        "site 'weights': found a LogNormal",
    ),
    "fixed weights": (
        lambda: _mixture(weights=lambda: pyro.param("w", torch.ones(K) / K, constraint=dist.constraints.simplex)),
        "site 'w': found mixture weights fixed by pyro.param",
    ),
    "Dirichlet draws as logits": (
        _logits_model,
        "site 'assignment': found probabilities that are a transform",
    ),
    "assignments outside the data plate": (
        lambda: _mixture(plate_z=False),
        r"site 'assignment': found a Categorical inside the plates \[\]",
    ),
    "Bernoulli assignments": (
        lambda: _mixture(assignment=lambda w: pyro.sample("assignment", dist.Bernoulli(w[1])).long()),
        "site 'assignment': found a Bernoulli of batch shape",
    ),
    "location not indexed by the assignment": (
        lambda: _mixture(latent=lambda w, z, mu, prec: pyro.sample("x", _mvn(mu[0].expand(z.shape + (D,)), prec[z]))),
        "site 'x': found a location that is not a component mean indexed by 'assignment'",
    ),
    "location a nonlinear function of the mean": (
        lambda: _mixture(latent=lambda w, z, mu, prec: pyro.sample("x", _mvn(torch.tanh(mu[z]), prec[z]))),
        "site 'x': found a location that is not a component mean indexed by 'assignment'",
    ),
    "Gamma precisions": (
        lambda: _mixture(
            precisions=lambda: pyro.sample("tau", dist.Gamma(2.0, 1.0))[..., None, None] * torch.eye(D),
            locs=lambda prec: pyro.sample("locs", _mvn(torch.zeros(D), prec)),
        ),
        r"site 'x': found a precision that is not a component precision indexed by 'assignment' "
        r"\(the other global sites: 'tau' \(Gamma\)",
    ),
    "component means independent of the precisions": (
        lambda: _mixture(locs=lambda prec: pyro.sample("locs", _mvn(torch.zeros(D), torch.eye(D)))),
        "site 'locs': found a prior whose precision is not a positive multiple of the precision site 'precisions'",
    ),
    "a diagonal Normal latent": (
        lambda: _mixture(
            latent=lambda w, z, mu, prec: pyro.sample(
                "x", dist.Normal(mu[z], prec[z].diagonal(dim1=-2, dim2=-1).rsqrt()).to_event(1)
            )
        ),
        "site 'x': found a Normal of batch shape",
    ),
    "a Wishart on the covariance": (
        lambda: _mixture(
            latent=lambda w, z, mu, prec: pyro.sample("x", dist.MultivariateNormal(mu[z], covariance_matrix=prec[z]))
        ),
        r"site 'x': found a covariance \(not a precision\) that is the component parameter 'precisions'",
    ),
    "one precision shared by the components": (
        lambda: _mixture(
            precisions=lambda: pyro.sample("precisions", dist.Wishart(D + 1.0, torch.eye(D)).to_event(0))[0],
            latent=lambda w, z, mu, prec: pyro.sample("x", _mvn(mu[z], prec.expand(z.shape + (D, D)))),
        ),
        "site 'x': found a precision that is not a component precision",
    ),
    "fixed component parameters": (
        lambda: _mixture(
            precisions=lambda: pyro.param("precisions", torch.eye(D).expand(K, D, D).clone()),
            locs=lambda prec: pyro.param("locs", torch.randn(K, D)),
        ),
        "site 'locs': found component parameters fixed by pyro.param",
    ),
    "a decoder that reads the component means": (
        lambda: _mixture(
            observe=lambda x, z, mu: dist.Normal(
                (x + mu[z]).sum(-1, keepdim=True).expand(x.shape[:-1] + (P,)), 1.0
            ).to_event(1)
        ),
        "site 'y': found a site that depends on the mixture's weights, components or assignments",
    ),
    "a MixtureSameFamily of diagonal Normals": (
        lambda: _mixture(
            latent=lambda w, z, mu, prec: pyro.sample(
                "m",
                dist.MixtureSameFamily(
                    dist.Categorical(w), dist.Normal(mu, prec.diagonal(dim1=-2, dim2=-1).rsqrt()).to_event(1)
                ),
            ),
            assignment=lambda w: None,
        ),
        "site 'm': found Normal components",
    ),
    "no discrete latent": (lambda: _plain_vae, "the model: found no discrete latent site"),
    "a discrete chain without pyro.markov": (
        lambda: _unrolled_chain,
        "site 'z_1': found a second discrete latent site besides 'z_0', outside any pyro.markov context",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_is_not_recognised_is_refused_naming_the_site(case):
    build, message = REFUSED[case]
    model, y = build(), torch.randn(N, P)
    guide = SINGuide(model, encoder=GaussianEncoder(P, D, (4,)))
    with pytest.raises(NotRecognizedError, match=message) as refusal:
        guide(y, None)
    assert "; expected " in str(refusal.value)  # what was found, then what was expected
