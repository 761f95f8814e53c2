"""The scikit-learn estimators: scikit-learn's own checks, any array-like in any units, and never below the start."""

import numpy as np
import pytest
import torch

from pyro_sin.sklearn import DeepGaussianMixture, DeepStudentTMixture

sklearn = pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

QUICK = dict(max_iter=20, eval_every=10, n_init=2, num_samples=4)


@parametrize_with_checks([DeepGaussianMixture(**QUICK), DeepStudentTMixture(**QUICK)])
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def _blobs(n=150, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 4.0, -1.0]])
    labels = rng.integers(3, size=n)
    return centres[labels] + rng.normal(size=(n, 3)) @ np.diag([1.0, 0.5, 0.3]), labels


def test_array_likes_of_any_float_dtype_give_the_same_model():
    pandas = pytest.importorskip("pandas")
    X, _ = _blobs()
    reference = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(X)
    from sklearn.metrics import adjusted_rand_score

    for data in (X.tolist(), pandas.DataFrame(X, columns=["a", "b", "c"]), X.astype(np.float32)):
        est = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(data)
        # the same clusters (rounding may change which k-means start wins, and so the labels' order)
        assert adjusted_rand_score(est.predict(data), reference.predict(X)) == 1.0
        np.testing.assert_allclose(est.score_samples(data), reference.score_samples(X), rtol=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        DeepGaussianMixture().fit(np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X))


@pytest.mark.parametrize("units", [1e-3, 1.0, 1e3])
def test_the_same_clusters_in_any_units(units):
    """Data in other units: the same clusters, and log-likelihoods shifted by the log-Jacobian."""
    X, _ = _blobs()
    offset = np.array([1e3, -5.0, 0.0])  # and shifted
    base = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(X)
    scaled = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(X * units + offset)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(scaled.predict(X * units + offset), base.predict(X)) == 1.0
    expected = base.score_samples(X) - X.shape[1] * np.log(units)
    np.testing.assert_allclose(scaled.score_samples(X * units + offset), expected, rtol=1e-6, atol=1e-6)


def test_the_start_is_the_classic_mixture_and_training_never_ends_below_it():
    """max_iter=0 is the classic Bayesian Gaussian mixture; trained, the held-out score is not lower."""
    X, labels = _blobs(300, seed=1)
    train, test = X[:200], X[200:]
    classic = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(train)
    # the classic start finds the three blobs
    from sklearn.metrics import normalized_mutual_info_score

    assert normalized_mutual_info_score(labels[200:], classic.predict(test)) > 0.9
    trained = DeepGaussianMixture(n_components=3, max_iter=300, eval_every=50, random_state=0).fit(train)
    assert trained.score(test) >= classic.score(test) - 0.05  # (importance-sampled, 32 draws per component)
    assert trained.n_iter_ > 0


def test_the_number_of_components_is_chosen_from_the_data():
    X, _ = _blobs(300)
    est = DeepGaussianMixture(max_iter=0, random_state=0).fit(X)
    assert est.n_components_ == 3 and est.weights_.shape == (3,)


def test_sample_draws_from_the_fitted_model():
    X, _ = _blobs(300)
    est = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(X)
    draws, labels = est.sample(3000)
    assert draws.shape == (3000, 3) and set(labels) <= {0, 1, 2}
    np.testing.assert_allclose(draws.mean(0), X.mean(0), atol=0.2)
    np.testing.assert_allclose(np.cov(draws.T), np.cov(X.T), atol=0.4)


def test_student_t_components_start_with_the_gaussian_start_covariances():
    X, _ = _blobs(200)
    est = DeepStudentTMixture(n_components=3, max_iter=0, random_state=0).fit(X)
    gauss = DeepGaussianMixture(n_components=3, max_iter=0, random_state=0).fit(X)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(est.predict(X), gauss.predict(X)) > 0.95  # the same clusters at the start
    assert est.n_components_ == gauss.n_components_ == 3


def test_bad_settings_are_refused_with_the_argument_named():
    X, _ = _blobs(50)
    for setting, match in [
        (dict(n_components=0), "n_components"),
        (dict(n_components=2.5), "n_components"),
        (dict(latent_dim=4), "latent_dim"),
        (dict(max_iter=-1), "max_iter"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(num_samples=0), "num_samples must be a positive integer, got 0"),
        (dict(num_particles=0), "num_particles must be a positive integer, got 0"),
        (dict(eval_every=0), "eval_every must be a positive integer, got 0"),
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(learning_rate=-1.0), "learning_rate must be positive, got -1.0"),
    ]:
        with pytest.raises(ValueError, match=match):
            DeepGaussianMixture(**setting).fit(X)
    assert torch.get_default_dtype() == torch.float64  # (the estimator changed no global default)
