import torch

from pathlib import Path

from pyro_sin.datasets import auto_mpg, load_auto_mpg, make_pinwheel, noisy_pinwheel, pinwheel


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
