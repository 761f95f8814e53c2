"""The Pyro version is one the package declares, and the private Pyro machinery it relies on behaves as assumed."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine

from pyro_sin._pyro_compat import MODULE_NAMESPACE_DIVIDER, active_plate, isolated, outside

tomllib = pytest.importorskip("tomllib")


def _release(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_pyro_lies_in_the_declared_range():
    requirements = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [r for r in requirements if r.startswith("pyro-ppl")]
    bounds = dict((op, _release(v)) for op, v in re.findall(r"(>=|<)\s*([\d.]+)", spec))
    assert set(bounds) == {">=", "<"}, f"pyro-ppl needs a lower and an upper bound, got {spec!r}"
    installed = _release(version("pyro-ppl"))
    assert bounds[">="] <= installed < bounds["<"], (spec, installed)


def test_active_plate_finds_the_innermost_plate_of_that_name():
    with pyro.plate("data", 5) as outer:
        assert active_plate("data") is not None and active_plate("other") is None
        found = active_plate("data")
        with pyro.plate("data_inner", 3):
            assert active_plate("data") is found
    assert outer is not None and active_plate("data") is None


def test_outside_hides_the_plate_from_the_statements_in_the_block():
    def model():
        with pyro.plate("data", 4):
            plate = active_plate("data")
            inside = pyro.sample("inside", dist.Normal(0.0, 1.0))
            with outside(plate):
                hidden = pyro.sample("hidden", dist.Normal(0.0, 1.0))
            after = pyro.sample("after", dist.Normal(0.0, 1.0))
        return inside, hidden, after

    trace = poutine.trace(model).get_trace()
    frames = {name: [f.name for f in trace.nodes[name]["cond_indep_stack"]] for name in ("inside", "hidden", "after")}
    assert frames == {"inside": ["data"], "hidden": [], "after": ["data"]}
    assert trace.nodes["hidden"]["value"].shape == () and trace.nodes["after"]["value"].shape == (4,)


def test_isolated_runs_at_top_level_and_restores_the_stack_and_the_random_stream():
    def inner():
        return pyro.sample("x", dist.Normal(0.0, 1.0))

    with poutine.trace() as outer_trace:
        with pyro.plate("data", 3):
            pyro.set_rng_seed(0)
            with isolated():
                assert active_plate("data") is None
                with poutine.trace() as inner_trace:
                    inner()
            continued = pyro.sample("y", dist.Normal(0.0, 1.0))
    assert "x" not in outer_trace.trace.nodes  # the outer handlers did not see the isolated block
    assert inner_trace.trace.nodes["x"]["cond_indep_stack"] == ()
    pyro.set_rng_seed(0)
    with pyro.plate("data", 3):
        expected = pyro.sample("y", dist.Normal(0.0, 1.0))
    assert torch.equal(continued, expected)  # the block's draws did not advance the random stream


def test_module_parameters_are_named_with_the_divider():
    pyro.module("net", torch.nn.Linear(1, 1))
    assert f"net{MODULE_NAMESPACE_DIVIDER}weight" in pyro.get_param_store().keys()
