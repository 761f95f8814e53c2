import json

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits need scikit-learn (pip install 'pyro-sin[data]')")

from pyro_sin.metrics import normalized_mutual_info  # noqa: E402
from pyro_sin.training import DivergenceError  # noqa: E402

import digits  # noqa: E402


def test_quick_digits_run_learns_and_writes_its_outputs(tmp_path, capsys):
    medians, per_seed = digits.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(medians) == set(digits.METHODS)
    san = per_seed[0]["SAN-GMM"]
    # far above random assignments of the test images to 10 clusters (biased upwards at this size)
    labels = digits.load_data(digits.Config.quick()).test_labels
    generator = torch.Generator().manual_seed(0)
    chance = max(normalized_mutual_info(torch.randint(10, labels.shape, generator=generator), labels) for _ in range(5))
    assert san["nmi"] > chance + 0.3 and san["accuracy"] > 0.5 and san["clusters_used"] >= 8
    assert san["test_log_likelihood"] < 0 and san["reconstruction_error"] > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["data"] == "digits" and metrics["config"]["max_train"] == 300
    assert metrics["per_seed"]["0"]["PCA+BGMM"]["nmi"] == pytest.approx(per_seed[0]["PCA+BGMM"]["nmi"])
    for name in ("component_means.png", "component_samples.png", "embedding.png", "nmi.png", "metrics.md"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "| SAN-GMM |" in out and "median over 1 seed" in out


def test_a_diverging_method_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    run_baseline = digits.run_baseline

    def diverging_vae(name, *args, **kwargs):
        if name == "VAE+BGMM":
            raise DivergenceError("VAE (two-stage): the loss rose")
        return run_baseline(name, *args, **kwargs)

    monkeypatch.setattr(digits, "run_baseline", diverging_vae)
    argv = ["--quick", "--seeds", "2", "--methods", "k-means", "VAE+BGMM", "--out", str(tmp_path), "--no-progress"]
    with pytest.warns(RuntimeWarning, match="loss rose"):
        medians, per_seed = digits.main(argv)
    assert per_seed[1]["VAE+BGMM"] == {"diverged": 1} and medians["VAE+BGMM"] == {"diverged": 2}
    assert medians["k-means"]["nmi"] > 0.3 and "diverged" not in medians["k-means"]
    assert "| VAE+BGMM | — |" in (tmp_path / "metrics.md").read_text()


def test_binary_digits_use_a_bernoulli_decoder():
    config = digits.Config.quick(data="digits-binary")
    split = digits.load_data(config)
    assert set(split.train.unique().tolist()) == {0.0, 1.0}
    _, decoder = digits.build_networks(config, split.train)
    x = decoder.distribution(split.train.new_zeros(3, config.latent_dim))
    assert type(x.base_dist).__name__ == "Bernoulli"


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="data set"):
        digits.Config(data="cifar")
    with pytest.raises(ValueError, match="methods"):
        digits.Config(methods=("SAN-GMM", "DEC"))
