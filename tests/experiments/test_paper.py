import json

from pyro_sin.experiments import paper


def run(tmp_path, *args):
    return paper.main([*args, "--quick", "--out", str(tmp_path), "--no-progress"])


def test_fig2a_quick(tmp_path):
    curves, finals, _ = run(tmp_path, "fig2a")
    assert (tmp_path / "fig2a.png").stat().st_size > 0
    assert curves["SAN"][1][-1] < 0.75 * curves["SAN"][1][0]
    # a mixture on the raw pinwheel regenerates points far worse than SAN reconstructs them
    assert finals["GMM"]["test_mse"] > 5 * finals["SAN"]["test_mse"]
    assert set(finals["SAN"]) >= {"test_log_likelihood", "imputation_mse", "purity", "nmi"}


def test_fig2b_quick_on_the_shipped_uci_file(tmp_path):
    curves, finals, _ = run(tmp_path, "fig2b")
    assert json.loads((tmp_path / "fig2b.json").read_text())["config"]["latent_dim"] == 6
    assert finals["SAN"]["test_mse"] < finals["GMM"]["test_mse"]


def test_fig2c_quick_student_t_beats_gaussian_mixture_on_every_seed(tmp_path):
    run(tmp_path, "fig2c", "--seeds", "3")
    metrics = json.loads((tmp_path / "fig2c.json").read_text())["metrics"]
    tmm, gmm = metrics["SAN-TMM @ 30%"]["test_mse_per_seed"], metrics["SAN-GMM @ 30%"]["test_mse_per_seed"]
    assert all(t < g for t, g in zip(tmm, gmm))


def test_fig3_quick(tmp_path):
    run(tmp_path, "fig3")
    assert (tmp_path / "fig3.png").stat().st_size > 0
