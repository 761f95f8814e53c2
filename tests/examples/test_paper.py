import json

import pytest
import torch

from pyro_sin.datasets import pinwheel

import paper


def run(tmp_path, *args):
    return paper.main([*args, "--quick", "--out", str(tmp_path), "--no-progress"])


def written(tmp_path, stem):
    """The figure, JSON and Markdown a command wrote; the JSON parsed."""
    assert (tmp_path / f"{stem}.png").stat().st_size > 0
    assert (tmp_path / f"{stem}.md").read_text().startswith("# ")
    return json.loads((tmp_path / f"{stem}.json").read_text())


def test_fig2a_quick(tmp_path):
    curves, finals, _ = run(tmp_path, "fig2a")
    result = written(tmp_path, "fig2a")
    assert result["config"]["iterations"] == paper.QUICK["iterations"] and result["config"]["device"] == "cpu"
    assert curves["SAN"][0][0] == 0 and curves["SAN"][1][-1] < curves["SAN"][1][0]
    # every seed's metrics and curve are kept, with the band drawn from them
    runs = result["per_seed"]["SAN"]["curves"]
    assert len(runs) == paper.QUICK["seeds"] and curves["SAN"][2] == [min(r) for r in zip(*runs)]
    # a mixture on the raw pinwheel regenerates points far worse than SAN reconstructs them
    assert finals["GMM"]["test_mse"] > 5 * finals["SAN"]["test_mse"]
    assert set(finals["SAN"]) >= {"test_log_likelihood_se", "imputation_mse", "coverage", "purity", "nmi"}
    # conditioning on the observed coordinate beats filling in zero
    assert finals["SAN"]["imputation_mse"] < result["metrics"]["zero-fill"]["imputation_mse"]
    assert set(result["log_likelihood_differences"]) == {"SAN - GMM", "SAN - VAE", "SAN - SVAE"}


def test_fig2b_quick_on_the_shipped_uci_file(tmp_path):
    curves, finals, _ = run(tmp_path, "fig2b")
    assert written(tmp_path, "fig2b")["config"]["latent_dim"] == 6
    assert finals["SAN"]["test_mse"] < finals["GMM"]["test_mse"]


def test_fig2c_quick_records_the_natural_steps_used(tmp_path):
    run(tmp_path, "fig2c", "--seeds", "3")
    result = written(tmp_path, "fig2c")
    natural_lr = result["config_by_ratio"]["0.3"]["natural_lr"]
    assert natural_lr == paper.noisy_natural_lr(0.3) != paper.SETTINGS["noisy"].natural_lr
    tmm = result["metrics"]["SAN-TMM @ 30%"]["test_mse"]
    gmm = result["metrics"]["SAN-GMM @ 30%"]["test_mse"]
    assert tmm < gmm  # the Student-t mixture shrugs off the outliers
    assert len(result["test_mse_per_seed_by_ratio"]["SAN-TMM"][0]) == 3


def test_fig3_quick(tmp_path):
    run(tmp_path, "fig3")
    result = written(tmp_path, "fig3")
    assert set(result["metrics"]) == {f"{m} on {d}" for m in ("GMM", "SAN", "VAE") for d in ("pinwheel", "Auto MPG")}
    assert all(0 <= row["coverage"] <= 1 for row in result["metrics"].values())
    assert set(result["config"]) == {"pinwheel", "auto"}


def test_long_flag_trains_for_ten_thousand_iterations(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        paper, "fig2_curves", lambda out, stem, name, split, names, setting, progress: seen.setdefault("s", setting)
    )
    paper.main(["fig2a", "--long", "--out", str(tmp_path)])
    assert seen["s"].iterations == paper.LONG_ITERATIONS
    assert paper.eval_steps(paper.LONG_ITERATIONS)[-3:] == [2000, 5000, 10000]


def test_gmm_test_mse_grows_as_its_components_widen_to_fit_the_data():
    """
    Not a bug: regenerating a point from its clusters errs by ‖y - m_k‖² + tr Σ_k on average, and
    training widens the components along the arms (tr Σ_k grows) while the likelihood improves.
    """
    split = pinwheel()
    setting = paper.Setting(iterations=300, seeds=1)
    fresh = paper.make_method("GMM", setting, split.train, seed=0)
    trained, _, _, _ = paper.train("GMM", setting, split, seed=0, progress=False)

    def parts(method):
        weights, components = method.gmm._components()
        r = method.gmm.log_responsibilities(split.test).exp()
        distance = (r * (split.test[:, None] - components.loc).pow(2).sum(-1)).sum(-1).mean()
        spread = (r * components.covariance_matrix.diagonal(dim1=-2, dim2=-1).sum(-1)).sum(-1).mean()  # E_r tr Σ_k
        return float(distance), float(spread)

    for method in (fresh, trained):
        distance, spread = parts(method)
        assert method.reconstruction_error(split.test, 400).mean == pytest.approx(distance + spread, rel=0.05)
    assert parts(trained)[1] > 5 * parts(fresh)[1]
    assert trained.log_likelihood(split.test, 1).mean > fresh.log_likelihood(split.test, 1).mean + 1.0


def test_methods_must_include_san(tmp_path):
    with pytest.raises(SystemExit):
        paper.main(["fig2a", "--methods", "GMM,VAE", "--out", str(tmp_path)])


def test_decoder_body_gain_reaches_the_decoder_only():
    split = pinwheel()
    setting = paper.Setting(decoder_body_gain=1.0)
    encoder, decoder = paper.build_networks(setting, split.train)
    first = decoder.decoder.body[0]  # inside the standardisation
    assert first.weight.std() > 0.3 and encoder.encoder.body[0].weight.std() < 0.05
    default_encoder, default_decoder = paper.build_networks(paper.Setting(), split.train)
    assert default_decoder.decoder.body[0].weight.std() < 0.05


def test_pinwheel_deep_methods_start_from_one_lecun_scaled_decoder():
    split = pinwheel()
    setting = paper.SETTINGS["pinwheel"]
    decoders = {
        "VAE": paper.make_method("VAE", setting, split.train, 0).vae.decoder,
        "SVAE": paper.make_method("SVAE", setting, split.train, 0).model.decoder,
        "SAN": paper.make_method("SAN", setting, split.train, 0).model.decoder,
    }
    reference = decoders["SAN"].state_dict()
    for name, decoder in decoders.items():
        # the same decoder for every method: the comparison is one of inference alone
        state = decoder.state_dict()
        assert state.keys() == reference.keys(), name
        assert all(torch.equal(state[k], reference[k]) for k in reference), name
    hidden = [m for m in decoders["SAN"].decoder.body if isinstance(m, torch.nn.Linear)]
    for layer in hidden:  # LeCun's scale, far above the heads' small weights
        assert layer.weight.std() > 0.5 * setting.decoder_body_gain / layer.in_features**0.5
    assert decoders["SAN"].decoder.first.weight.std() < 0.05


def test_decoder_body_gain_flag_takes_a_positive_number_or_none(tmp_path):
    assert paper._gain("none") is None and paper._gain("0.5") == 0.5
    for bad in ("0", "-1", "large"):
        with pytest.raises(SystemExit):
            paper.main(["fig2a", "--decoder-body-gain", bad, "--out", str(tmp_path)])
