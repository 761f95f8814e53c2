import json

import bouncing_dot


def test_quick_bouncing_dot_run_compares_all_methods(tmp_path):
    rows = bouncing_dot.main(["--quick", "--out", str(tmp_path), "--no-progress", "--seconds", "4"])
    assert set(rows) == {"SAN-LDS", "unstructured guide", "two-stage VAE+LDS"}
    metrics = json.loads((tmp_path / "results.json").read_text())
    # the SAN curve starts from an untrained model and must improve within the budget
    start, end = metrics["curves"]["SAN-LDS"][1][0], metrics["curves"]["SAN-LDS"][1][-1]
    assert end < start
    for name in ("reconstruction_and_prediction.png", "imputation.png", "prediction_vs_time.png", "results.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_san_lds_predicts_better_than_the_unstructured_guide():
    """Equal iterations on a small training set: SAN's prediction error is at most half the baseline's."""
    config = bouncing_dot.Config.quick(seconds=float("inf"), max_iterations=300, eval_every=300)
    train, test = bouncing_dot.make_data(config)
    evaluator = bouncing_dot.Evaluator(config, test)
    _, san = bouncing_dot.train_san(config, train, evaluator, progress=False)
    _, unstructured = bouncing_dot.train_unstructured(config, train, evaluator, progress=False)
    assert san.evals[-1]["prediction_mse"] < 0.5 * unstructured.evals[-1]["prediction_mse"]
