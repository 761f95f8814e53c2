"""
The conformance suite: what every family registered in ``pyro_sin.pgm.FAMILIES`` must do, each
property checked on every family it applies to, from the family's entry in ``tests/families.py``.

1. Registry: every registered family has an entry (a family registered without one fails every
   property below, and :func:`test_every_registered_family_has_a_conformance_entry`).
2. Padding (sequence families: ``lds``, ``hmm``, ``slds``; a per-point family has no steps to
   pad): a padded batch gives each sequence the bound, posterior and natural target it has alone.
3. Checkpoints: a run resumed from the param store (and the optimiser's file) or from the
   guide's ``state_dict`` repeats the uninterrupted run bit for bit.
4. Bad input: wrong potentials, NaN or misshapen data, bad constructor arguments, factors the
   family does not offer, natural parameters outside their domain (the Dirichlet blocks: ``gmm``,
   ``tmm``, ``hmm``, ``slds``; the Normal-Wishart and Matrix-Normal-Wishart blocks of ``gaussian``
   and ``lds`` are kept in their domain by construction, every unconstrained value mapping into
   it, and not checked again), bad lengths (sequence families): each refused with our message.
5. Natural target: a full natural step (β = 1) lands on the conjugate update computed
   independently (dense algebra; enumeration over state paths for the HMM). The Student-t
   mixture's components are point estimates trained by Adam, so only its weights take the step.
6. Devices and dtypes: ``.to(torch.float32)`` and back ``.double()`` of prior, guide and networks
   move every tensor and give the same bound to the dtype's precision; another device moves every
   tensor (the meta device stands in for CUDA on any machine; on CUDA itself, the same bound).

Every property runs with each SIN factor the family offers (``factor_modes``): ``tied`` and
``free``, except the Student-t mixture, which has no conjugate message and offers ``free`` only.
The checks are exact to 1e-6 or better (float64) unless a property says otherwise.
"""

import io

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.nn import GaussianDecoder, GaussianEncoder, SequenceEncoder
from pyro_sin.pgm import FAMILIES, SequencePrior
from pyro_sin.potential import GaussianPotential

from tests.families import CONFORMANCE

P = 3  # data dimension
EXACT = dict(rtol=0, atol=1e-6)


def entry(key):
    """The conformance entry of the registered family ``key``."""
    if key not in CONFORMANCE:
        pytest.fail(f"the family {key!r} of pyro_sin.pgm.FAMILIES has no conformance entry in tests/families.py")
    return CONFORMANCE[key]


def factor_cases(sequence=None):
    """``(family, factor)`` for every registered family (of the given kind) and every factor it offers."""
    return [
        pytest.param(key, factor, id=f"{key}-{factor}")
        for key, cls in FAMILIES.items()
        if sequence is None or issubclass(cls, SequencePrior) == sequence
        for factor in cls.factor_modes
    ]


class ConstantDecoder(torch.nn.Module):
    """``p(y | x)`` that ignores ``x``: the bound's Monte Carlo term is exact, so bounds compare to rounding."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.randn(P))
        self.log_scale = torch.nn.Parameter(0.1 * torch.randn(P))

    def distribution(self, x):
        shape = x.shape[:-1] + (P,)
        return dist.Normal(self.loc.expand(shape), self.log_scale.exp().expand(shape)).to_event(1)


class ConstantEncoder(torch.nn.Module):
    """The same potential ``(h, J)`` everywhere, e.g. a diverged encoder's NaN."""

    def __init__(self, latent_dim, info_vec, precision):
        super().__init__()
        self.latent_dim, self.info_vec, self.precision = latent_dim, info_vec, precision

    def forward(self, y, mask=None, lengths=None):
        shape = y.shape[:-1] + (self.latent_dim,)
        return GaussianPotential(torch.full(shape, self.info_vec), torch.full(shape, self.precision), lengths)


def build(family, factor=None, num_data=6, decoder=None, encoder="frames", seed=None):
    """The family's prior, its model with a small decoder, and the model's SIN guide; networks drawn after ``seed``."""
    prior = family.prior()
    if seed is not None:
        pyro.set_rng_seed(seed)
    D = family.latent_dim
    decoder = GaussianDecoder(D, P, (8,)) if decoder is None else decoder
    model = family.model(prior, decoder, num_data)
    networks = GaussianEncoder(P, D, (8,)) if encoder == "frames" else SequenceEncoder(P, D, (8,), rnn_dim=4)
    return model, model.make_guide(networks, factor=factor)


def sample_data(family, num_data, lengths=None, num_steps=5):
    """
    The family's data as the tuple its model takes before ``indices``: ``(y,)`` for points;
    ``(y, mask, lengths)`` for sequences, padded to ``num_steps`` with arbitrary values,
    with missing frames inside the first sequence (up to three) and at the last step of the last.
    """
    if not family.sequence:
        return (3 * torch.randn(num_data, P),)
    lengths = torch.full((num_data,), num_steps) if lengths is None else torch.tensor(lengths)
    y = 3 * torch.randn(num_data, num_steps, P)
    mask = torch.ones(num_data, num_steps)
    mask[0, 2 : min(5, int(lengths[0]))] = 0
    mask[-1, lengths[-1] - 1] = 0
    return y, mask, lengths


def minibatch(data, indices=None):
    """The model's arguments for the rows ``indices`` of ``data`` (all rows without)."""
    if indices is None:
        return data
    return tuple(part[indices] for part in data) + (indices,)


def minibatches(num_data, size, steps):
    generator = torch.Generator().manual_seed(0)
    return [torch.randperm(num_data, generator=generator)[:size] for _ in range(steps)]


def new_svi(model, guide, natural_lr=0.3, lr=0.01):
    optim = NaturalAdam({"lr": lr}, natural_lr=natural_lr)
    return SVI(model, guide, optim, SINELBO(num_particles=2, max_plate_nesting=1)), optim


# ----- 1. the registry ------------------------------------------------------------------------------


def test_every_registered_family_has_a_conformance_entry():
    assert set(CONFORMANCE) == set(FAMILIES), "one conformance entry per family of pyro_sin.pgm.FAMILIES"
    for key, family in CONFORMANCE.items():
        prior = family.prior()
        assert type(prior) is FAMILIES[key]
        assert all(getattr(prior, name) == size for name, size in family.sizes.items())
        assert bool(family.summaries) == bool(family.counted_transitions) == family.sequence


# ----- 2. padding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["frames", "rnn"])
@pytest.mark.parametrize("key, factor", factor_cases(sequence=True))
def test_padding_changes_neither_bound_nor_posterior_nor_natural_target(key, factor, encoder):
    """A padded batch against each sequence run unpadded: the same numbers to 1e-6 (float64)."""
    family = entry(key)
    lengths, T = [20, 7, 1, 13], 60
    y, mask, L = sample_data(family, len(lengths), lengths, T)
    model, guide = build(family, factor, len(lengths), ConstantDecoder(), encoder)
    prior, D = guide.pgm, family.latent_dim
    elbo = SINELBO(num_particles=1, max_plate_nesting=1)
    padded_loss = elbo.loss(model, guide, y, mask, L)
    q = guide.global_posterior()
    post = model.posterior(guide, y, mask, L)
    summaries, proposal, bound = family.summaries(post), prior.proposal(post), prior.local_elbo(q, post)
    target, base = prior.natural_target(post, 1.0), prior.prior_natural()

    unpadded_loss, target_sum = 0.0, {k: v.clone() for k, v in base.items()}
    for i, n in enumerate(lengths):
        y_i, mask_i = y[i : i + 1, :n], mask[i : i + 1, :n]
        post_i = model.posterior(guide, y_i, mask_i)
        for name, (alone, per_step) in family.summaries(post_i).items():
            padded = summaries[name][0][i, :n] if per_step else summaries[name][0][i]
            assert_close(padded, alone[0], **EXACT, msg=lambda message, name=name: f"{name}: {message}")
        assert_close(bound[i], prior.local_elbo(q, post_i)[0], **EXACT)
        x = torch.randn(n, D)
        x_padded = torch.cat([x, torch.randn(T - n, D)])  # the padding's values do not matter
        assert_close(proposal.log_prob(x_padded)[i], prior.proposal(post_i).log_prob(x)[0], **EXACT)
        unpadded_loss += elbo.loss(model, guide, y_i, mask_i) / len(lengths)  # each scaled by N / 1
        for name, value in prior.natural_target(post_i, 1.0).items():
            target_sum[name] += value - base[name]
    assert_close(torch.tensor(padded_loss), torch.tensor(unpadded_loss), **EXACT)
    for name in base:
        assert_close(target[name], target_sum[name], **EXACT)
    # the transitions counted: L - 1 per sequence, missing frames included, padding not
    for name in family.counted_transitions:
        assert_close((target[name] - base[name]).sum(), torch.tensor(float(sum(n - 1 for n in lengths))))
    # nothing exists after a sequence's end: the guide draws zeros there at every local site
    after_end = torch.arange(T) >= L[:, None]
    for _ in range(3):
        trace = poutine.trace(guide).get_trace(y, mask, L)
        for site in prior.local_sites:
            assert (trace.nodes[site]["value"][after_end] == 0).all(), site


# ----- 3. checkpoints -------------------------------------------------------------------------------


def run(svi, data, batches):
    return [svi.step(*minibatch(data, indices)) for indices in batches]


@pytest.mark.parametrize("route", ["param_store", "state_dict"])
@pytest.mark.parametrize("key, factor", factor_cases())
def test_checkpoint_resumes_a_run_bit_identically(key, factor, route, tmp_path):
    """
    Trained a few steps, saved, rebuilt in a fresh state (new network weights, the same
    hyperparameters: the same code in a new process) and restored: the rest of the run repeats
    the uninterrupted one bit for bit.
    """
    family, N = entry(key), 8
    data = sample_data(family, N, [5, 3, 4, 5, 2, 5, 1, 4])
    batches = minibatches(N, 4, 6)

    def fresh(network_seed):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)  # the hyperparameters: the same in every process
        model, guide = build(family, factor, N, seed=network_seed)
        return (model, guide) + new_svi(model, guide)

    model, guide, svi, _ = fresh(1)
    pyro.set_rng_seed(11)
    uninterrupted = run(svi, data, batches)

    model, guide, svi, optim = fresh(1)
    pyro.set_rng_seed(11)
    first = run(svi, data, batches[:3])
    if route == "param_store":
        pyro.get_param_store().save(tmp_path / "params.pt")
        optim.save(tmp_path / "optim.pt")
        rng = pyro.util.get_rng_state()
        model, guide, svi, optim = fresh(99)  # built before the store is loaded, as a new process would
        pyro.get_param_store().load(tmp_path / "params.pt")
        optim.load(tmp_path / "optim.pt")
    else:
        buffer = io.BytesIO()
        state = {"guide": guide.state_dict(), "decoder": model.decoder.state_dict(), "optim": optim.get_state()}
        torch.save({**state, "rng": pyro.util.get_rng_state()}, buffer)
        model, guide, svi, optim = fresh(99)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=False)
        guide.load_state_dict(state["guide"])
        model.decoder.load_state_dict(state["decoder"])
        optim.set_state(state["optim"])
        rng = state["rng"]
    pyro.util.set_rng_state(rng)
    resumed = first + run(svi, data, batches[3:])
    assert resumed == uninterrupted


# ----- 4. bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", FAMILIES)
def test_bad_constructor_arguments_are_refused(key):
    family = entry(key)
    cls = FAMILIES[key]
    for name in family.sizes:
        sizes = {**family.sizes, name: 0}
        with pytest.raises(ValueError, match=rf"need .*{name} >= 1.*, got .*0"):
            cls(**sizes)
    assert family.bad_arguments, "list the hyperparameters the family refuses"
    for arguments, match in family.bad_arguments:
        with pytest.raises(ValueError, match=match):
            family.prior(**arguments)


@pytest.mark.parametrize("key", FAMILIES)
def test_the_guide_refuses_factors_the_family_does_not_offer(key):
    family = entry(key)
    prior = family.prior()
    encoder = GaussianEncoder(P, family.latent_dim, (4,))
    for factor in {"tied", "free", "mean-field"} - set(prior.factor_modes):
        refused = rf"factor must be one of \(.*\) for a {type(prior).__name__}, got '{factor}'"
        with pytest.raises(ValueError, match=refused):
            SINGuide(lambda y: None, prior, encoder, factor=factor)
    # by default the guide takes the first factor the prior offers
    assert SINGuide(lambda y: None, prior, encoder).factor_mode == prior.factor_modes[0]


@pytest.mark.parametrize("key, factor", factor_cases())
def test_bad_potentials_are_refused(key, factor):
    family = entry(key)
    model, guide = build(family, factor)
    prior, D, name = guide.pgm, family.latent_dim, type(guide.pgm).__name__
    steps = (4,) if family.sequence else ()
    wrong_dim = GaussianPotential(torch.zeros((2,) + steps + (D + 1,)), torch.ones((2,) + steps + (D + 1,)))
    if family.sequence:
        expected = rf"{name} 'x' needs per-step potentials of shape \(\.\.\., T, {D}\), got \(2, 4, {D + 1}\)"
    else:
        expected = rf"{name} 'x' has latent_dim={D} but the encoder emitted potentials of size {D + 1}"
    with pytest.raises(ValueError, match=expected):
        prior.posterior(wrong_dim, guide.factor())
    if family.sequence:  # one latent is not a sequence of latents
        with pytest.raises(ValueError, match=rf"needs per-step potentials of shape \(\.\.\., T, {D}\), got \({D},\)"):
            prior.posterior(GaussianPotential(torch.zeros(D), torch.ones(D)), guide.factor())
        bad_lengths = GaussianPotential(torch.zeros(2, 4, D), torch.ones(2, 4, D), torch.tensor([3]))
        with pytest.raises(ValueError, match=rf"{name} 'x' needs one length per sequence, shape \(2,\), got \(1,\)"):
            prior.posterior(bad_lengths, guide.factor())

    # a diverged encoder, or one that emits negative precisions, wherever the guide calls it from
    data = sample_data(family, 6)
    for info_vec, precision, match in [
        (float("nan"), 1.0, "the recognition network produced a non-finite Gaussian potential"),
        (0.0, -1.0, "GaussianPotential precision must be non-negative"),
    ]:
        guide = model.make_guide(ConstantEncoder(D, info_vec, precision), factor=factor)
        with pytest.raises(ValueError, match=match):
            SINELBO(num_particles=1).loss(model, guide, *data)
        with pytest.raises(ValueError, match=match):
            guide.local_posterior(guide.encoder_input(*data))


@pytest.mark.parametrize("key, factor", factor_cases())
def test_bad_data_are_refused(key, factor):
    family, N = entry(key), 6
    model, guide = build(family, factor, N)
    data = sample_data(family, N)
    elbo = SINELBO(num_particles=1)
    elbo.loss(model, guide, *data)  # the guide has seen the model: what follows checks the data alone
    nan = data[0].clone()
    nan[1, ..., 0] = float("nan")
    with pytest.raises(ValueError, match="SINGuide: the data contain NaN or inf"):
        elbo.loss(model, guide, nan, *data[1:])
    wide = torch.randn(data[0].shape[:-1] + (P + 1,))
    with pytest.raises(ValueError, match=rf"expects inputs with last dimension {P}, got shape"):
        elbo.loss(model, guide, wide, *data[1:])
    # so does every other route to the encoder (evaluation, a data-driven start)
    with pytest.raises(ValueError, match="SINGuide: dtype or device mismatch: the data are torch.float32"):
        elbo.loss(model, guide, data[0].float(), *data[1:])
    with pytest.raises(ValueError, match="SINGuide: dtype or device mismatch: the data are torch.float32"):
        guide.local_posterior(guide.encoder_input(data[0].float(), *data[1:]))
    with pytest.raises(ValueError, match="the minibatch is empty"):
        elbo.loss(model, guide, *minibatch(data, torch.arange(0)))
    # rows that are neither the minibatch nor the full data set
    refused = rf"the minibatch has {N - 1} rows but 2 indices: pass the minibatch's rows, y\[indices\]"
    with pytest.raises(ValueError, match=refused):
        guide(*(part[: N - 1] for part in data), torch.arange(2))


@pytest.mark.parametrize("key", FAMILIES)
def test_any_unconstrained_value_maps_into_the_natural_domain(key):
    """What lets any optimiser train ``λ``: its bijection ``T`` maps ``ℝⁿ`` onto the domain; ``T⁻¹`` inverts it."""
    prior = entry(key).prior()
    domain = prior.natural_domain()
    for _ in range(20):
        natural = domain.from_unconstrained(3 * torch.randn(domain.size))
        prior.global_posterior(domain.unpack(natural))  # refuses λ outside the domain (the Dirichlet blocks)
        # up to the unused upper triangles of the Cholesky coordinates
        assert_close(domain.from_unconstrained(domain.to_unconstrained(natural)), natural)


@pytest.mark.parametrize("key", FAMILIES)
def test_natural_parameters_outside_their_domain_are_refused(key):
    family = entry(key)
    prior = family.prior()
    for name, match in family.bad_naturals:
        natural = prior.init_natural()
        natural[name] = -natural[name]
        with pytest.raises(ValueError, match=match):
            prior.global_posterior(natural)


BAD_LENGTHS = [
    # (the guide's potentials say it, or the model first, whichever sees the lengths first)
    ([3, 0], r"lengths must lie in \[1, 4\]"),
    ([5, 2], r"lengths must lie in \[1, 4\]"),
    ([3.0, 2.0], "lengths must be (integers|an integer tensor)"),
    ([3], r"lengths need per-step potentials of shape \(\.\.\., T, D\) and shape \(\.\.\.\), got \(1,\)"),
]


@pytest.mark.parametrize("key", [key for key, cls in FAMILIES.items() if issubclass(cls, SequencePrior)])
def test_bad_lengths_are_refused(key):
    family = entry(key)
    model, guide = build(family, num_data=2)
    y, mask, _ = sample_data(family, 2, num_steps=4)
    guide(y, mask, torch.tensor([4, 2]))  # the guide has seen the model: what follows checks the lengths alone
    for lengths, match in BAD_LENGTHS:
        with pytest.raises(ValueError, match=match):
            guide.local_posterior((y, mask, torch.tensor(lengths)))
        if len(lengths) == len(y):  # (in the guide, a length too few is a row too few, refused as such)
            with pytest.raises(ValueError, match=match):
                SINELBO(num_particles=1).loss(model, guide, y, mask, torch.tensor(lengths))


# ----- 5. the natural target ------------------------------------------------------------------------


@pytest.mark.parametrize("key, factor", factor_cases())
def test_full_natural_step_is_the_conjugate_update_computed_independently(key, factor):
    """β = 1 lands on the conjugate posterior of the exact expected statistics of the minibatch."""
    family, N = entry(key), 6
    data = sample_data(family, N, [4, 2, 3, 4, 1, 4], num_steps=4)
    model, guide = build(family, factor, N)
    args = minibatch(data, torch.tensor([0, 1, 2]))  # padded sequences and missing frames among them
    guide(*args)
    with torch.no_grad():
        potential = guide.encode(guide.encoder_input(*args))
        expected = family.conjugate_update(guide.pgm, potential, guide.factor(), N / 3)
    svi, _ = new_svi(model, guide, natural_lr=1.0, lr=0.0)
    svi.step(*args)
    actual = family.standard_parameters(guide.global_posterior())
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close(actual[name], expected[name], msg=lambda message, name=name: f"{name}: {message}")


# ----- 6. devices and dtypes ------------------------------------------------------------------------


def held_tensors(*modules):
    """
    ``(name, tensor)`` for every tensor the module trees hold: parameters, buffers, Pyro parameters,
    and tensors kept as plain attributes or in containers (which ``.to()`` would leave behind).
    """

    def walk(value, name):
        if torch.is_tensor(value):
            yield name, value
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                yield from walk(item, f"{name}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{name}.{key}")

    for root in modules:
        for prefix, module in root.named_modules(prefix=type(root).__name__):
            for name, value in vars(module).items():
                if name != "_modules":
                    yield from walk(value, f"{prefix}.{name}")


def trained(family, factor, data):
    """The family's model and guide with a constant decoder, trained two steps (every parameter in the store)."""
    model, guide = build(family, factor, len(data[0]), ConstantDecoder())
    svi, _ = new_svi(model, guide)
    for _ in range(2):
        svi.step(*data)
    return model, guide


def bounds(model, guide, data, repeats):
    """``repeats`` values of the bound (the loss), each after its own seed."""
    values = []
    for seed in range(repeats):
        pyro.set_rng_seed(seed)
        values.append(SINELBO(num_particles=1, max_plate_nesting=1).loss(model, guide, *data))
    return torch.tensor(values, dtype=torch.float64)


def repeats(family):
    """Evaluations of the bound to compare: one where it is exact (the decoder is constant), else 30."""
    return 30 if family.monte_carlo_bound else 1


def assert_same_bound(moved, reference, rtol):
    """
    An exact bound compares to ``rtol``; one with Monte Carlo terms of its own (the Student-t
    mixture's ``E_q[log St]``) draws other numbers in another dtype or on another device, and its
    means compare within four standard errors.
    """
    if len(reference) == 1:
        assert_close(moved, reference, rtol=rtol, atol=0)
    else:
        error = (moved.var() / len(moved) + reference.var() / len(reference)).sqrt()
        assert abs(moved.mean() - reference.mean()) < 4 * error + rtol * abs(reference.mean())


def moved_data(data, **to):
    return tuple(part.to(**to) if part.is_floating_point() else part.to(device=to.get("device")) for part in data)


@pytest.mark.parametrize("key, factor", factor_cases())
def test_float32_and_back_moves_every_tensor_and_keeps_the_bound(key, factor):
    family = entry(key)
    data = sample_data(family, 6, [5, 3, 4, 5, 2, 5])
    model, guide = trained(family, factor, data)
    modules = (guide.pgm, guide, model.decoder)  # the prior, and the guide with its encoder
    reference = bounds(model, guide, data, repeats(family))
    for dtype in (torch.float32, torch.float64):  # back in float64, from parameters rounded to float32
        for module in modules:
            module.to(dtype)
        left = [name for name, tensor in held_tensors(*modules) if tensor.is_floating_point() and tensor.dtype != dtype]
        assert not left, f"left in another dtype: {left}"
        assert all(value.dtype == dtype for value in pyro.get_param_store().values())  # what training reads
        moved = moved_data(data, dtype=dtype)
        assert_same_bound(bounds(model, guide, moved, repeats(family)), reference, 1e-5)
        # and training goes on in that dtype (with a new optimiser: torch's keep their state where it was)
        svi, _ = new_svi(model, guide)
        assert torch.isfinite(torch.tensor(svi.step(*moved)))
        assert all(value.dtype == dtype for value in pyro.get_param_store().values())
        reference = bounds(model, guide, moved, repeats(family)).double()


@pytest.mark.parametrize("key, factor", factor_cases())
def test_another_device_receives_every_tensor(key, factor):
    """
    The meta device stands in for another device on any machine: a tensor left behind stays on the
    CPU. (Its tensors cannot take over a CPU parameter's storage, so torch gives the modules new
    parameters there and the param store keeps the old ones; on CUDA the parameters move in place,
    and the test below checks the store.)
    """
    family = entry(key)
    model, guide = trained(family, factor, sample_data(family, 6))
    modules = (guide.pgm, guide, model.decoder)
    for module in modules:
        module.to("meta")
    left = [name for name, tensor in held_tensors(*modules) if tensor.device.type != "meta"]
    assert not left, f"left on the CPU: {left}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("key, factor", factor_cases())
def test_cuda_computes_the_same_bound(key, factor):
    family = entry(key)
    data = sample_data(family, 6, [5, 3, 4, 5, 2, 5])
    model, guide = trained(family, factor, data)
    reference = bounds(model, guide, data, repeats(family))
    modules = (guide.pgm, guide, model.decoder)
    for module in modules:
        module.to("cuda")
    left = [name for name, tensor in held_tensors(*modules) if not tensor.is_cuda]
    assert not left, f"left on the CPU: {left}"
    assert all(value.is_cuda for value in pyro.get_param_store().values())
    assert_same_bound(bounds(model, guide, moved_data(data, device="cuda"), repeats(family)), reference, 1e-7)
