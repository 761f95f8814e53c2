"""
The Gaussian mixture's own mathematics: the SIN posterior against quadrature, Monte Carlo, the
SVAE's inner loop and the data-driven start. What every family must do (padding, checkpoints, bad
input, the full natural step, dtypes and devices) is checked by the conformance suite,
tests/test_conformance.py.
"""

import math

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.ops.indexing import Vindex

from pyro_sin.pgm import GaussianMixture
from pyro_sin.potential import GaussianPotential


def random_factor(gmm):
    K, D = gmm.num_components, gmm.latent_dim
    A = torch.randn(K, D, D)
    return gmm.free_factor(
        {
            "logits": torch.randn(K),
            "loc": 2 * torch.randn(K, D),
            "precision_tril": torch.linalg.cholesky(A @ A.transpose(-1, -2) + 0.5 * torch.eye(D)),
        }
    )


def random_potential(B, D):
    return GaussianPotential(torch.randn(B, D) * 2, torch.rand(B, D) + 0.3)


def grid(D=2, lim=12.0, n=601):
    axes = torch.linspace(-lim, lim, n)
    pts = torch.stack(torch.meshgrid(*[axes] * D, indexing="ij"), -1).reshape(-1, D)
    return pts, (axes[1] - axes[0]) ** D


def brute_force(potential, factor, pts, cell):
    """Dense quadrature of ψ(x) f_k(x) on a grid: log Z, r_nk, means, covariances."""
    h, J = potential.info_vec, potential.precision
    log_psi = pts @ h.T - 0.5 * (pts.pow(2) @ J.T)  # (G, B)
    log_f = (
        factor.log_weight
        + pts @ factor.info_loc.T
        - 0.5 * torch.einsum("gi,kij,gj->gk", pts, factor.precision, pts)
    )  # (G, K)
    log_joint = log_psi[:, :, None] + log_f[:, None, :] + math.log(cell)  # (G, B, K)
    log_zk = torch.logsumexp(log_joint, 0)  # (B, K)
    w = (log_joint - log_zk).exp()
    mean = torch.einsum("gbk,gd->bkd", w, pts)
    diff = pts[:, None, None, :] - mean
    cov = torch.einsum("gbk,gbki,gbkj->bkij", w, diff, diff)
    return torch.logsumexp(log_zk, -1), torch.softmax(log_zk, -1), mean, cov


def test_posterior_matches_dense_quadrature():
    gmm = GaussianMixture(3, 2)
    factor, potential = random_factor(gmm), random_potential(4, 2)
    post = gmm.posterior(potential, factor)
    log_z, r, mean, cov = brute_force(potential, factor, *grid())
    assert_close(post.log_normalizer, log_z, rtol=1e-6, atol=1e-6)
    assert_close(post.probs, r, rtol=1e-6, atol=1e-8)
    assert_close(post.loc, mean, rtol=1e-5, atol=1e-6)
    assert_close(post.covariance, cov, rtol=1e-4, atol=1e-6)


def test_entropy_and_marginal_density_match_monte_carlo():
    gmm = GaussianMixture(4, 2)
    post = gmm.posterior(random_potential(3, 2), random_factor(gmm))
    z = dist.Categorical(logits=post.log_probs).sample((200000,))  # (S, B)
    comp = dist.MultivariateNormal(Vindex(post.loc)[..., z, :], scale_tril=Vindex(post.scale_tril)[..., z, :, :])
    x = comp.sample()
    log_q_joint = Vindex(post.log_probs)[..., z] + comp.log_prob(x)
    assert_close(post.entropy(), -log_q_joint.mean(0), rtol=0.01, atol=0.01)
    # the marginal density integrates the joint over z
    log_joint_all = post.log_probs + dist.MultivariateNormal(post.loc, scale_tril=post.scale_tril).log_prob(
        x[..., None, :]
    )
    assert_close(post.marginal_log_prob(x), torch.logsumexp(log_joint_all, -1))


def test_tied_factor_is_the_expected_log_prior_pointwise():
    gmm = GaussianMixture(3, 2)
    natural = gmm.init_natural()
    natural["concentration"] = torch.tensor([1.0, 2.5, 4.0])
    q = gmm.global_posterior(natural)
    factor = gmm.tied_factor(q)
    conc, nw = q.concentration, q.normal_wishart
    x = torch.randn(5, 2) * 3
    mu, lam = nw.rsample((200000,))
    pi = dist.Dirichlet(conc).sample((200000,))
    log_p = pi.log()[:, None, :] + dist.MultivariateNormal(mu[:, None], precision_matrix=lam[:, None]).log_prob(
        x[None, :, None, :]
    )  # (S, 5, K)
    log_f = factor.log_weight + x @ factor.info_loc.T - 0.5 * torch.einsum("ni,kij,nj->nk", x, factor.precision, x)
    assert_close(log_f, log_p.mean(0), rtol=0.01, atol=0.02)


def test_local_elbo_matches_monte_carlo():
    gmm = GaussianMixture(3, 2)
    natural = gmm.init_natural()
    post = gmm.posterior(random_potential(2, 2), random_factor(gmm))
    S = 100000
    q = gmm.global_posterior(natural)
    conc, nw = q.concentration, q.normal_wishart
    mu, lam = nw.rsample((S,))
    pi = dist.Dirichlet(conc).sample((S,))
    z = dist.Categorical(logits=post.log_probs).sample((S,))  # (S, B)
    loc = torch.stack([post.loc[b, z[:, b]] for b in range(2)], 1)
    tril = torch.stack([post.scale_tril[b, z[:, b]] for b in range(2)], 1)
    x = dist.MultivariateNormal(loc, scale_tril=tril).sample()
    log_q = post.log_probs.gather(-1, z.T).T + dist.MultivariateNormal(loc, scale_tril=tril).log_prob(x)
    mu_z = torch.stack([mu[torch.arange(S), z[:, b]] for b in range(2)], 1)
    lam_z = torch.stack([lam[torch.arange(S), z[:, b]] for b in range(2)], 1)
    log_p = pi.log().gather(-1, z) + dist.MultivariateNormal(mu_z, precision_matrix=lam_z).log_prob(x)
    assert_close(gmm.local_elbo(q, post), (log_p - log_q).mean(0), rtol=0.01, atol=0.03)


def test_model_sites_have_the_declared_distributions():
    gmm = GaussianMixture(3, 2)

    def model():
        params = gmm.sample_params()
        with pyro.plate("data", 5):
            return gmm.sample_latent(params)

    tr = pyro.poutine.trace(model).get_trace()
    assert set(gmm.global_sites + gmm.local_sites) <= set(tr.nodes)
    assert tr.nodes["x"]["value"].shape == (5, 2)
    assert tr.nodes["x_assignment"]["fn"].has_enumerate_support


def test_svae_inner_loop_reaches_the_mean_field_fixed_point():
    gmm = GaussianMixture(4, 2)
    natural = gmm.init_natural()
    natural["concentration"] = torch.tensor([3.0, 1.0, 2.0, 5.0])
    q = gmm.global_posterior(natural)
    pot = random_potential(6, 2)
    few, many = gmm.mean_field_posterior(pot, q, 20), gmm.mean_field_posterior(pot, q, 500)
    assert_close(few.probs, many.probs, rtol=0, atol=1e-6)
    assert_close(few.loc, many.loc, rtol=0, atol=1e-6)
    # the fixed point: q(x) is the Gaussian the r's imply, and r is what q(x) implies
    f = gmm.tied_factor(q)
    r = many.probs
    precision = torch.diag_embed(pot.precision) + torch.einsum("nk,kij->nij", r, f.precision)
    mean = torch.linalg.solve(precision, pot.info_vec + r @ f.info_loc)
    assert_close(many.loc[:, 0], mean)
    assert_close(many.covariance[:, 0], torch.linalg.inv(precision))
    second = torch.linalg.inv(precision) + mean[:, :, None] * mean[:, None, :]
    log_r = f.log_weight + mean @ f.info_loc.T - 0.5 * torch.einsum("kij,nij->nk", f.precision, second)
    assert_close(many.probs, torch.softmax(log_r, -1))


def test_svae_natural_target_uses_the_mean_field_statistics():
    gmm = GaussianMixture(3, 2)
    q = gmm.global_posterior(gmm.init_natural())
    post = gmm.mean_field_posterior(random_potential(5, 2), q, 30)
    target = gmm.global_posterior(gmm.natural_target(post, scale=2.0))
    r, mean = post.probs, post.loc[:, 0]
    Nk = 2.0 * r.sum(0)
    s1 = 2.0 * r.T @ mean
    prior = gmm.prior()
    kappa = prior.kappa + Nk
    assert_close(target.normal_wishart.kappa, kappa)
    assert_close(target.normal_wishart.loc, (prior.kappa[:, None] * prior.loc + s1) / kappa[:, None])
    assert_close(target.concentration, gmm.prior_concentration + Nk)


# ----- the data-driven start (GaussianMixture.natural_from_points, encoded_start) -------------


def _blobs(num_per_blob=50):
    centres = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    spreads = torch.tensor([0.5, 1.0, 0.25])
    points = centres.repeat_interleave(num_per_blob, 0) + torch.randn(3 * num_per_blob, 2) * spreads.repeat_interleave(
        num_per_blob
    )[:, None]
    return points, torch.arange(3).repeat_interleave(num_per_blob), centres, spreads


def test_components_start_on_the_clusters_with_their_spread():
    points, labels, _, spreads = _blobs(200)
    gmm = GaussianMixture(3, 2)
    natural = gmm.natural_from_points(points, torch.Generator().manual_seed(1))
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
    natural = gmm.natural_from_points(points, torch.Generator().manual_seed(6))
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
        natural = gmm.natural_from_points(points, torch.Generator().manual_seed(0), refine=refine)
        return gmm.point_estimate(gmm.global_posterior(natural)).locs

    def distance_to_truth(locs):
        return min((locs - truth).norm(dim=-1).max(), (locs.flip(0) - truth).norm(dim=-1).max())

    assert distance_to_truth(start_locs(0)) > 1.5  # k-means: a left and a right half
    assert distance_to_truth(start_locs(200)) < 1e-6
    with pytest.raises(ValueError, match="refine"):
        gmm.natural_from_points(points, refine=-1)


def test_components_from_points_refuse_other_dimensions_and_the_student_t_mixture_starts_as_built():
    from pyro_sin.pgm import StudentTMixture

    points = torch.randn(50, 2)
    with pytest.raises(ValueError, match="dimension 3"):
        GaussianMixture(3, 3).natural_from_points(points)
    # a Student-t mixture's components are point estimates trained by Adam: no conjugate components to
    # place, and its start from data is the hook's default, its own initial λ
    tmm = StudentTMixture(3, 2)
    assert not hasattr(tmm, "natural_from_points")
    encoder = lambda y: GaussianPotential(y, torch.ones_like(y))  # noqa: E731
    start = tmm.encoded_start(encoder, points)
    assert start.keys() == {"concentration"}
    assert torch.equal(start["concentration"], tmm.init_natural()["concentration"])


@pytest.mark.parametrize("latent_dim", [5, 3])
def test_the_start_is_the_classic_mixture_it_contains(latent_dim):
    """
    Probabilistic-PCA networks and the mixture fitted to their potentials by variational Bayes:
    SAN's importance-sampled log-likelihood at step 0 is the exact density of the mixture of
    probabilistic PCA components (a Gaussian mixture of the data when D = P), and λ is a fixed
    point of the full natural step.
    """
    from pyro_sin.initialization import encode
    from pyro_sin.models import DeepLatentMixture
    from pyro_sin.potential import GaussianPotential
    from pyro_sin.standardize import ppca_autoencoder

    g = torch.Generator().manual_seed(3)
    centres = 4 * torch.randn(3, 5, generator=g)
    y = centres[torch.randint(3, (240,), generator=g)] + torch.randn(240, 5, generator=g) * torch.rand(5, generator=g)
    y = y * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 2.0
    start = ppca_autoencoder(y, latent_dim)
    pgm = GaussianMixture(3, latent_dim, concentration=1.0, df=latent_dim + 2.0, scale_inv=torch.eye(latent_dim))
    raw = encode(start.encoder, y)
    potential = GaussianPotential(raw.info_vec.detach(), raw.precision.detach())
    points = start.encoder.standardization(y) @ start.directions.T
    natural, bound = pgm.fit_to_potentials(potential, points, torch.Generator().manual_seed(0), tol=1e-10)
    # a fixed point of variational Bayes: one more full natural step changes nothing
    again = pgm.natural_target(pgm.posterior(potential, pgm.tied_factor(pgm.global_posterior(natural))), 1.0)
    for key in natural:
        assert torch.allclose(again[key], natural[key], rtol=1e-4, atol=1e-6), key
    # the classic model: a mixture of N(m + s(ū + W μ_k), s (W Σ_k Wᵀ + σ² I) s)
    model = DeepLatentMixture(pgm, start.decoder, len(y))
    guide = model.make_guide(start.encoder, init_natural=natural)
    params = pgm.point_estimate(guide.global_posterior())
    st = start.encoder.standardization
    W = start.directions.T * (start.variances - start.noise).clamp(min=1e-3 * start.noise).sqrt()
    covariance = W @ torch.linalg.inv(params.precisions) @ W.T + start.noise * torch.eye(5)
    components = dist.MultivariateNormal(
        st.inverse(st(y).mean(0) + params.locs @ W.T), st.scale[:, None] * covariance * st.scale
    )
    exact = torch.logsumexp(params.weights.log() + components.log_prob(y[:, None, :]), -1)
    estimate = model.log_likelihood(guide, y, num_samples=200)
    assert abs(estimate.mean - float(exact.mean())) < 1e-3 + 3 * float(estimate.mc_stderr.mean()) / len(y) ** 0.5
    assert (estimate.per_point - exact).abs().max() < 0.05
