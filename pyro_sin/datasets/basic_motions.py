r"""
Real multichannel sensor sequences: *BasicMotions* (UEA multivariate time-series
archive), 80 recordings of a wrist-worn smart watch — 3-axis accelerometer and 3-axis
gyroscope, 100 steps each (10 s at 10 Hz) — while a person stands, walks, runs or plays
badminton (20 of each; 40 training and 40 test recordings). The recordings ship inside
the ``sktime`` package (extra ``[data]``), so loading needs no network.
"""

from typing import NamedTuple, Tuple

import numpy as np
import torch

CHANNELS = ("accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z")


class LabelledSequences(NamedTuple):
    """Train and test sequences ``(N, T, P)`` with class labels, standardised by the training split's statistics."""

    train: torch.Tensor  # (40, 100, 6)
    test: torch.Tensor  # (40, 100, 6)
    train_labels: torch.Tensor  # (40,) integers
    test_labels: torch.Tensor  # (40,)
    classes: Tuple[str, ...]
    loc: torch.Tensor  # (6,) the per-channel mean subtracted (zeros when not standardised)
    scale: torch.Tensor  # (6,) the per-channel standard deviation divided by (ones when not standardised)


def load_basic_motions(split: str = "train"):
    """
    The raw recordings of one split as NumPy arrays.

    :param str split: ``"train"`` or ``"test"``.
    :returns: ``(X, y)``: ``X`` of shape ``(40, 6, 100)`` (channels first, as the archive
        stores them) and the class names ``y`` of shape ``(40,)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        from sktime.datasets import load_basic_motions as _load
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the BasicMotions recordings ship with sktime: pip install 'pyro-sin[data]' (or pip install sktime)"
        ) from error
    X, y = _load(split=split, return_type="numpy3D")
    return np.asarray(X, dtype=np.float64), np.asarray(y).astype(str)


def basic_motions(standardize: bool = True, dtype=None) -> LabelledSequences:
    """
    Both splits as tensors of shape ``(N, T, P) = (40, 100, 6)``; with ``standardize`` every
    channel has mean 0 and standard deviation 1 over the training frames (the test split is
    shifted and scaled by the same numbers).
    """
    dtype = dtype or torch.get_default_dtype()
    (X_train, y_train), (X_test, y_test) = load_basic_motions("train"), load_basic_motions("test")
    classes = tuple(sorted(set(y_train) | set(y_test)))
    train = torch.as_tensor(X_train, dtype=dtype).transpose(1, 2).contiguous()
    test = torch.as_tensor(X_test, dtype=dtype).transpose(1, 2).contiguous()
    P = train.shape[-1]
    loc, scale = torch.zeros(P, dtype=dtype), torch.ones(P, dtype=dtype)
    if standardize:
        frames = train.reshape(-1, P)
        loc, scale = frames.mean(0), frames.std(0)
        train, test = (train - loc) / scale, (test - loc) / scale
    labels = lambda y: torch.as_tensor([classes.index(c) for c in y])  # noqa: E731
    return LabelledSequences(train, test, labels(y_train), labels(y_test), classes, loc, scale)
