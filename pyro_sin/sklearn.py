r"""
scikit-learn estimators for the deep latent mixtures: a SAN model fitted, scored and
sampled like :class:`sklearn.mixture.GaussianMixture`.

A deep latent mixture with a linear decoder and a latent space as wide as the data *is*
a Gaussian mixture, so the estimators start there and let the networks improve on it:

1. the data are standardised feature by feature, and a validation part is held out;
2. the networks start as probabilistic PCA of the rest
   (:func:`~pyro_sin.standardize.ppca_autoencoder`), their nonlinear parts at zero;
3. the mixture starts as the classic Bayesian Gaussian mixture the model contains, fitted by
   variational Bayes from the best of ten k-means partitions
   (:meth:`~pyro_sin.pgm.GaussianMixture.fit_to_potentials`), with the number of components
   chosen by its held-out log-likelihood;
4. SAN trains from there (:class:`~pyro_sin.SINGuide`, :class:`~pyro_sin.SINELBO`,
   :class:`~pyro_sin.optim.NaturalAdam`, :func:`~pyro_sin.training.fit`), and the parameters
   of the evaluation with the best held-out log-likelihood are kept, the start included: the
   fitted model is never below the classic one on held-out data. When the start wins, it is
   fitted again on all the data.

Needs scikit-learn (``pip install 'pyro-sin[examples]'``).
"""

import time
from typing import Dict, NamedTuple, Optional

import numpy as np
import torch

import pyro
from pyro.infer import SVI

try:
    from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("pyro_sin.sklearn needs scikit-learn: pip install 'pyro-sin[examples]'") from error

from .elbo import SINELBO
from .initialization import encode
from .metrics import log_mean_exp
from .optim import NaturalAdam
from .pgm import StudentTMixture
from .pgm.mixture import classic_start, weak_prior
from .pgm.mixture.model import DeepLatentMixture
from .potential import GaussianPotential
from .standardize import LinearStart
from .training import fit

__all__ = ["DeepGaussianMixture", "DeepStudentTMixture"]


class _Fitted(NamedTuple):
    """What prediction needs, held by the estimator itself (nothing in Pyro's param store)."""

    start: LinearStart  # the networks (trained) and their standardisation
    pgm: torch.nn.Module  # the latent mixture prior
    natural: Dict[str, torch.Tensor]  # λ of q(θ)
    free: Optional[tuple]  # a free SIN factor (e.g. a MixtureFactor of detached tensors), or None (tied)


class DeepGaussianMixture(ClusterMixin, DensityMixin, BaseEstimator):
    r"""
    A deep latent Gaussian mixture (SAN; Lin, Hubacher & Khan, 2018) as a scikit-learn
    estimator: ``z ~ Cat(π)``, ``x | z ~ N(μ_z, Λ_z⁻¹)``, ``y ~ N(f(x), diag σ²(x))`` with neural
    ``f`` and ``σ``, Dirichlet and Normal-Wishart priors on ``π, μ, Λ``; started at the classic
    Gaussian mixture it contains and never ending below it on held-out data (see
    :mod:`pyro_sin.sklearn`).

    Defaults decided from the data (each may be set): the latent dimension is the data's (at
    most 30); the number of components is the one in 1..10 whose classic start has the best
    held-out log-likelihood (fewer when there are too few points); training stops after
    ``patience`` evaluations without a better held-out log-likelihood, or ``max_iter`` steps
    (5,000 for ``"auto"``).

    :param n_components: ``K``, or ``"auto"``.
    :param latent_dim: ``D``, or ``"auto"``.
    :param hidden: hidden layer sizes of the encoder and the decoder.
    :param max_iter: the most training steps (``0``: the classic start alone), or ``"auto"``.
    :param float validation_fraction: the share of the data held out to choose ``K`` and the
        training step (no validation, and no training, below 20 points).
    :param int batch_size: minibatch size.
    :param float learning_rate: Adam's learning rate for the networks.
    :param float natural_lr: the natural-gradient step size of ``q(θ)``.
    :param int num_particles: samples of the local latents per point in training.
    :param int eval_every: steps between held-out evaluations.
    :param int patience: evaluations without improvement before training stops.
    :param int n_init: k-means partitions tried for the classic start.
    :param int num_samples: importance samples per component for log-likelihoods.
    :param random_state: seed or ``numpy.random.RandomState``.
    :param bool verbose: show a progress bar.

    Attributes after :meth:`fit`: ``components_`` (the mixture components that are the most
    probable for at least one training point: the clusters, in the order of their labels),
    ``n_components_`` (their number), ``weights_`` (their weights, renormalised), ``labels_``,
    ``latent_dim_``, ``n_iter_`` (training steps taken), ``fit_seconds_``, ``n_features_in_``.
    Components that no point chooses keep their sliver of weight in :meth:`score_samples` and
    :meth:`sample` (label ``-1``).
    """

    def __init__(
        self,
        n_components="auto",
        *,
        latent_dim="auto",
        hidden=(50, 50),
        max_iter="auto",
        validation_fraction=0.15,
        batch_size=100,
        learning_rate=1e-3,
        natural_lr=0.1,
        num_particles=4,
        eval_every=100,
        patience=10,
        n_init=10,
        num_samples=32,
        random_state=None,
        verbose=False,
    ):
        self.n_components = n_components
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.max_iter = max_iter
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.natural_lr = natural_lr
        self.num_particles = num_particles
        self.eval_every = eval_every
        self.patience = patience
        self.n_init = n_init
        self.num_samples = num_samples
        self.random_state = random_state
        self.verbose = verbose

    # ----- fitting ----------------------------------------------------------------

    def fit(self, X, y=None):
        """
        Fits the deep mixture to ``X``.

        :param X: array-like of shape ``(n_samples, n_features)`` (numpy, list, pandas).
        :returns: ``self``.
        """
        started = time.perf_counter()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        self._check_params(X)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        data = torch.tensor(X, dtype=torch.float64)  # a copy: the caller's array may be read-only
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        num_valid = int(round(self.validation_fraction * len(data))) if len(data) >= 20 else 0
        valid, train = data[order[:num_valid]], data[order[num_valid:]]
        latent_dim = self._latent_dim(train)
        with torch.random.fork_rng(devices=[]):  # the networks' initial weights, not the caller's random stream
            torch.manual_seed(seed)
            components = self._choose_components(train, valid, latent_dim, seed)
            self.n_iter_, trained = self._train(train, valid, latent_dim, components, seed)
            if trained is None:  # the start was as good on held-out data: fit it again on all of them
                trained = self._start(data, latent_dim, components, seed)
        self._fitted = trained
        self.latent_dim_ = latent_dim
        with torch.no_grad():
            # the clusters: the components most probable for at least one point, so that the labels
            # run 0 .. n_components_ - 1 with every label used (scikit-learn's clusterer contract)
            self.components_ = torch.unique(_posterior(trained, data).probs.argmax(-1)).numpy()
        weights = self._weights()[self.components_]
        self.weights_ = (weights / weights.sum()).numpy()
        self.n_components_ = len(self.components_)
        self.labels_ = self._cluster_probs(data).argmax(-1).numpy()
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _check_params(self, X):
        def setting(value, low, high=None):
            number = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            return value == "auto" or (number and low <= value <= (value if high is None else high))

        if not setting(self.n_components, 1):
            raise ValueError(f"n_components must be 'auto' or a positive integer, got {self.n_components!r}")
        if not setting(self.latent_dim, 1, X.shape[1]):
            raise ValueError(f"latent_dim must be 'auto' or an integer in [1, {X.shape[1]}], got {self.latent_dim!r}")
        if not setting(self.max_iter, 0):
            raise ValueError(f"max_iter must be 'auto' or a non-negative integer, got {self.max_iter!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        for name in ("num_samples", "num_particles", "eval_every", "batch_size"):
            if not setting(getattr(self, name), 1) or getattr(self, name) == "auto":
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not float(self.learning_rate) > 0:  # (a negative rate climbs the loss)
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r} (e.g. 1e-3)")

    def _latent_dim(self, train):
        # as wide as the data (the model then contains every Gaussian mixture of the data), up to 30
        return min(train.shape[1], 30) if self.latent_dim == "auto" else int(self.latent_dim)

    def _classic_start(self, data, latent_dim, components, seed) -> _Fitted:
        """
        Linear networks and the classic Gaussian mixture they contain
        (:func:`~pyro_sin.pgm.mixture.classic_start`).
        """
        prior = weak_prior(components, latent_dim).double()
        generator = torch.Generator().manual_seed(seed)
        start = classic_start(
            data, components, latent_dim, self.hidden, prior=prior, generator=generator, n_init=self.n_init
        )
        return _Fitted(start.networks, start.prior, start.natural, None)

    def _start(self, data, latent_dim, components, seed) -> _Fitted:
        """The model at its start: linear networks, the latent mixture from the classic fit."""
        return self._latent_mixture(self._classic_start(data, latent_dim, components, seed))

    def _choose_components(self, train, valid, latent_dim, seed) -> int:
        if self.n_components != "auto":
            return int(self.n_components)
        largest = max(1, min(10, len(train) // (2 * (latent_dim + 1))))
        best = None
        for K in range(1, largest + 1):
            classic = self._classic_start(train, latent_dim, K, seed)
            if len(valid):
                score = float(_classic_log_density(classic, valid).mean())
            else:  # the bound of variational Bayes, up to a constant that does not depend on K
                q = classic.pgm.global_posterior(classic.natural)
                posterior = _posterior(classic, train)
                score = float(posterior.log_normalizer.sum() - classic.pgm.kl(q))
            if best is None or score > best[0]:
                best = (score, K)
        return best[1]

    def _iterations(self, train):
        if self.max_iter != "auto":
            return int(self.max_iter)
        return 5000

    def _train(self, train, valid, latent_dim, components, seed):
        """
        SAN from the start; returns ``(steps, fitted)``, with ``fitted`` None unless the trained
        model's held-out log-likelihood beats the start's by more than twice the standard error
        of their paired difference (the start is then fitted again on all the data).
        """
        begin = self._start(train, latent_dim, components, seed)
        start, pgm = begin.start, begin.pgm
        model = DeepLatentMixture(pgm, start.decoder, len(train))
        factor = "tied" if begin.free is None else "free"
        guide = model.make_guide(start.encoder, factor=factor, init_natural=begin.natural)
        iterations = self._iterations(train)
        if iterations == 0 or not len(valid):
            return 0, None
        svi = SVI(
            model,
            guide,
            NaturalAdam({"lr": self.learning_rate}, natural_lr=self.natural_lr),
            SINELBO(num_particles=self.num_particles, max_plate_nesting=1),
        )
        heldout_points = lambda fitted: _log_likelihood(fitted, valid, self.num_samples, seed)  # noqa: E731
        at_start = heldout_points(begin)
        snapshot = lambda: self._snapshot(start, pgm, guide)  # noqa: E731
        store = pyro.get_param_store()
        before = set(store.keys())
        try:
            history = fit(
                svi,
                train,
                iterations=iterations,
                batch_size=min(self.batch_size, len(train)),
                generator=torch.Generator().manual_seed(seed),
                evaluate=lambda: {"heldout": float(heldout_points(snapshot()).mean())},
                eval_every=self.eval_every,
                select="heldout",
                patience=self.patience,
                progress=self.verbose,
                desc=type(self).__name__,
            )
            fitted = snapshot()
        finally:  # the estimator holds its parameters itself; the caller's stay in the store
            for name in set(store.keys()) - before:
                del store[name]
        gain = heldout_points(fitted) - at_start
        if history.selected_step == 0 or gain.mean() <= 2 * gain.std() / len(gain) ** 0.5:
            return len(history.losses), None
        return len(history.losses), fitted

    def _latent_mixture(self, classic: _Fitted) -> _Fitted:
        """The latent mixture SAN trains, started from the classic fit."""
        return classic

    @staticmethod
    def _snapshot(start, pgm, guide) -> _Fitted:
        natural = {k: v.detach().clone() for k, v in guide.natural_params().items()}
        free = None
        if guide.factor_mode == "free":
            with torch.no_grad():
                free = type(guide.factor())(*(value.detach().clone() for value in guide.factor()))
        return _Fitted(start, pgm, natural, free)

    # ----- prediction --------------------------------------------------------------

    def _data(self, X):
        check_is_fitted(self, "_fitted")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return torch.tensor(X, dtype=torch.float64)

    def _weights(self):
        fitted = self._fitted
        return fitted.pgm.point_estimate(fitted.pgm.global_posterior(fitted.natural)).weights.detach()

    @torch.no_grad()
    def predict_proba(self, X):
        """
        ``q(z = k | x)``, the SIN posterior of each point's cluster (renormalised over the clusters
        ``components_``), shape ``(n_samples, n_components_)``.
        """
        return self._cluster_probs(self._data(X)).numpy()

    @torch.no_grad()
    def _cluster_probs(self, data):
        probs = _posterior(self._fitted, data).probs[:, torch.as_tensor(self.components_)]
        return probs / probs.sum(-1, keepdim=True)

    def predict(self, X):
        """The most probable component of each point."""
        return self.predict_proba(X).argmax(-1)

    @torch.no_grad()
    def score_samples(self, X):
        r"""
        ``log p(x)`` of each point under the fitted model, in the data's units, by importance
        sampling with the SIN posterior as proposal (``num_samples`` per component, the same
        standard normal draws for every point, so that each point's value is a deterministic
        function of that point).
        """
        data = self._data(X)
        return _log_likelihood(self._fitted, data, self.num_samples, 0).numpy()

    def score(self, X, y=None):
        """The mean log-likelihood per point of ``X`` (see :meth:`score_samples`)."""
        return float(self.score_samples(X).mean())

    @torch.no_grad()
    def sample(self, n_samples=1):
        """
        ``n_samples`` draws from the fitted generative model.

        :returns: ``(X, labels)``: the draws, shape ``(n_samples, n_features)``, and the cluster of
            each (``-1`` for a draw from a component that no training point chose).
        """
        check_is_fitted(self, "_fitted")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        fitted = self._fitted
        params = fitted.pgm.point_estimate(fitted.pgm.global_posterior(fitted.natural))
        labels = torch.distributions.Categorical(params.weights).sample((n_samples,))
        x = fitted.pgm.components(params).sample((n_samples,))[torch.arange(n_samples), labels]
        draws = fitted.start.decoder.distribution(x).sample()
        label_of = torch.full((len(params.weights),), -1, dtype=torch.long)
        label_of[torch.as_tensor(self.components_)] = torch.arange(self.n_components_)
        return draws.numpy(), label_of[labels].numpy()


class DeepStudentTMixture(DeepGaussianMixture):
    r"""
    :class:`DeepGaussianMixture` with Student-t components, ``x | z ~ St(μ_z, Σ_z, ν = 5)``, whose
    heavy tails absorb outliers: the components start at the classic Gaussian start's (same
    means and covariances) and are trained by Adam, the weights by natural gradients, and the
    SIN factor is free. Held-out selection compares against that start.
    """


    def _latent_mixture(self, classic: _Fitted):
        gaussian = classic.pgm
        q = gaussian.global_posterior(classic.natural)
        params = gaussian.point_estimate(q)
        K, D = gaussian.num_components, gaussian.latent_dim
        df = 5.0
        pgm = StudentTMixture(K, D, df=df, concentration=1.0).double()
        covariance = torch.linalg.inv(params.precisions) * (df - 2) / df  # the same covariance as the Gaussians
        pgm.locs = params.locs.clone()
        pgm.scale_tril = torch.linalg.cholesky(covariance)
        natural = {"concentration": q.concentration.clone()}
        with torch.no_grad():
            free = pgm.free_factor({key: value for key, (value, _) in pgm.init_free_factor(natural).items()})
        return _Fitted(classic.start, pgm, natural, free)


# ----- the fitted model's computations ------------------------------------------------------


def _detached(potential: GaussianPotential) -> GaussianPotential:
    return GaussianPotential(potential.info_vec.detach(), potential.precision.detach(), potential.lengths)


def _factor(fitted: _Fitted):
    if fitted.free is not None:
        return fitted.free
    return fitted.pgm.tied_factor(fitted.pgm.global_posterior(fitted.natural))


def _posterior(fitted: _Fitted, data):
    return fitted.pgm.posterior(_detached(encode(fitted.start.encoder, data)), _factor(fitted))


def _log_likelihood(fitted: _Fitted, data, num_samples: int, seed: int, chunk: int = 256) -> torch.Tensor:
    r"""
    ``log p(y_n)`` by importance sampling, stratified over the SIN posterior's components:
    ``p̂(y_n) = Σ_k r_nk (1/S) Σ_s p(y_n, x_s) / q(x_s | y_n)``, ``x_s ~ q(x | y_n, z = k)``, with the
    same standard normal draws for every point and component.
    """
    with torch.no_grad():
        pgm = fitted.pgm
        params = pgm.point_estimate(pgm.global_posterior(fitted.natural))
        D = pgm.latent_dim
        noise = torch.randn(num_samples, D, generator=torch.Generator().manual_seed(seed), dtype=data.dtype)
        values = []
        for rows in data.split(chunk):
            post = _posterior(fitted, rows)
            x = post.loc + (post.scale_tril @ noise[:, None, None, :, None])[..., 0]  # (S, N, K, D)
            log_joint = fitted.start.decoder.distribution(x).log_prob(rows[:, None, :]) + pgm.latent_log_prob(params, x)
            each = torch.distributions.MultivariateNormal(post.loc[:, None], scale_tril=post.scale_tril[:, None])
            log_proposal = torch.logsumexp(post.log_probs[:, None] + each.log_prob(x[..., None, :]), -1)  # (S, N, K)
            log_weights = log_joint - log_proposal
            values.append(torch.logsumexp(post.log_probs + log_mean_exp(log_weights, 0), -1))
        return torch.cat(values)


def _classic_log_density(fitted: _Fitted, data) -> torch.Tensor:
    r"""
    The exact ``log p(y)`` of a model at its linear start: a mixture of probabilistic PCA
    components ``N(m + s(ū + W μ_k), s (W Σ_k Wᵀ + σ² I) s)`` in the data's units.
    """
    with torch.no_grad():
        start, pgm = fitted.start, fitted.pgm
        params = pgm.point_estimate(pgm.global_posterior(fitted.natural))
        decoder = start.decoder.decoder
        W = decoder.shortcut.weight  # (P, D)
        standardization = start.decoder.standardization
        noise = decoder(torch.zeros_like(params.locs[:1]))[1][0].pow(2)  # (P,) σ² (input-independent at the start)
        latent_covariance = torch.cholesky_inverse(torch.linalg.cholesky(params.precisions))  # (K, D, D)
        covariance = W @ latent_covariance @ W.T + torch.diag_embed(noise)
        scale = standardization.scale
        loc = standardization.inverse(params.locs @ W.T + decoder.first.bias)
        components = torch.distributions.MultivariateNormal(loc, scale[:, None] * covariance * scale)
        return torch.logsumexp(params.weights.log() + components.log_prob(data[:, None, :]), -1)

