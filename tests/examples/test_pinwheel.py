import json

import pinwheel


def test_quick_pinwheel_run_learns_and_writes_its_outputs(tmp_path, capsys):
    rows = pinwheel.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    metrics = json.loads((tmp_path / "results.json").read_text())
    san_curve = metrics["curves"]["SAN-GMM"][1]
    # the networks start as a near-identity autoencoder with components on the encoded data,
    # so the error starts moderate; a short run must still bring it down
    assert san_curve[-1] < san_curve[0]
    assert rows["SAN-GMM"]["purity"] > 0.6
    for name in ("generative_samples.png", "test_mse.png", "results.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| SAN-GMM |" in capsys.readouterr().out


def test_the_main_job_trains_san_in_two_processes(tmp_path):
    rows = pinwheel.main(["--quick", "--iterations", "20", "--nproc", "2", "--out", str(tmp_path), "--no-progress"])
    metrics = json.loads((tmp_path / "results.json").read_text())
    assert metrics["config"]["processes"] == 2 and set(rows) == {"SAN-GMM"}
    assert 0 <= rows["SAN-GMM"]["nmi"] <= 1 and (tmp_path / "generative_samples.png").stat().st_size > 0
