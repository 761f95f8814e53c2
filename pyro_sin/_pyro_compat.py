"""
The few places where pyro-sin needs Pyro machinery that has no public API.

Everything else in the package uses Pyro's public interface. What is here reads
the effect-handler stack of :mod:`pyro.poutine.runtime`, which Pyro keeps private,
and the separator ``pyro.module`` puts into parameter names:
a :class:`~pyro_sin.SINGuide` called inside a user's data plate must find that
plate (to share its subsample indices) and emit its global sites outside it, and
its one-off set-up trace must run as if at top level. The behaviour is tested
(``tests/test_pyro_compat.py``) on the Pyro versions that ``pyproject.toml`` admits,
1.9.x: the whole suite passes on 1.9.2; on 1.9.0 and 1.9.1 the inference tests (guide,
ELBO, optimiser, families, several processes) pass except Pyro's own param-store ``load``
under torch >= 2.6, hence the lower bound 1.9.2.
"""

import contextlib

from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.runtime import _DIM_ALLOCATOR, _PYRO_STACK
from pyro.util import get_rng_state, set_rng_state

#: how ``pyro.module`` joins a module's name to its parameters' names (``"$$$"``)
MODULE_NAMESPACE_DIVIDER = _MODULE_NAMESPACE_DIVIDER


def active_plate(name: str):
    """The innermost active ``pyro.plate`` called ``name``, or ``None``."""
    for handler in reversed(_PYRO_STACK):
        if isinstance(handler, PlateMessenger) and handler.name == name:
            return handler
    return None


@contextlib.contextmanager
def isolated():
    """
    Runs a block as if at top level: without the handlers and plates that are active
    (a hand-written guide may call a SINGuide inside its data plate), and with the
    random stream restored afterwards.
    """
    rng_state, handlers, plates = get_rng_state(), _PYRO_STACK[:], _DIM_ALLOCATOR._stack[:]
    del _PYRO_STACK[:], _DIM_ALLOCATOR._stack[:]
    try:
        yield
    finally:
        _PYRO_STACK[:] = handlers
        _DIM_ALLOCATOR._stack[:] = plates
        set_rng_state(rng_state)


@contextlib.contextmanager
def outside(plate):
    """Hides an active plate from the statements in the block."""
    position = _PYRO_STACK.index(plate)
    _PYRO_STACK.pop(position)
    try:
        yield
    finally:
        _PYRO_STACK.insert(position, plate)
