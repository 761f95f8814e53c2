import pytest
import torch

from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.initialization import kmeans, pretrain_components, warmup_schedule
from pyro_sin.models import DeepLatentMixture
from pyro_sin.pgm import GaussianMixture
from pyro_sin.standardize import standardized_autoencoder
from pyro_sin.training import fit


def _blobs(num_per_blob=50):
    centres = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    spreads = torch.tensor([0.5, 1.0, 0.25])
    points = centres.repeat_interleave(num_per_blob, 0) + torch.randn(3 * num_per_blob, 2) * spreads.repeat_interleave(
        num_per_blob
    )[:, None]
    return points, torch.arange(3).repeat_interleave(num_per_blob), centres, spreads


def test_kmeans_finds_separated_clusters():
    points, labels, centres, _ = _blobs()
    found, assignment = kmeans(points, 3, torch.Generator().manual_seed(0))
    # the same partition up to relabelling, with centres at the cluster means
    for k in range(3):
        assert len(torch.unique(assignment[labels == k])) == 1
        assert torch.allclose(found[assignment[labels == k][0]], points[labels == k].mean(0))
    with pytest.raises(ValueError):
        kmeans(points, 0)


def test_kmeans_with_fewer_distinct_points_than_clusters():
    centres, assignment = kmeans(torch.ones(10, 2), 3)
    assert torch.equal(centres, torch.ones(3, 2)) and assignment.shape == (10,)


def test_warmup_holds_the_components_while_the_networks_learn():
    schedule = warmup_schedule(0.1, 5)
    assert [schedule(t) for t in range(7)] == [0, 0, 0, 0, 0, 0.1, 0.1]
    with pytest.raises(ValueError):
        warmup_schedule(0.0, 5)

    points, _, _, _ = _blobs(20)
    encoder, decoder = standardized_autoencoder(points, 2, (8,))
    gmm = GaussianMixture(3, 2)
    model = DeepLatentMixture(gmm, decoder, len(points))
    init = gmm.encoded_start(encoder, points)
    guide = model.make_guide(encoder, init_natural=init)
    svi = SVI(model, guide, NaturalAdam({"lr": 0.01}, natural_lr=schedule), SINELBO(num_particles=2))
    start = {k: v.detach().clone() for k, v in guide.natural_params().items()}
    for key, value in start.items():  # λ is stored through a bijection: equal up to rounding
        torch.testing.assert_close(value, init[key])
    fit(svi, points, iterations=5, batch_size=20, progress=False)
    for key, value in guide.natural_params().items():
        assert torch.equal(value, start[key]), key
    fit(svi, points, iterations=1, batch_size=20, progress=False)
    assert not torch.equal(guide.natural_params()["loc"], init["loc"])


@pytest.mark.parametrize("factor", ["tied", "free"])
def test_pretraining_places_the_components_on_what_the_networks_learned(factor):
    points, _, _, _ = _blobs(20)
    encoder, decoder = standardized_autoencoder(points, 2, (8,))
    gmm = GaussianMixture(3, 2)
    model = DeepLatentMixture(gmm, decoder, len(points))
    first = gmm.encoded_start(encoder, points, torch.Generator().manual_seed(0))
    guide = model.make_guide(encoder, factor=factor, init_natural=first)
    held = SVI(model, guide, NaturalAdam({"lr": 0.05}, natural_lr=warmup_schedule(0.1, 10)), SINELBO(num_particles=2))
    history = pretrain_components(held, guide, points, iterations=10, batch_size=20, progress=False)
    assert len(history.losses) == 10
    # λ now holds the k-means components of the trained encoder's means (k-means's default seed)
    expected = gmm.encoded_start(encoder, points)
    placed = guide.natural_params()
    for key, value in expected.items():
        torch.testing.assert_close(placed[key], value)
    assert not torch.allclose(placed["loc"], first["loc"])
    if factor == "free":  # the learned factor restarts from the new components
        for key, (value, _) in gmm.init_free_factor(expected).items():
            torch.testing.assert_close(getattr(guide.free, key), value)
    # a natural step during the phase would have moved what it was meant to hold
    moving = SVI(model, guide, NaturalAdam({"lr": 0.05}, natural_lr=0.1), SINELBO(num_particles=2))
    with pytest.raises(ValueError, match="moved"):
        pretrain_components(moving, guide, points, iterations=2, batch_size=20, progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_components_from_points_without_spread_in_some_directions(dtype):
    # a latent space wider than the data (points on a plane in 5-D) and identical points up to
    # rounding (constant data) once gave a singular Wishart scale
    generator = torch.Generator().manual_seed(0)
    plane = torch.randn(300, 2, generator=generator) @ torch.randn(2, 5, generator=generator)
    identical = torch.full((300, 5), 0.3) + 1e-7 * torch.randn(300, 1, generator=generator) * torch.ones(5)
    gmm = GaussianMixture(4, 5).to(dtype)
    for points in (plane.to(dtype), identical.to(dtype)):
        natural = gmm.natural_from_points(points, torch.Generator().manual_seed(0))
        precisions = gmm.point_estimate(gmm.global_posterior(natural)).precisions
        assert torch.isfinite(precisions).all() and (torch.linalg.eigvalsh(precisions) > 0).all()
