"""
Checkpoints of a training run in one file: Pyro's param store, the optimiser's state,
the random number generators and the run's settings.

:func:`save` writes to a temporary file in the same folder, flushes it to disk and renames
it over the old checkpoint, so a process killed at any moment leaves either the old or the
new checkpoint, never a truncated one. The file holds only tensors, numbers, strings,
lists and dicts, so :func:`load` reads it with ``torch.load(weights_only=True)``: loading a
file from elsewhere cannot run code.

Parameters are restored by name into the tensors of the model being resumed, which must
be built the same way (the same ``name=`` arguments, or the same order of construction
after ``pyro.clear_param_store()``); its constraints (e.g. a natural-parameter domain)
come from that model, not from the file::

    save("run.pt", svi, settings={"step": step, "lr": 1e-3})
    ...
    # in a new process: build the model, guide and svi as before, then
    settings = load("run.pt", svi, y[:1], torch.arange(1))  # one batch of the model's arguments
"""

import contextlib
import json
import os
import random
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

import pyro
import pyro.poutine as poutine

FORMAT = "pyro_sin.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this package, or one that does not fit the model being resumed."""


def save(path: Union[str, os.PathLike], svi=None, settings: Optional[Dict[str, Any]] = None) -> None:
    """
    Writes the run's state to ``path`` atomically (a temporary file in the same folder,
    flushed, synced and renamed over the old one).

    :param path: the checkpoint file; its folder must exist.
    :param svi: the :class:`~pyro.infer.SVI` whose optimiser's state to save, or the
        optimiser itself (anything with ``get_state()``, e.g. :class:`~pyro_sin.optim.NaturalAdam`);
        ``None`` saves the parameters and random states alone.
    :param dict settings: the run's settings (step, learning rates, seeds...), anything
        ``json.dumps`` takes; :func:`load` returns them.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"checkpoint.save: the folder {path.parent} does not exist")
    try:
        settings_json = json.dumps({} if settings is None else settings)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint.save: settings must be JSON-serialisable ({error})") from None
    store = pyro.get_param_store().get_state()
    optim = _optimiser(svi)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "params": {name: value.detach() for name, value in store["params"].items()},
        "constraints": {name: type(c).__name__ for name, c in store["constraints"].items()},
        "optim": None if optim is None else optim.get_state(),
        "rng": _rng_state(),
        "settings": settings_json,
    }
    _write_atomically(state, path)


def load(path: Union[str, os.PathLike], svi=None, *args, **kwargs) -> Dict[str, Any]:
    """
    Restores a checkpoint written by :func:`save` into the model being resumed: the
    parameters (in place, into the param store's tensors), the optimiser's state and the
    random states. Nothing is changed unless the whole checkpoint fits.

    :param path: the checkpoint file.
    :param svi: the :class:`~pyro.infer.SVI` to resume (its optimiser must not have stepped
        yet), or its optimiser, or ``None`` for the parameters and random states alone.
    :param args: a batch of the model's arguments, with ``kwargs``: the model and the guide
        are run once on it (``svi.evaluate_loss``) to create their parameters, which a model
        built in a new process creates only on its first call. Without them, the param store
        must already hold the model's parameters.
    :returns: the settings given to :func:`save`. The checkpoint's parameters that the param
        store does not hold (another model's, saved from the same store) are left out.
    :raises FileNotFoundError: no file at ``path``.
    :raises CheckpointError: the file is not a checkpoint of this package, or its parameters
        do not match the model's (a parameter missing, or of another shape or constraint; each named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint.load: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or objects other than tensors and primitives
        raise CheckpointError(
            f"checkpoint.load: {path} is not a pyro_sin checkpoint "
            f"(torch.load refused it: {type(error).__name__}: {error})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint.load: {path} is not a pyro_sin checkpoint (one written by pyro_sin.checkpoint.save)"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint.load: {path} has format version {state.get('version')}; this pyro_sin reads {VERSION}"
        )
    optim = _optimiser(svi)
    if optim is not None and optim.get_state():
        raise CheckpointError(
            "checkpoint.load: the optimiser has already taken steps; load into a freshly built one "
            "(as in a new process), whose state the checkpoint then sets"
        )
    if args or kwargs:
        if svi is None or not hasattr(svi, "evaluate_loss"):
            raise TypeError("checkpoint.load: a batch of the model's arguments needs the SVI to run them with")
        with poutine.trace(param_only=True) as capture, torch.random.fork_rng(devices=[]):
            svi.evaluate_loss(*args, **kwargs)
        current = {name for name in capture.trace.nodes}
    else:
        current = set(pyro.get_param_store().keys())
    store = pyro.get_param_store().get_state()
    restore = _check_params(path, state, current, store)

    with torch.no_grad():
        for name in restore:
            store["params"][name].copy_(state["params"][name])
    if optim is not None and state["optim"] is not None:
        devices = {name: store["params"][name].device for name in restore}
        optim.set_state({name: _to(value, devices.get(name)) for name, value in state["optim"].items()})
    _set_rng_state(state["rng"])
    return json.loads(state["settings"])


def _optimiser(svi):
    optim = getattr(svi, "optim", svi)
    if optim is not None and not hasattr(optim, "get_state"):
        raise TypeError(f"checkpoint: expected an SVI or an optimiser with get_state/set_state, got {type(svi)}")
    return optim


def _check_params(path, state, current, store):
    """
    Refuses a checkpoint that lacks one of the model's parameters (``current``) or holds one
    of another shape or constraint than the param store's tensor of that name, naming every
    difference. :returns: the names to restore: the checkpoint's that the store holds.
    """
    saved = state["params"]
    problems = []
    missing = sorted(current - set(saved))
    if missing:
        problems.append(f"the model's parameters {_names(missing)} are not in the checkpoint")
    restore = sorted(set(saved) & set(store["params"]))
    for name in restore:
        value = store["params"][name]
        if value.shape != saved[name].shape:
            problems.append(f"{name!r} has shape {tuple(value.shape)} but {tuple(saved[name].shape)} in the checkpoint")
        constraint = type(store["constraints"][name]).__name__
        if constraint != state["constraints"].get(name, constraint):
            problems.append(f"{name!r} is constrained by {constraint} but by {state['constraints'][name]} in the file")
    if problems or not restore:
        hint = (
            "the param store holds none of the checkpoint's parameters: pass a batch of the model's arguments "
            "to load, or run the model and guide once before loading"
            if not restore
            else "build the model as the saved run did: the same families, sizes and name= arguments"
        )
        raise CheckpointError(f"checkpoint.load: {path} does not fit the model: " + "; ".join(problems + [hint]))
    return restore


def _names(names, shown=8):
    return ", ".join(map(repr, names[:shown])) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _to(value, device):
    """Tensors in a (nested) optimiser state moved to their parameter's device."""
    if device is None:
        return value
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(item, device) for item in value)
    return value


# ----- random states as tensors and primitives (readable with weights_only=True) ------------------------


def _rng_state() -> Dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "random": {"version": version, "internal": torch.tensor(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["random"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])


# ----- the atomic write ------------------------------------------------------------------------------------


def _temporary_names(path: Path) -> re.Pattern:
    """The names :func:`tempfile.mkstemp` gives this writer's temporary files for ``path``."""
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")


def _remove_stale_temporaries(path: Path, older_than_ns: int) -> None:
    """Removes the temporary files of writes of ``path`` killed before this one began (only this writer's names)."""
    pattern = _temporary_names(path)
    for candidate in path.parent.iterdir():
        if pattern.fullmatch(candidate.name):
            with contextlib.suppress(OSError):  # (gone already, or not ours to remove)
                if candidate.stat().st_mtime_ns < older_than_ns:
                    candidate.unlink()


def _write_atomically(obj, path: Path) -> None:
    """
    ``torch.save(obj, path)`` through a synced temporary file renamed over ``path``; then removes the
    temporary files that writers killed mid-write left behind.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    began_ns = os.fstat(fd).st_mtime_ns  # in the file system's clock; a write still under way is newer
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(OSError):  # keep the old file's permissions (mkstemp's are 0600)
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)
    _remove_stale_temporaries(path, began_ns)


def _sync_folder(folder: Path) -> None:
    """Makes the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
