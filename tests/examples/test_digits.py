import pytest

pytest.importorskip("sklearn", reason="the digits need scikit-learn (pip install 'pyro-sin[data]')")

from pyro_sin.training import DivergenceError  # noqa: E402

import digits  # noqa: E402


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
    assert "| VAE+BGMM | — |" in (tmp_path / "results.md").read_text()


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
