import os
import sys
from pathlib import Path

import pytest
import torch

import pyro

# The examples (experiments, baselines, plotting) are scripts beside the package, not part of it;
# their modules import one another by name, as they do when run as `python examples/<name>.py`.
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))


def pytest_configure(config):
    os.environ.setdefault("CI", "1")  # tutorials and experiments run in their short mode
    # The tests run many tiny tensor operations, for which intra-op threads cost more
    # in synchronisation than they save (8x slower per step on a busy 2-core machine).
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the same for the processes the tests start (kernels, workers)


@pytest.fixture(autouse=True)
def _float64_and_validation():
    """Pyro's own test convention: float64, validation on, a fresh param store."""
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    torch.set_default_dtype(old_dtype)
    pyro.clear_param_store()
