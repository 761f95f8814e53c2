import pytest
import torch

from pyro_sin.datasets import pinwheel

import paper
import pinwheel as pinwheel_experiment


def test_long_flag_trains_for_ten_thousand_iterations(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        paper, "fig2_curves", lambda results, name, split, names, setting, progress: seen.setdefault("s", setting)
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
    method = paper.make_method("GMM", setting)
    fresh, _ = method.build(split.train, seed=0)
    trained, _, _ = method.fit(split, seed=0, progress=False)

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
    encoder, decoder = pinwheel_experiment.build_networks(setting, split.train)
    first = decoder.decoder.body[0]  # inside the standardisation
    assert first.weight.std() > 0.3 and encoder.encoder.body[0].weight.std() < 0.05
    default_encoder, default_decoder = pinwheel_experiment.build_networks(paper.Setting(), split.train)
    assert default_decoder.decoder.body[0].weight.std() < 0.05


def test_pinwheel_deep_methods_start_from_one_lecun_scaled_decoder():
    split = pinwheel()
    setting = paper.SETTINGS["pinwheel"]
    decoders = {
        "VAE": paper.make_method("VAE", setting).build(split.train, 0)[0].vae.decoder,
        "SVAE": paper.make_method("SVAE", setting).build(split.train, 0)[0].model.decoder,
        "SAN": paper.make_method("SAN", setting).build(split.train, 0)[0].model.decoder,
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
