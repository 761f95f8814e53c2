import json

import pinwheel


def test_the_main_job_trains_san_in_two_processes(tmp_path):
    rows = pinwheel.main(["--quick", "--iterations", "20", "--nproc", "2", "--out", str(tmp_path), "--no-progress"])
    metrics = json.loads((tmp_path / "results.json").read_text())
    assert metrics["config"]["processes"] == 2 and set(rows) == {"SAN-GMM"}
    assert 0 <= rows["SAN-GMM"]["nmi"] <= 1 and (tmp_path / "generative_samples.png").stat().st_size > 0
