"""
Two gloo processes with a minibatch each take the step of one process with both
minibatches: the natural-parameter update and the averaged gradients agree.

The decoders below ignore the latent, so that the bound has no Monte Carlo
noise (the draws of x differ between layouts); every closed-form term still
depends on the encoder, the PGM and the natural parameters.
"""

import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

import pyro
import pyro.distributions as dist_
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.distributed import broadcast_parameters, world
from pyro_sin.models import DeepLatentMixture, DeepLatentSequence
from pyro_sin.nn import GaussianEncoder
from pyro_sin.pgm import GaussianMixture, LinearDynamicalSystem

NUM_DATA, BATCH = 40, 6  # each of the 2 processes holds BATCH points


class LatentFreeDecoder(torch.nn.Module):
    """``p(y | x)`` that ignores ``x``: the likelihood term is deterministic."""

    def __init__(self, P):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.randn(P))
        self.log_scale = torch.nn.Parameter(0.1 * torch.randn(P))

    def distribution(self, x):
        shape = x.shape[:-1] + self.loc.shape
        return dist_.Normal(self.loc.expand(shape), self.log_scale.exp().expand(shape)).to_event(1)


def build(structure, seed):
    """The same model, guide and data on every process (seeded)."""
    pyro.clear_param_store()
    data = torch.Generator().manual_seed(123)  # the same data everywhere; the seed sets the parameters
    pyro.set_rng_seed(seed)
    if structure == "mixture":
        y = 3 * torch.randn(NUM_DATA, 2, generator=data)
        model = DeepLatentMixture(GaussianMixture(3, 2, concentration=1.0), LatentFreeDecoder(2), NUM_DATA, name="m")
        guide = model.make_guide(GaussianEncoder(2, 2, (8,)), name="g")
        elbo = SINELBO(num_particles=2, decoder_estimator="enumerate", max_plate_nesting=1)
    else:
        y = torch.randn(NUM_DATA, 5, 2, generator=data)
        model = DeepLatentSequence(LinearDynamicalSystem(2), LatentFreeDecoder(2), NUM_DATA, name="m")
        guide = model.make_guide(GaussianEncoder(2, 2, (8,)), name="g")
        elbo = SINELBO(num_particles=2, max_plate_nesting=1)
    return y, model, guide, elbo


def one_step(structure, indices, seed=0):
    """Gradients (by name) after averaging, and the natural parameters after one step."""
    y, model, guide, elbo = build(structure, seed)
    optim = NaturalAdam({"lr": 0.01}, natural_lr=0.5)
    svi = SVI(model, guide, optim, elbo)
    svi.evaluate_loss(y[indices], indices=indices)  # registers every parameter
    broadcast_parameters()
    store = pyro.get_param_store()
    grads = {}
    original = optim._step_fused

    def record(params):  # the gradients NaturalAdam steps with, after averaging
        for p in params:
            grads[store.param_name(p)] = p.grad.detach().clone()
        return original(params)

    optim._step_fused = record
    svi.step(y[indices], indices=indices)
    return grads, guide.natural_params(), None


def _worker(rank, structure, store_path, out_path):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        assert world() == (rank, 2)
        batch = torch.arange(2 * BATCH)[rank * BATCH : (rank + 1) * BATCH]
        # another seed on rank 1: broadcast_parameters must make the parameters equal
        grads, natural, _ = one_step(structure, batch, seed=rank)
        torch.save({"grads": grads, "natural": {k: v.detach() for k, v in natural.items()}}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("structure", ["mixture", "lds"])
def test_two_processes_take_the_step_of_one_process_with_both_minibatches(structure, tmp_path):
    mp.spawn(_worker, args=(structure, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2, join=True)
    results = [torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False) for rank in range(2)]
    grads, natural, _ = one_step(structure, torch.arange(2 * BATCH), seed=0)
    assert set(results[0]["grads"]) == set(grads) and grads
    for result in results:
        for name, grad in grads.items():
            assert_close(result["grads"][name], grad, rtol=1e-6, atol=1e-8)
        for key, value in natural.items():
            assert_close(result["natural"][key], value.detach(), rtol=1e-6, atol=1e-8)
    # and the step did move λ away from where both layouts started
    before = build(structure, 0)[2].natural_params()
    assert any(not torch.allclose(before[k], natural[k].detach()) for k in natural)


def train_with_fit(structure, batch_size, seed, iterations=4, best_step=None):
    """``fit``; with ``best_step``, a score that peaks at that step selects the parameters returned."""
    from pyro_sin.training import fit

    y, model, guide, elbo = build(structure, seed)
    svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.5), elbo)
    evaluations = iter(range(iterations + 1))  # evaluated at steps 0, 1, ..., in order (on rank 0 only)
    select = None if best_step is None else (lambda: -abs(next(evaluations) - best_step))
    generator = torch.Generator().manual_seed(7)
    fit(
        svi,
        y,
        iterations=iterations,
        batch_size=batch_size,
        generator=generator,
        progress=False,
        eval_every=1,
        select=select,
    )
    store = pyro.get_param_store()
    return {name: store._params[name].detach().clone() for name in sorted(store.keys())}


def _fit_worker(rank, store_path, out_path, best_step=None):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        torch.save(train_with_fit("mixture", BATCH, seed=rank, best_step=best_step), f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_fit_in_two_processes_returns_rank_0s_selected_parameters_on_every_process(tmp_path):
    """With select, every process ends with the parameters of the step rank 0 chose."""
    mp.spawn(_fit_worker, args=(str(tmp_path / "store"), str(tmp_path / "out"), 2), nprocs=2, join=True)
    single = train_with_fit("mixture", 2 * BATCH, seed=0, iterations=2)
    for rank in range(2):
        result = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        for name, value in single.items():
            assert_close(result[name], value, rtol=1e-6, atol=1e-8)


def test_fit_in_two_processes_trains_as_one_process_with_the_global_batch(tmp_path):
    mp.spawn(_fit_worker, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2, join=True)
    single = train_with_fit("mixture", 2 * BATCH, seed=0)
    for rank in range(2):
        result = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        assert set(result) == set(single)
        for name, value in single.items():
            assert_close(result[name], value, rtol=1e-6, atol=1e-8)


# ----- what the processes cannot do exactly is refused before the first step ----------------------------


def _refusal_worker(rank, case, store_path, out_path):
    """Each rank records the error it raised and whether its parameters moved."""
    from pyro_sin.training import fit

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        y, model, guide, elbo = build("mixture", seed=0)
        svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.5), elbo)
        error = None
        if case == "batch sizes":  # 4 points on rank 0, 8 on rank 1 (the case)
            indices = torch.arange(4) if rank == 0 else torch.arange(4, 12)
            svi.evaluate_loss(y[indices], indices=indices)
            before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
            try:
                svi.step(y[indices], indices=indices)
            except ValueError as e:
                error = str(e)
        else:  # "data sizes": fit given 12 rows on rank 0 and 16 on rank 1
            data = y[: 12 + 4 * rank]
            before = {}
            try:
                fit(svi, data, iterations=2, batch_size=BATCH, progress=False)
            except ValueError as e:
                error = str(e)
        after = pyro.get_param_store()
        moved = [k for k, v in before.items() if not torch.equal(v, after[k].detach())]
        torch.save({"error": error, "moved": moved, "stored": list(after.keys())}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "case, match",
    [
        ("batch sizes", r"batch sizes per rank \[4, 8\], data sizes per rank \[40, 40\]"),
        ("data sizes", r"batch sizes per rank \[6, 6\], data sizes per rank \[12, 16\]"),
    ],
)
def test_processes_with_different_batch_or_data_sizes_are_refused_before_any_update(case, match, tmp_path):
    """The averaged step equals the global batch's only for equal shares: anything else is refused on every rank."""
    mp.spawn(_refusal_worker, args=(case, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        assert result["error"] is not None, f"rank {rank} was not refused"
        assert re.search(match, result["error"]), result["error"]
        assert "same batch_size" in result["error"]
        assert result["moved"] == []  # svi.step: refused before the update
        if case == "data sizes":  # fit: refused before the model and guide ever ran
            assert result["stored"] == []
