import torch

from pyro_sin.datasets import make_pinwheel, pinwheel


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
