"""
Collision-free default names in Pyro's global param store.

Pyro looks parameters up by name, so two guides (or two models' decoders)
built under the same default name in one process would share parameters: the
second silently starts from the first's values, or fails with a shape error.
Objects that own parameter names register here; a *default* name is made
unique against the live owners that hold, or are about to hold, parameters
under it. A name given explicitly is used as is (the way to make names stable
for param-store checkpoints across processes).

A live owner counts as holding its name until it has run once and the param
store then no longer holds anything under it (``pyro.clear_param_store()``),
so a model rebuilt after clearing the store gets its old name back and picks
up a checkpoint loaded into the store. An owner gone (an earlier run in the same
process, e.g. a notebook cell run twice) keeps its name taken while the store still
holds the very tensors it trained, so that a new run never warm-starts from them.
"""

import weakref

import pyro

from ._pyro_compat import MODULE_NAMESPACE_DIVIDER

_OWNERS = weakref.WeakSet()
#: id -> tensor: the param store's tensors that owners gone since left there (an earlier run in this process)
_LEFTOVERS = weakref.WeakValueDictionary()


class NameOwner:
    """Mixin for objects that own a prefix of parameter names (``param_prefix``)."""

    _registered_params = False

    def _claim_name(self, name, default):
        """Sets ``param_prefix`` to ``name``, or else to a unique variant of ``default``."""
        self.param_prefix = name if name is not None else unique_name(default)
        _OWNERS.add(self)
        finalizer = weakref.finalize(self, _record_leftovers, self.param_prefix)
        finalizer.atexit = False

    def _mark_registered(self):
        self._registered_params = True


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + MODULE_NAMESPACE_DIVIDER)


def _holds_parameters(prefix: str) -> bool:
    store = pyro.get_param_store()
    return any(_under(key, prefix) for key in store.keys())


def _stored(prefix: str):
    """The param store's (unconstrained) tensors under ``prefix``."""
    # named_parameters, not get_state: this runs from a finalizer, at any moment (inside an SVI step too), and
    # get_state strips the `.unconstrained` marks that Pyro's optimisation step reads
    return [value for key, value in pyro.get_param_store().named_parameters() if _under(key, prefix)]


def _record_leftovers(prefix: str) -> None:
    """When an owner is gone: what it left in the store under its name is an earlier run's, not a checkpoint."""
    for value in _stored(prefix):
        _LEFTOVERS[id(value)] = value


def _holds_leftovers(prefix: str) -> bool:
    return any(_LEFTOVERS.get(id(value)) is value for value in _stored(prefix))


def unique_name(base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ... if a live owner holds that name."""
    taken = {
        owner.param_prefix
        for owner in list(_OWNERS)
        if not owner._registered_params or _holds_parameters(owner.param_prefix)
    }
    name, count = base, 1
    # a name whose parameters an earlier, finished run left in the store is taken too: adopting them would
    # warm-start this run from that one's trained values (or clash with another K); a checkpoint loaded
    # into the store (new tensors) is adopted
    while name in taken or _holds_leftovers(name):
        count += 1
        name = f"{base}_{count}"
    return name
