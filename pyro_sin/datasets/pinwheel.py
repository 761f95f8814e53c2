"""The pinwheel data set of Johnson et al. (2016), as used by the SAN paper."""

import math
from typing import NamedTuple

import torch

from ._device import built_on_cpu


class LabelledSplit(NamedTuple):
    """A seeded train / test split of labelled data."""

    train: torch.Tensor  # (N_train, D)
    train_labels: torch.Tensor  # (N_train,)
    test: torch.Tensor  # (N_test, D)
    test_labels: torch.Tensor  # (N_test,)


@built_on_cpu
def make_pinwheel(
    num_classes: int = 5,
    num_per_class: int = 200,
    radial_std: float = 0.3,
    tangential_std: float = 0.05,
    rate: float = 0.25,
    scale: float = 10.0,
    seed: int = 0,
    dtype=None,
):
    r"""
    Points on ``num_classes`` spokes that curl more the further out they lie:
    a point at radius ``r`` on spoke ``c`` is rotated by ``2πc / C + rate · exp(r)``.

    :returns: ``(data, labels)`` with shapes ``(C·n, 2)`` and ``(C·n,)``, in a
        seeded random order.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.get_default_dtype()
    n = num_classes * num_per_class
    features = torch.randn(n, 2, generator=gen, dtype=dtype) * torch.tensor(
        [radial_std, tangential_std], dtype=dtype
    )
    features[:, 0] += 1.0
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    angles = 2 * math.pi * labels.to(dtype) / num_classes + rate * features[:, 0].exp()
    cos, sin = angles.cos(), angles.sin()
    rotations = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    data = scale * torch.einsum("ni,nij->nj", features, rotations)
    order = torch.randperm(n, generator=gen)
    return data[order], labels[order]


@built_on_cpu
def split(data, labels, test_fraction: float = 0.3, seed: int = 0) -> LabelledSplit:
    """A seeded random split with ``round(test_fraction · N)`` test points."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    num_test = round(test_fraction * len(data))
    test, train = order[:num_test], order[num_test:]
    return LabelledSplit(data[train], labels[train], data[test], labels[test])


@built_on_cpu
def pinwheel(seed: int = 0, test_fraction: float = 0.3, **kwargs) -> LabelledSplit:
    """The paper's pinwheel: 5 spokes × 200 points, scaled by 10, split 70 / 30."""
    data, labels = make_pinwheel(seed=seed, **kwargs)
    return split(data, labels, test_fraction, seed)


@built_on_cpu
def noisy_pinwheel(outlier_ratio: float, seed: int = 0, noise_std: float = 10.0, **kwargs) -> LabelledSplit:
    """
    The pinwheel split with a fraction of the *training* points replaced by
    ``N(0, noise_std² I)`` outliers (label ``-1``); the test set stays clean.
    """
    if not 0 <= outlier_ratio < 1:
        raise ValueError(f"outlier_ratio must lie in [0, 1), got {outlier_ratio}")
    parts = pinwheel(seed=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    num = round(outlier_ratio * len(parts.train))
    which = torch.randperm(len(parts.train), generator=gen)[:num]
    train, labels = parts.train.clone(), parts.train_labels.clone()
    train[which] = noise_std * torch.randn(num, train.shape[-1], generator=gen, dtype=train.dtype)
    labels[which] = -1
    return LabelledSplit(train, labels, parts.test, parts.test_labels)
