r"""
Ready-made deep generative models with a structured latent prior, and the generic
pieces they are written with.

Each family owns its model (:class:`DeepLatentMixture` in :mod:`pyro_sin.pgm.mixture.model`,
:class:`DeepLatentSequence` in :mod:`pyro_sin.pgm.sequence`); they are re-exported here.
"""

import torch

import pyro


def check_num_data(num_data, owner: str) -> int:
    """``num_data`` as an ``int``, refused unless it counts at least one training point (the plate's size ``N``)."""
    if isinstance(num_data, bool) or not float(num_data).is_integer() or num_data < 1:
        raise ValueError(f"{owner}: num_data must be at least 1 (the training set's size N), got {num_data!r}")
    return int(num_data)


def data_plate(num_data: int, y: torch.Tensor, indices=None) -> pyro.plate:
    """
    The plate over data points: ``y`` is the minibatch, ``indices`` its rows in
    the full data set (random ones when omitted; only the scale ``N/|B|`` matters then).
    """
    if indices is not None:
        indices = torch.as_tensor(indices, device=y.device if torch.is_tensor(y) else None)
        if indices.dim() != 1 or indices.is_floating_point():
            raise ValueError(
                f"indices must be a 1-D integer tensor, one row number per data point of the minibatch, got "
                f"{indices.dtype} of shape {tuple(indices.shape)}: e.g. idx.reshape(-1) for a single point"
            )
        if len(indices) != len(y):
            raise ValueError(
                f"the minibatch has {len(y)} rows but {len(indices)} indices: pass the minibatch's rows, "
                "y[indices], with their indices"
            )
        if len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < num_data):
            raise ValueError(f"indices must lie in [0, {num_data}) (num_data), got {indices.min()}..{indices.max()}")
    size = len(y) if indices is None else len(indices)
    if size == 0:
        raise ValueError("the minibatch is empty: pass at least one data point")
    if indices is not None:
        return pyro.plate("data", num_data, subsample=indices)
    if len(y) >= num_data:  # a data set of its own (e.g. held-out data larger than N)
        return pyro.plate("data", len(y))
    return pyro.plate("data", num_data, subsample_size=len(y))


def register_decoder(model):
    """
    Registers ``model.decoder`` under ``"<model name>.decoder"``, adopting values already in
    the param store (a loaded checkpoint), so that the tensors Adam trains are the decoder's.
    """
    model._mark_registered()
    pyro.module(f"{model.param_prefix}.decoder", model.decoder, update_module_params=True)


def frame_likelihood(decoder, x, mask=None):
    """``p(y_{1:T} | x_{1:T})`` with independent frames; missing frames (``mask == 0``) drop out."""
    frames = decoder.distribution(x)  # batch (..., T), event (P,)
    if mask is not None:
        frames = frames.mask(mask.bool())
    return frames.to_event(1)


def observed_frames(y, mask=None, lengths=None):
    """
    ``(B, T)``: True at the frames whose likelihood counts, those observed (``mask``)
    and before their sequence's end (``lengths``); None when every frame counts.
    """
    if lengths is None:
        return None if mask is None else mask.bool()
    steps = torch.arange(y.shape[-2], device=lengths.device) < lengths[..., None]
    return steps if mask is None else steps & mask.bool()


# The families' models are written with the helpers above, so they are imported after them.
from .pgm.mixture.model import DeepLatentMixture  # noqa: E402
from .pgm.sequence import DeepLatentSequence  # noqa: E402

__all__ = [
    "DeepLatentMixture",
    "DeepLatentSequence",
    "data_plate",
    "frame_likelihood",
    "observed_frames",
    "register_decoder",
]
