import math

import pytest
import torch
from torch.testing import assert_close

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.datasets import bouncing_dot
from pyro_sin.metrics import normalized_mutual_info
from pyro_sin.nn import latent_scale, mirrored_autoencoder
from pyro_sin.pgm import LinearDynamicalSystem

from baselines import PCAGMM, VAE, VAEGMM, BayesianGMM, KMeansBaseline, TwoStageLDS


def test_two_stage_fits_the_dynamics_of_its_latent_means():
    """If the VAE's latent means follow x_t = A x_{t-1} + b exactly, the fit recovers (A, b)."""
    encoder, decoder = mirrored_autoencoder(2, 2, (4,))
    vae = VAE(encoder, decoder, 10)
    A, b = torch.tensor([[0.9, -0.2], [0.2, 0.9]]), torch.tensor([0.1, -0.3])
    x = [torch.randn(50, 2)]
    for _ in range(29):
        x.append(x[-1] @ A.T + b)
    x = torch.stack(x, 1)  # (50, 30, 2)
    # feed sequences whose encoder means are x: invert the (initially linear) encoder exactly
    with torch.no_grad():
        for module in encoder.body:
            if hasattr(module, "weight"):
                module.weight.zero_()
                module.bias.zero_()
        encoder.first.weight.zero_()
        encoder.first.bias.zero_()
        encoder.second.weight.zero_()
        W = encoder.shortcut.weight
        J = encoder(torch.zeros(1, 2)).precision[0]
    y = torch.linalg.solve(W, (x * J).reshape(-1, 2).T).T.reshape(50, 30, 2)
    lds = LinearDynamicalSystem(2, col_precision=1e-6 * torch.eye(3), scale_inv=1e-6 * torch.eye(2))
    fitted = TwoStageLDS(vae, lds).fit_dynamics(y)
    assert_close(fitted.transition[:, :2], A, atol=1e-4, rtol=0)
    assert_close(fitted.transition[:, 2], b, atol=1e-4, rtol=0)


def test_vae_baseline_learns():
    pyro.set_rng_seed(0)
    data = bouncing_dot(32, 10).frames.reshape(-1, 16)
    encoder, decoder = mirrored_autoencoder(16, 2, (20,))
    vae = VAE(encoder, decoder, len(data))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    before = vae.test_mse(data, 10)
    for _ in range(200):
        svi.step(data)
    assert vae.test_mse(data, 10) < 0.5 * before


def three_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    shape = torch.tensor([[1.0, 0.3], [0.0, 0.6]])
    return torch.cat([c + torch.randn(100, 2, generator=g) @ shape for c in centers]), centers


def test_bayesian_gmm_matches_scikit_learn():
    import numpy as np

    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    y, centers = three_clusters()
    prior = dict(concentration=0.5, loc=torch.zeros(2), kappa=0.5, scale_inv=2.5 * torch.eye(2), df=4.5)
    ours = BayesianGMM(3, 2, **prior).initialize(y, locs=centers + 0.5).fit(y, 500, tol=1e-12)
    theirs = sklearn_mixture.BayesianGaussianMixture(
        n_components=3,
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=0.5,
        mean_prior=np.zeros(2),
        mean_precision_prior=0.5,
        covariance_prior=2.5 * np.eye(2),
        degrees_of_freedom_prior=4.5,
        max_iter=2000,
        tol=1e-12,
        random_state=0,
    ).fit(y.numpy())
    q = ours.global_posterior().normal_wishart
    ours_order = torch.argsort(q.loc[:, 0] * 10 + q.loc[:, 1])
    theirs_order = np.argsort(theirs.means_[:, 0] * 10 + theirs.means_[:, 1])
    tol = dict(rtol=1e-5, atol=1e-6)
    concentration = ours.global_posterior().concentration
    assert_close(concentration[ours_order], torch.tensor(theirs.weight_concentration_[theirs_order]), **tol)
    assert_close(q.loc[ours_order], torch.tensor(theirs.means_[theirs_order]), **tol)
    assert_close(q.kappa[ours_order], torch.tensor(theirs.mean_precision_[theirs_order]), **tol)
    assert_close(q.df[ours_order], torch.tensor(theirs.degrees_of_freedom_[theirs_order]), **tol)
    # scikit-learn reports W⁻¹ / ν as "covariances_"
    covariances = q.scale_inv / q.df[:, None, None]
    assert_close(covariances[ours_order], torch.tensor(theirs.covariances_[theirs_order]), **tol)


def test_bayesian_gmm_imputation_is_the_conditional_mean():
    y, centers = three_clusters()
    gmm = BayesianGMM(3, 2).initialize(y, locs=centers).fit(y, 200)
    observed = torch.tensor([True, False])
    imputed = gmm.impute(y[:5], observed)
    weights, comps = gmm._components()
    # brute force: E[y₂ | y₁] by quadrature over y₂
    grid = torch.linspace(-10, 16, 4001)
    points = torch.stack([y[:5, :1].expand(5, len(grid)), grid.expand(5, len(grid))], -1)  # (5, G, 2)
    density = torch.logsumexp(weights.log() + comps.log_prob(points[..., None, :]), -1).exp()
    brute = (density * grid).sum(-1) / density.sum(-1)
    assert_close(imputed[:, 1], brute, rtol=0, atol=1e-4)
    assert_close(imputed[:, 0], y[:5, 0])


def blobs(seed, per_cluster=100, num_clusters=4, dim=8, separation=4.0):
    """Training and test points from the same well separated Gaussian blobs (unit noise), with labels."""
    g = torch.Generator().manual_seed(seed)
    centers = separation * torch.randn(num_clusters, dim, generator=g)

    def draw():
        labels = torch.randint(0, num_clusters, (num_clusters * per_cluster,), generator=g)
        return centers[labels] + torch.randn(len(labels), dim, generator=g), labels

    return draw() + draw()


def test_kmeans_baseline_clusters_blobs_as_scikit_learn_does():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    train, _, test, labels = blobs(0)
    method = KMeansBaseline(4, seed=0).fit(train)
    scores = method.evaluate(test, labels)
    assert scores["nmi"] > 0.9 and scores["clusters_used"] == 4 and "test_log_likelihood" not in scores
    theirs = sklearn_cluster.KMeans(4, n_init=10, random_state=0).fit(train.numpy())
    assert torch.equal(method.cluster(test), torch.as_tensor(theirs.predict(test.numpy())))
    assert_close(method.reconstruction_error(test).mean, -theirs.score(test.numpy()) / len(test))


def test_pca_gmm_density_is_the_full_space_mixture_it_implies():
    r"""The PCA-space mixture with isotropic noise off the subspace is the P-dimensional mixture
    ``N(ȳ + V m_k, V Σ_k Vᵀ + σ² (I - V Vᵀ))``: the decomposition against dense algebra."""
    train, *_ = blobs(2, dim=6)
    method = PCAGMM(4, 3, init="random").fit(train)
    params = method.gmm.pgm.point_estimate(method.gmm.global_posterior())
    V, P = method.basis, train.shape[-1]
    cov = V @ torch.linalg.inv(params.precisions) @ V.T + method.noise_variance * (torch.eye(P) - V @ V.T)
    full = dist.MultivariateNormal(method.mean + params.locs @ V.T, cov)
    exact = torch.logsumexp(params.weights.log() + full.log_prob(train[:, None, :]), -1)
    estimate = method.log_likelihood(train)
    assert_close(estimate.per_point, exact)
    assert (estimate.mc_stderr == 0).all()
    assert_close(method.reconstruction_error(train).per_point, (train - method.reconstruct(train)).pow(2).sum(-1))


def test_pca_gmm_clusters_blobs_like_scikit_learn():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.mixture import BayesianGaussianMixture

    train, _, test, labels = blobs(3)
    method = PCAGMM(4, 3, seed=0).fit(train)  # four clusters span three dimensions
    scores = method.evaluate(test, labels)
    assert scores["nmi"] > 0.9 and math.isfinite(scores["test_log_likelihood"])
    pca = PCA(3).fit(train.numpy())
    theirs = BayesianGaussianMixture(
        n_components=4, weight_concentration_prior_type="dirichlet_distribution", max_iter=500, random_state=0
    ).fit(pca.transform(train.numpy()))
    theirs_clusters = torch.as_tensor(theirs.predict(pca.transform(test.numpy())))
    agreement = normalized_mutual_info(method.cluster(test), theirs_clusters)
    assert agreement > 0.95, sklearn.__version__


def test_vae_then_gmm_clusters_blobs():
    pytest.importorskip("sklearn")
    pyro.set_rng_seed(0)
    train, _, test, labels = blobs(5, num_clusters=3, separation=6.0)
    encoder, decoder = mirrored_autoencoder(8, 2, (16,), scale=latent_scale(train))
    store_before = dict(pyro.get_param_store().items())
    method = VAEGMM(encoder, decoder, 3, iterations=300, lr=0.01).fit(train)
    assert dict(pyro.get_param_store().items()).keys() == store_before.keys()  # trained in a scope of its own
    assert method.history.losses[-1] < method.history.losses[0]
    scores = method.evaluate(test, labels, num_samples=20)
    assert scores["nmi"] > 0.9
    assert math.isfinite(scores["test_log_likelihood"]) and math.isfinite(scores["reconstruction_error"])
    samples = method.generate(component_ids=torch.tensor([0, 1, 2]))
    assert samples.mean.shape == (3, 8)


def test_bayesian_gmm_prior_follows_the_data_units():
    """Scaling the data scales the fit: the same clusters at any units."""
    pytest.importorskip("sklearn")
    train, *_ = blobs(7, dim=3)
    small = PCAGMM(4, 3).fit(train)
    large = PCAGMM(4, 3).fit(1e3 * train)
    assert torch.equal(small.cluster(train), large.cluster(1e3 * train))
    # log-densities differ by the Jacobian: -P log(1000)
    assert_close(large.log_likelihood(1e3 * train).per_point, small.log_likelihood(train).per_point - 3 * math.log(1e3))
