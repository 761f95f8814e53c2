import pytest
import torch

from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.initialization import (
    encoded_components,
    encoded_regimes,
    encoded_states,
    kmeans,
    mixture_natural_from_points,
    pretrain_components,
    warmup_schedule,
)
from pyro_sin.models import DeepLatentMixture
from pyro_sin.pgm import GaussianMixture, SwitchingLDS
from pyro_sin.potential import GaussianPotential
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


def test_components_start_on_the_clusters_with_their_spread():
    points, labels, _, spreads = _blobs(200)
    gmm = GaussianMixture(3, 2)
    natural = mixture_natural_from_points(gmm, points, torch.Generator().manual_seed(1))
    q = gmm.global_posterior(natural)
    params = gmm.point_estimate(q)
    assert torch.allclose(params.weights, torch.full((3,), 1 / 3))
    for k in range(3):
        near = torch.cdist(params.locs, points[labels == k].mean(0, keepdim=True))[:, 0].argmin()
        assert torch.allclose(params.locs[near], points[labels == k].mean(0))
        # E[Λ] is about the inverse of the cluster's covariance (a little regularised)
        variance = 1 / params.precisions[near].diagonal()
        assert torch.allclose(variance, torch.full((2,), float(spreads[k]) ** 2), rtol=0.35)


def test_components_from_single_precision_points_in_ten_dimensions():
    # float32 rounding in the within-cluster scatter once left the Wishart scale a hair asymmetric,
    # and NormalWishart refused it ("scale_inv must be symmetric")
    generator = torch.Generator().manual_seed(6)
    points = (torch.randn(1200, 10, generator=generator) * torch.rand(10, generator=generator) * 30).float()
    gmm = GaussianMixture(10, 10).float()
    natural = mixture_natural_from_points(gmm, points, torch.Generator().manual_seed(6))
    assert natural["scale"].dtype == torch.float32
    assert torch.equal(natural["scale"], natural["scale"].transpose(-1, -2))
    gmm.global_posterior(natural)  # a valid q(θ)


def test_refined_components_follow_elongated_clusters_that_kmeans_cuts_apart():
    # two long, thin, parallel clusters: k-means's cheapest cut is across them, a full-covariance mixture is not fooled
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(300)
    points = torch.randn(600, 2, generator=generator) * torch.tensor([3.0, 0.3])
    points[:, 1] += 3.0 * labels - 1.5
    truth = torch.stack([points[labels == k].mean(0) for k in range(2)])
    gmm = GaussianMixture(2, 2)

    def start_locs(refine):
        natural = mixture_natural_from_points(gmm, points, torch.Generator().manual_seed(0), refine=refine)
        return gmm.point_estimate(gmm.global_posterior(natural)).locs

    def distance_to_truth(locs):
        return min((locs - truth).norm(dim=-1).max(), (locs.flip(0) - truth).norm(dim=-1).max())

    assert distance_to_truth(start_locs(0)) > 1.5  # k-means: a left and a right half
    assert distance_to_truth(start_locs(200)) < 1e-6
    with pytest.raises(ValueError, match="refine"):
        mixture_natural_from_points(gmm, points, refine=-1)


def test_warmup_holds_the_components_while_the_networks_learn():
    schedule = warmup_schedule(0.1, 5)
    assert [schedule(t) for t in range(7)] == [0, 0, 0, 0, 0, 0.1, 0.1]
    with pytest.raises(ValueError):
        warmup_schedule(0.0, 5)

    points, _, _, _ = _blobs(20)
    encoder, decoder = standardized_autoencoder(points, 2, (8,))
    gmm = GaussianMixture(3, 2)
    model = DeepLatentMixture(gmm, decoder, len(points))
    init = encoded_components(gmm, encoder, points)
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
    first = encoded_components(gmm, encoder, points, torch.Generator().manual_seed(0))
    guide = model.make_guide(encoder, factor=factor, init_natural=first)
    held = SVI(model, guide, NaturalAdam({"lr": 0.05}, natural_lr=warmup_schedule(0.1, 10)), SINELBO(num_particles=2))
    history = pretrain_components(held, guide, points, iterations=10, batch_size=20, progress=False)
    assert len(history.losses) == 10
    # λ now holds the k-means components of the trained encoder's means (k-means's default seed)
    expected = encoded_components(gmm, encoder, points)
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
        natural = mixture_natural_from_points(gmm, points, torch.Generator().manual_seed(0))
        precisions = gmm.point_estimate(gmm.global_posterior(natural)).precisions
        assert torch.isfinite(precisions).all() and (torch.linalg.eigvalsh(precisions) > 0).all()


def test_components_from_points_refuse_other_priors_and_dimensions():
    from pyro_sin.pgm import StudentTMixture

    points = torch.randn(50, 2)
    with pytest.raises(TypeError, match="StudentTMixture"):
        mixture_natural_from_points(StudentTMixture(3, 2), points)
    with pytest.raises(ValueError, match="dimension 3"):
        mixture_natural_from_points(GaussianMixture(3, 3), points)


def test_slds_start_from_encoded_sequences_recovers_the_regimes_dynamics():
    """With an encoder that sees the states exactly, hard EM over regressions finds each regime's (A_k, b_k)."""
    g = torch.Generator().manual_seed(0)
    N, T, D, angle = 20, 40, 2, 0.3
    c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
    rotations = torch.stack([torch.tensor([[c, -s], [s, c]]), torch.tensor([[c, s], [-s, c]])])  # both senses
    drifts = torch.tensor([[0.2, 0.0], [0.0, -0.2]])
    regime = torch.randint(2, (N,), generator=g)
    x = [torch.randn(N, D, generator=g)]
    for t in range(1, T):
        regime = torch.where(torch.rand(N, generator=g) < 0.1, 1 - regime, regime)  # sticky switches
        noise = 0.01 * torch.randn(N, D, generator=g)
        x.append((rotations[regime] @ x[-1][..., None])[..., 0] + drifts[regime] + noise)
    x = torch.stack(x, 1)  # (N, T, D)

    def exact_encoder(y):
        precision = torch.full_like(y, 1e8)
        return GaussianPotential(precision * y, precision)

    slds = SwitchingLDS(2, D)
    natural = encoded_regimes(slds, exact_encoder, x, torch.Generator().manual_seed(0))
    loc = slds.regimes_from_natural(natural).loc  # (K, D, D + 1)
    truth = torch.cat([rotations, drifts[..., None]], -1)
    error = min((loc - truth[list(order)]).abs().max() for order in ([0, 1], [1, 0]))
    assert error < 0.05


def test_hmm_states_start_on_the_clusters_of_the_encoded_frames():
    from pyro_sin.pgm import LatentHMM

    points, labels, _, _ = _blobs(100)
    frames = points.reshape(6, 50, 2)  # six sequences of fifty frames, each within one blob

    def exact_encoder(y):
        precision = torch.full_like(y, 1e8)
        return GaussianPotential(precision * y, precision)

    hmm = LatentHMM(3, 2)
    natural = encoded_states(hmm, exact_encoder, frames, torch.Generator().manual_seed(0))
    assert torch.equal(natural["transition_concentration"], hmm.prior_transition_concentration)
    locs = hmm.point_estimate(hmm.global_posterior(natural)).locs
    means = torch.stack([points[labels == k].mean(0) for k in range(3)])
    assert torch.cdist(means, locs).min(1).values.max() < 1e-3
