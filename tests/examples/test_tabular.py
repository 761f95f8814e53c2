"""
The tabular benchmark's protocol (examples/tabular.py): the split and standardisation every
method sees, the SAN rows (the estimator with its defaults, or "not available"), the medians
and worst seeds, and SAN-GMM against the best classic method. Its short run is in
test_examples.py.
"""

import sys
import types

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the tabular benchmark needs scikit-learn (pip install 'pyro-sin[examples]')")

import tabular
from tabular_data import Table


def synthetic_table(sizes=(30, 20, 10), separation=4.0, constant=True, seed=0) -> Table:
    """Classes of unequal size in features of very different scales, the last one constant."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    data = rng.normal(size=(len(labels), 3)) + separation * labels[:, None]
    data[:, 1] *= 1e3
    if constant:
        data[:, 2] = 7.0  # standardising it must not divide by zero
    classes = tuple("abcdefgh"[: len(sizes)])
    return Table("synthetic", "this test", data, labels, classes, ("x", "y", "z"))


def test_split_is_stratified_seeded_and_standardised_on_the_training_split():
    table = synthetic_table()
    data = tabular.split(table, seed=3)
    # 30% of every class held out, the rest in training, no row in both
    for label, size in enumerate((30, 20, 10)):
        assert (data.labels[data.test_rows] == label).sum() == round(0.3 * size)
    assert len(data.train) + len(data.test) == len(table.data)
    assert not set(data.train_rows) & set(data.test_rows)
    # the training split's statistics, applied to every row
    np.testing.assert_allclose(data.train[:, :2].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(data.train[:, :2].std(0), 1)
    assert np.isfinite(data.every).all() and (data.every[:, 2] == 0).all()
    np.testing.assert_array_equal(data.every[data.train_rows], data.train)
    np.testing.assert_array_equal(data.every[data.test_rows], data.test)
    scale = table.data[data.train_rows, :2].std(0)
    np.testing.assert_allclose(data.every[:, :2], (table.data[:, :2] - table.data[data.train_rows, :2].mean(0)) / scale)
    assert data.log_scale == pytest.approx(np.log(scale).sum())
    # seeded: the same seed gives the same split, another seed another
    np.testing.assert_array_equal(tabular.split(table, seed=3).test_rows, data.test_rows)
    assert set(tabular.split(table, seed=4).test_rows) != set(data.test_rows)


def test_classic_methods_score_on_every_row_and_the_test_split():
    table = synthetic_table((60, 40, 30), separation=8.0, constant=False)
    data = tabular.split(table, seed=0)
    rows = {m.name: m.train(data, 0, progress=False).metrics for m in tabular.methods(tabular.CLASSIC)}
    for name, row in rows.items():
        assert 0 <= row["nmi"] <= 1 and -1 <= row["ari"] <= 1 and 0 < row["accuracy"] <= 1, name
        assert row["seconds"] > 0
    # well separated classes: every classic method finds them
    assert all(row["nmi"] > 0.9 for row in rows.values())
    assert "test_log_likelihood" not in rows["KMeans"]  # its score is an inertia, not a likelihood
    assert np.isfinite(rows["BGMM"]["test_log_likelihood"]) and np.isfinite(rows["BIC-GMM"]["test_log_likelihood"])
    assert 1 <= rows["BIC-GMM"]["components"] <= tabular.MAX_BIC_COMPONENTS


def test_bic_gaussian_mixture_chooses_the_least_bic():
    table = synthetic_table((60, 60, 60), separation=8.0, constant=False)
    X = tabular.split(table, 0).train
    fitted = tabular.BICGaussianMixture(6, random_state=0).fit(X)
    assert len(fitted.bic_) == 6 and fitted.n_components_ == 1 + int(np.argmin(fitted.bic_)) == 3


class _FakeMixture:
    """Stands in for pyro_sin.sklearn's estimators: records its settings, fits a Gaussian mixture."""

    built = []

    def __init__(self, n_components="auto", random_state=None, max_iter="auto"):
        from sklearn.mixture import GaussianMixture

        self.settings = dict(n_components=n_components, random_state=random_state, max_iter=max_iter)
        _FakeMixture.built.append(self.settings)
        k = 3 if n_components == "auto" else n_components
        self.mixture = GaussianMixture(k, random_state=random_state)

    def fit(self, X):
        self.mixture.fit(X)
        self.n_components_, self.n_iter_ = self.mixture.n_components, self.mixture.n_iter_
        return self

    def predict(self, X):
        return self.mixture.predict(X)

    def score(self, X):
        return self.mixture.score(X)


def test_san_rows_use_the_estimators_with_their_defaults(monkeypatch):
    fake = types.ModuleType("pyro_sin.sklearn")
    fake.DeepGaussianMixture = fake.DeepStudentTMixture = _FakeMixture
    monkeypatch.setitem(sys.modules, "pyro_sin.sklearn", fake)
    _FakeMixture.built.clear()
    data = tabular.split(synthetic_table((20, 20, 20, 20)), seed=2)
    rows = {m.name: m.train(data, 2, progress=False).metrics for m in tabular.methods(tabular.METHODS[:3])}
    # default settings but the seed; n_components the number of classes only where the row says so
    assert _FakeMixture.built == [
        dict(n_components="auto", random_state=2, max_iter="auto"),
        dict(n_components="auto", random_state=2, max_iter="auto"),
        dict(n_components=4, random_state=2, max_iter="auto"),
    ]
    for row in rows.values():
        assert {"nmi", "ari", "accuracy", "test_log_likelihood", "seconds", "components"} <= set(row)
    # the short run's settings reach every SAN estimator
    _FakeMixture.built.clear()
    tabular.methods(["SAN-TMM"], {"max_iter": 7})[0].train(data, 0, progress=False)
    assert _FakeMixture.built == [dict(n_components="auto", random_state=0, max_iter=7)]


def test_san_rows_read_not_available_until_the_estimator_exists(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyro_sin.sklearn", None)  # the import fails
    assert tabular.san_estimator("DeepGaussianMixture") is None
    data = tabular.split(synthetic_table(), seed=0)
    for method in tabular.methods(tabular.METHODS[:3]):
        assert method.train(data, 0, progress=False).metrics == {"status": "not available"}
    # a module without the class: not available either
    monkeypatch.setitem(sys.modules, "pyro_sin.sklearn", types.ModuleType("pyro_sin.sklearn"))
    assert tabular.san_estimator("DeepStudentTMixture") is None


def test_summary_gives_medians_and_the_worst_seed_of_every_metric():
    rows = [
        {"nmi": 0.5, "test_log_likelihood": -2.0, "seconds": 1.0, "clusters": 3},
        {"nmi": 0.7, "test_log_likelihood": -1.0, "seconds": 3.0, "clusters": 4},
        {"nmi": 0.6, "test_log_likelihood": -4.0, "seconds": 2.0, "clusters": 3},
        {"diverged": 1.0},
    ]
    summary = tabular.summarise(rows)
    assert summary["seeds"] == 3 and summary["diverged"] == 1
    assert summary["nmi"] == {"median": 0.6, "worst": 0.5, "max": 0.7}
    assert summary["test_log_likelihood"]["worst"] == -4.0
    assert summary["seconds"]["worst"] == 3.0  # the slowest fit
    assert summary["clusters"]["median"] == 3 and summary["clusters"]["max"] == 4
    assert tabular.summarise([{"status": "not available"}] * 2) == {"status": "not available"}


def _summary(nmi, log_likelihood=None):
    row = {"nmi": {"median": nmi, "worst": nmi, "max": nmi}}
    if log_likelihood is not None:
        row["test_log_likelihood"] = {"median": log_likelihood, "worst": log_likelihood, "max": log_likelihood}
    return row


def test_san_against_the_best_classic_method_and_the_targets():
    summary = {
        "SAN-GMM": _summary(0.70, -1.5),
        "KMeans": _summary(0.71),
        "BGMM": _summary(0.65, -1.4),
        "BIC-GMM": _summary(0.60, -1.0),
    }
    result = tabular.san_against_classic(summary)
    assert result["best_classic"] == "KMeans"
    assert result["nmi_difference"] == pytest.approx(-0.01) and result["nmi_target_met"]
    # against BGMM's likelihood (the target), not the best one
    assert result["log_likelihood_difference"] == pytest.approx(-0.1) and not result["log_likelihood_target_met"]
    summary["SAN-GMM"] = {"status": "not available"}
    result = tabular.san_against_classic(summary)
    assert result["status"] == "not available" and "nmi_difference" not in result
    assert "not available" in tabular.comparison_table({"t": result})
