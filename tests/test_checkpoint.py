"""
pyro_sin.checkpoint: a resumed run repeats the uninterrupted one bit for bit, a writer killed
mid-write never loses the previous checkpoint, and every file that does not fit is refused
with a message that says why.
"""

import gc
import os
import pickle
import random
import signal
import time

import numpy as np
import pytest
import torch

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam, checkpoint
from pyro_sin.checkpoint import CheckpointError

from tests.helpers import tiny_mixture_model


def build(K=3):
    """The same model, guide and SVI each time, as a new process would build them (fresh weights)."""
    pyro.clear_param_store()
    model, guide, y = tiny_mixture_model(K=K, seed=0)
    torch.manual_seed(123)  # other network weights than the first build: the checkpoint must overwrite them
    for module in (model.decoder, guide.encoder):
        for p in module.parameters():
            p.data.normal_()
    return SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=0.2), SINELBO(num_particles=2)), y


def train(svi, y, steps):
    """``steps`` SVI steps on minibatches drawn from the global random streams (so they must be restored too)."""
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(y))[:5]
        losses.append(svi.step(y[idx], idx) + random.random() + float(np.random.rand()))
    return losses


def params():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def test_a_resumed_run_repeats_the_uninterrupted_one_bit_for_bit(tmp_path):
    path = tmp_path / "run.pt"
    svi, y = build()
    pyro.set_rng_seed(7)
    train(svi, y, 3)
    checkpoint.save(path, svi, settings={"step": 3, "lr": 0.01})
    uninterrupted = train(svi, y, 4)
    expected = params()

    svi, y = build()
    pyro.set_rng_seed(99)  # other random streams: the checkpoint must restore them
    settings = checkpoint.load(path, svi, y[:2], torch.arange(2))
    resumed = train(svi, y, 4)
    assert settings == {"step": 3, "lr": 0.01}
    assert resumed == uninterrupted
    got = params()
    assert set(got) == set(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_the_file_loads_with_weights_only(tmp_path):
    svi, y = build()
    train(svi, y, 2)
    checkpoint.save(tmp_path / "run.pt", svi)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert state["format"] == checkpoint.FORMAT and state["optim"]


WRITER_SIZE = 2_000_000  # float32 values: 8 MB a checkpoint, so that most of a writer's time is spent writing


def _writer(path):
    """The child's loop: checkpoints 0, 1, 2, ... each holding a tensor filled with its number."""
    value = pyro.param("w", torch.zeros(WRITER_SIZE))
    i = 0
    while True:
        i += 1
        with torch.no_grad():
            value.fill_(i)
        checkpoint.save(path, settings={"i": i})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    pyro.clear_param_store()
    value = pyro.param("w", torch.zeros(WRITER_SIZE))
    checkpoint.save(path, settings={"i": 0})
    start = time.perf_counter()
    checkpoint.save(path, settings={"i": 0})
    write_seconds = time.perf_counter() - start
    generator = random.Random(0)
    interrupted, last = 0, 0
    for trial in range(20):
        pid = os.fork()
        if pid == 0:  # the child writes until killed, and never returns into pytest
            try:
                _writer(path)
            finally:
                os._exit(1)
        time.sleep(generator.uniform(0.5, 3.0) * write_seconds)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers = [p for p in tmp_path.iterdir() if p != path]
        interrupted += bool(leftovers)
        for p in leftovers:
            p.unlink()
        settings = checkpoint.load(path)  # the last complete checkpoint, whatever the moment of the kill
        assert torch.all(value == settings["i"]), f"trial {trial}: the parameters are not checkpoint {settings['i']}'s"
        last = max(last, settings["i"])
    assert interrupted >= 5, f"only {interrupted} of 20 kills came during a write"
    assert last >= 1, "no checkpoint was ever completed by a writer"


def test_the_next_save_removes_the_temporary_files_of_killed_writes_and_nothing_else(tmp_path):
    path = tmp_path / "run.pt"
    # the writer's own names for run.pt (mkstemp's 8 characters): one left by a killed write, one still being written
    stale, under_way = tmp_path / ".run.pt.k1ll3d_0.tmp", tmp_path / ".run.pt.wr1t1ng_.tmp"
    others = [tmp_path / ".other.pt.k1ll3d_0.tmp", tmp_path / ".run.pt.k1ll3d_0.tmp.keep", tmp_path / "run.pt.tmp"]
    now = time.time()
    for leftover, modified in [(stale, now - 3600), (under_way, now + 3600)] + [(o, now - 3600) for o in others]:
        leftover.write_bytes(b"partial")
        os.utime(leftover, (modified, modified))
    pyro.clear_param_store()
    pyro.param("w", torch.ones(3))
    checkpoint.save(path, settings={"i": 1})
    assert not stale.exists()
    assert under_way.exists() and all(other.exists() for other in others)
    assert checkpoint.load(path)["i"] == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*missing.pt"):
        checkpoint.load(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="folder .*nowhere does not exist"):
        checkpoint.save(tmp_path / "nowhere" / "run.pt")

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a pyro_sin checkpoint"):
        checkpoint.load(empty)
    foreign = tmp_path / "foreign.pt"
    torch.save({"params": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a pyro_sin checkpoint"):
        checkpoint.load(foreign)
    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as file:  # an object that weights_only refuses to build
        pickle.dump({"format": checkpoint.FORMAT, "what": np.dtype("float64").__class__}, file)
    with pytest.raises(CheckpointError, match="is not a pyro_sin checkpoint"):
        checkpoint.load(unsafe)

    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(tmp_path / "run.pt", settings={"net": torch.nn.Linear(1, 1)})

    svi, y = build(K=3)
    train(svi, y, 1)
    checkpoint.save(tmp_path / "run.pt", svi)
    with pytest.raises(CheckpointError, match="already taken steps"):
        checkpoint.load(tmp_path / "run.pt", svi)

    svi, y = build(K=3)
    with pytest.raises(CheckpointError, match="holds none of the checkpoint's parameters"):
        checkpoint.load(tmp_path / "run.pt", svi)  # nothing created yet, and no batch to create it with

    del svi
    gc.collect()  # the unused model above would otherwise keep its default name, and this one get another
    svi, y = build(K=4)  # another number of mixture components: the natural parameters differ in shape
    before = params()
    with pytest.raises(CheckpointError, match=r"'DeepLatentMixture.guide.natural' has shape \(\d+,\) but"):
        checkpoint.load(tmp_path / "run.pt", svi, y[:2], torch.arange(2))
    assert all(torch.equal(before[name], value) for name, value in params().items() if name in before)

    pyro.clear_param_store()
    pyro.param("another_model.weight", torch.zeros(2))
    checkpoint.save(tmp_path / "other.pt")
    del svi
    gc.collect()
    svi, y = build(K=3)
    with pytest.raises(CheckpointError, match=r"parameters .*'DeepLatentMixture.decoder.* are not in the checkpoint"):
        checkpoint.load(tmp_path / "other.pt", svi, y[:2], torch.arange(2))
