r"""
Clustering baselines behind one small interface, for comparison with SAN on
the same splits:

- :class:`KMeansBaseline`: scikit-learn's k-means on the raw data;
- :class:`PCAGMM`: a Bayesian Gaussian mixture (:class:`~baselines.BayesianGMM`)
  on the data's first principal components;
- :class:`VAEGMM`: the two-stage model, a VAE (:class:`~baselines.VAE`)
  trained with an ``N(0, I)`` prior, then a Bayesian Gaussian mixture fitted to
  its latent means.

Each is fitted on training data (:meth:`~ClusteringBaseline.fit`), labels test
points (:meth:`~ClusteringBaseline.cluster`), and reports a test
log-likelihood and a reconstruction error where the method defines them
(``None`` otherwise). :meth:`~ClusteringBaseline.evaluate` gathers everything
with the clustering scores of :func:`~pyro_sin.metrics.clustering_scores`.
"""

import math
from typing import Optional

import torch

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin import evaluation
from pyro_sin.metrics import clustering_scores
from pyro_sin.pgm.mixture import BayesianGMM, bayesian_gmm
from pyro_sin.training import fit as fit_svi

from .vae import VAE


def _sklearn_cluster():
    try:
        import sklearn.cluster
    except ImportError as error:
        raise ImportError("k-means needs scikit-learn: pip install 'pyro-sin[data]'") from error
    return sklearn.cluster


def _kmeans(data: torch.Tensor, num_clusters: int, seed: int, n_init: int = 10):
    """scikit-learn's k-means (k-means++ seeding, the best of ``n_init`` runs by inertia)."""
    return _sklearn_cluster().KMeans(num_clusters, n_init=n_init, random_state=seed).fit(data.detach().cpu().numpy())


def _exact(per_point: torch.Tensor) -> evaluation.Estimate:
    """A per-point value computed without sampling: no Monte Carlo error."""
    n = per_point.numel()
    stderr = float(per_point.std() / math.sqrt(n)) if n > 1 else math.nan
    return evaluation.Estimate(float(per_point.mean()), stderr, per_point, torch.zeros_like(per_point))


def fit_bayesian_gmm(
    data: torch.Tensor,
    num_components: int,
    seed: int = 0,
    init: str = "kmeans",
    iterations: int = 500,
    locs: Optional[torch.Tensor] = None,
) -> BayesianGMM:
    r"""
    :func:`pyro_sin.pgm.mixture.bayesian_gmm` (scikit-learn's data-dependent prior,
    coordinate ascent) started from ``locs``, or from the centres of scikit-learn's
    k-means (``init="kmeans"``) or ``K`` random data points (``init="random"``).
    """
    if locs is None:
        if init == "kmeans":
            centres = _kmeans(data, num_components, seed).cluster_centers_
            locs = torch.as_tensor(centres, dtype=data.dtype, device=data.device)
        elif init == "random":
            generator = torch.Generator().manual_seed(seed)
            locs = data[torch.randperm(len(data), generator=generator)[:num_components].to(data.device)]
        else:
            raise ValueError(f"init must be 'kmeans' or 'random', got {init!r}")
    return bayesian_gmm(data, num_components, locs, iterations)


class ClusteringBaseline:
    """The interface every baseline here follows."""

    def fit(self, train: torch.Tensor):
        """Fits on the training data; returns ``self``."""
        raise NotImplementedError

    def cluster(self, y: torch.Tensor) -> torch.Tensor:
        """Cluster labels of ``y``, shape ``(N,)``."""
        raise NotImplementedError

    def log_likelihood(self, y: torch.Tensor, num_samples: int = 100) -> Optional[evaluation.Estimate]:
        """``log p(y_n)`` per point, or ``None`` where the method has no density."""
        return None

    def reconstruction_error(self, y: torch.Tensor, num_samples: int = 100) -> Optional[evaluation.Estimate]:
        """``‖y_n - ŷ_n‖²`` per point, or ``None`` where the method has no reconstruction."""
        return None

    @torch.no_grad()
    def evaluate(self, y: torch.Tensor, labels: torch.Tensor, num_samples: int = 100) -> dict:
        """
        Clustering scores against ``labels``, the number of clusters used, and
        the test log-likelihood and reconstruction error where defined: their
        means over points, standard errors over points (``_stderr``) and mean
        per-point Monte Carlo standard errors (``_mc_stderr``).
        """
        clusters = self.cluster(y)
        result = {**clustering_scores(clusters, labels), "clusters_used": int(clusters.unique().numel())}
        for name, estimate in (
            ("test_log_likelihood", self.log_likelihood(y, num_samples)),
            ("reconstruction_error", self.reconstruction_error(y, num_samples)),
        ):
            if estimate is not None:
                result[name], result[f"{name}_stderr"] = estimate.mean, estimate.stderr
                result[f"{name}_mc_stderr"] = float(estimate.mc_stderr.mean())  # typical Monte Carlo error per point
        return result


class KMeansBaseline(ClusteringBaseline):
    """
    k-means on the raw data (scikit-learn's ``KMeans``, ``pip install 'pyro-sin[data]'``).
    Its reconstruction of a point is the nearest centre; it has no density.

    :param int num_clusters: ``K``.
    :param int seed: seeds k-means++.
    :param int n_init: restarts, of which the one with the least inertia is kept.
    """

    def __init__(self, num_clusters: int, seed: int = 0, n_init: int = 10):
        self.num_clusters, self.seed, self.n_init = num_clusters, seed, n_init
        self.centers = None

    def fit(self, train):
        kmeans = _kmeans(train, self.num_clusters, self.seed, self.n_init)
        self.centers = torch.as_tensor(kmeans.cluster_centers_, dtype=train.dtype, device=train.device)
        return self

    def _distances(self, y):
        return torch.cdist(y, self.centers).pow(2)  # (N, K)

    def cluster(self, y):
        return self._distances(y).argmin(-1)

    def reconstruction_error(self, y, num_samples: int = 100):
        return _exact(self._distances(y).min(-1).values)


class PCAGMM(ClusteringBaseline):
    r"""
    A Bayesian Gaussian mixture on the first ``latent_dim`` principal components
    ``u = Vᵀ(y - ȳ)``. Its density on the data space adds isotropic Gaussian noise
    in the discarded directions, as probabilistic PCA does: with ``r = y - ȳ - V u``,

    .. math:: \log p(y) = \log p_{\rm GMM}(u) - \tfrac{P-D}2 \log(2\pi\sigma^2) - \frac{\lVert r\rVert^2}{2\sigma^2},

    ``σ²`` the mean training variance of the discarded directions (exact for the
    fitted parameters: the change of coordinates is orthonormal). Being a
    density, it is not comparable with the log-probabilities of a discrete
    (Bernoulli, Poisson) model. Its reconstruction of a point is the PCA
    projection ``ȳ + V u``.

    :param int num_components: ``K``.
    :param int latent_dim: ``D``, the number of principal components.
    :param int seed: seeds the mixture's initialisation.
    :param str init: ``"kmeans"`` or ``"random"`` (see :func:`fit_bayesian_gmm`).
    """

    def __init__(
        self, num_components: int, latent_dim: int, seed: int = 0, init: str = "kmeans", iterations: int = 500
    ):
        self.num_components, self.latent_dim = num_components, latent_dim
        self.seed, self.init, self.iterations = seed, init, iterations
        self.mean = self.basis = self.noise_variance = self.gmm = None

    def fit(self, train):
        N, P = train.shape
        D = self.latent_dim
        if not 0 < D <= min(N, P):
            raise ValueError(f"latent_dim must lie in [1, {min(N, P)}], got {D}")
        self.mean = train.mean(0)
        _, singular, vh = torch.linalg.svd(train - self.mean, full_matrices=False)
        self.basis = vh[:D].T  # (P, D)
        if D < P:
            discarded = singular[D:].pow(2).sum() / (N * (P - D))
            if not discarded > 0:
                raise ValueError(f"the data lie in a {D}-dimensional subspace: no variance is left outside it")
            self.noise_variance = discarded
        self.gmm = fit_bayesian_gmm(self.project(train), self.num_components, self.seed, self.init, self.iterations)
        return self

    def project(self, y):
        """The principal-component scores ``u``, shape ``(N, D)``."""
        return (y - self.mean) @ self.basis

    def reconstruct(self, y):
        return self.mean + self.project(y) @ self.basis.T

    def cluster(self, y):
        return self.gmm.cluster(self.project(y))

    def log_likelihood(self, y, num_samples: int = 100):
        result = self.gmm.log_density(self.project(y))
        if self.noise_variance is not None:
            residual = (y - self.reconstruct(y)).pow(2).sum(-1)
            dim = y.shape[-1] - self.latent_dim
            noise_variance = self.noise_variance
            result = result - 0.5 * dim * torch.log(2 * math.pi * noise_variance) - 0.5 * residual / noise_variance
        return _exact(result)

    def reconstruction_error(self, y, num_samples: int = 100):
        return _exact((y - self.reconstruct(y)).pow(2).sum(-1))


class VAEGMM(ClusteringBaseline):
    r"""
    The two-stage model: a VAE with an ``N(0, I)`` prior trained by
    ``Trace_ELBO`` and Adam, then a Bayesian Gaussian mixture (:func:`fit_bayesian_gmm`)
    on the latent means ``E_q[x | y]`` of the training data. Clusters are the
    mixture's on the latent means; the model's density,
    ``p(y) = ∫ p(y | x) p_GMM(x) dx``, is estimated by importance sampling with
    the encoder's ``q(x | y)`` as proposal.

    :param encoder: a :class:`~pyro_sin.nn.GaussianEncoder`.
    :param decoder: any decoder with ``distribution(x)``.
    :param int num_components: ``K``.
    :param int iterations: VAE training steps.
    :param int batch_size: minibatch size.
    :param float lr: Adam's learning rate.
    :param int num_particles: ELBO particles per step.
    :param int seed: seeds minibatches and the mixture's initialisation.
    :param str init: the mixture's initialisation, ``"kmeans"`` or ``"random"``.
    """

    def __init__(
        self,
        encoder,
        decoder,
        num_components: int,
        iterations: int = 2000,
        batch_size: int = 100,
        lr: float = 1e-2,
        num_particles: int = 1,
        seed: int = 0,
        init: str = "kmeans",
        progress: bool = False,
    ):
        self.encoder, self.decoder, self.num_components = encoder, decoder, num_components
        self.iterations, self.batch_size, self.lr, self.num_particles = iterations, batch_size, lr, num_particles
        self.seed, self.init, self.progress = seed, init, progress
        self.vae = self.gmm = self.history = None

    def fit(self, train):
        self.vae = VAE(self.encoder, self.decoder, len(train))
        elbo = Trace_ELBO(num_particles=self.num_particles, vectorize_particles=True, max_plate_nesting=1)
        # a parameter store of its own: the networks' names cannot clash with another model's
        with pyro.get_param_store().scope():
            svi = SVI(self.vae.model, self.vae.guide, pyro.optim.Adam({"lr": self.lr}), elbo)
            self.history = fit_svi(
                svi,
                train,
                iterations=self.iterations,
                batch_size=min(self.batch_size, len(train)),
                generator=torch.Generator().manual_seed(self.seed),
                progress=self.progress,
                desc="VAE (two-stage)",
            )
        with torch.no_grad():
            self.gmm = fit_bayesian_gmm(self.latent_means(train), self.num_components, self.seed, self.init)
        return self

    @torch.no_grad()
    def latent_means(self, y):
        return self.encoder(y).mean

    def cluster(self, y):
        return self.gmm.cluster(self.latent_means(y))

    def log_likelihood(self, y, num_samples: int = 100):
        return evaluation.log_likelihood(
            y, self.decoder.distribution, self.gmm.log_density, self.vae.posterior(y), num_samples
        )

    def reconstruction_error(self, y, num_samples: int = 100):
        return self.vae.reconstruction_error(y, num_samples)

    @torch.no_grad()
    def generate(self, num_samples: Optional[int] = None, component_ids=None) -> evaluation.Samples:
        """Samples of the two-stage model: ``x`` from the fitted mixture, decoded."""
        params = self.gmm.pgm.point_estimate(self.gmm.global_posterior())
        components = self.gmm.pgm.components(params)
        return evaluation.generate(self.decoder, params.weights, components, num_samples, component_ids)
