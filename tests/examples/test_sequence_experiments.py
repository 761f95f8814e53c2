import pytest
import torch

from pyro_sin.pgm.lds import LDSParams

import four_regime
import lds_benchmark
from sequence_harness import Evaluator, SequenceTask


def test_learned_log_likelihood_of_the_lds_benchmark_is_the_kalman_filter():
    """With the true system loaded into SAN-LDS's model, its exact likelihood is the benchmark's."""
    data = lds_benchmark.linear_gaussian_benchmark(4, 30, 2, 3, 1.0, 0.1, seed=1, system_seed=1)
    system = data.system
    model = lds_benchmark.DeepLatentSequence(
        lds_benchmark.LinearDynamicalSystem(
            2, init_precision=torch.linalg.inv(system.transition @ system.transition.T + system.dynamics_cov)
        ),
        lds_benchmark.LinearGaussianDecoder(2, data.frames),
        4,
    )
    with torch.no_grad():
        model.decoder.linear.weight.copy_(system.emission)
        model.decoder.linear.bias.copy_(system.emission_bias)
        model.decoder.log_variance.copy_(system.emission_cov.diagonal().log())
    params = LDSParams(torch.cat([system.transition, torch.zeros(2, 1)], -1), torch.linalg.inv(system.dynamics_cov))
    got = lds_benchmark.linear_gaussian_log_likelihood(model.pgm, model.decoder, params, data.frames)
    assert torch.allclose(got, system.distribution(30).log_prob(data.frames), atol=1e-8)


def test_evaluator_scores_a_perfect_oracle_at_zero():
    g = torch.Generator().manual_seed(0)
    test = torch.randn(3, 12, 2, generator=g)
    regimes = torch.randint(2, (3, 10), generator=g)
    task = SequenceTask("toy", test[:, :10], test, test, 2, (4, 6), regimes)

    class Oracle:
        def decode_posterior(self, y, mask=None, num_samples=None):
            return test[:, :10]

        def predict(self, y, horizon, num_samples=None):
            return test[:, 10:]

        def test_log_likelihood(self, y, num_samples=None):
            return 0.0

        def state_probs(self, y):
            return torch.nn.functional.one_hot(1 - regimes, 2).double()  # labels swapped: still a perfect segmentation

    row = Evaluator(task)(Oracle())
    assert row["forecast_mse_1..2"] == row["imputation_mse"] == row["reconstruction_mse"] == 0
    assert row["segmentation_nmi"] == pytest.approx(1) and row["segmentation_accuracy"] == 1


def test_a_method_that_diverges_goes_back_to_its_last_evaluation():
    import pyro

    from sequence_harness import Config, _fit

    class ExplodingSVI:
        """Moves one parameter by one every step; its loss becomes NaN at step 25."""

        def __init__(self):
            self.calls = 0

        def step(self, *args, **kwargs):
            self.calls += 1
            weight = pyro.param("weight", torch.zeros(()))
            with torch.no_grad():
                weight.add_(1.0)
            return float("nan") if self.calls == 25 else 1.0

    class ConstantEvaluator:
        def forecast_error(self, method):
            return 0.5

    pyro.clear_param_store()
    config = Config(max_iterations=100, eval_every=10, batch_size=2, seconds=60.0)
    with pytest.warns(RuntimeWarning, match="Back to the parameters of step 20"):
        history = _fit(config, ExplodingSVI(), torch.zeros(4, 3, 2), ConstantEvaluator(), None, "test", False)
    assert history.eval_steps == [0, 10, 20]
    assert history.evals[-1]["diverged_at"] == 25
    # the parameters of step 20, not those of the steps after it
    assert pyro.param("weight").item() == 20.0


def test_device_flag_refuses_cuda_without_a_device(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    for main in (four_regime.main, lds_benchmark.main):
        with pytest.raises(SystemExit):
            main(["--quick", "--out", str(tmp_path), "--no-progress", "--device", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err


def test_sequence_task_moves_every_tensor():
    task = four_regime.make_task(four_regime.QUICK, quick=True)
    moved = task.to(torch.device("meta"))  # another device on any machine
    assert moved.horizon == task.horizon and moved.gap == task.gap
    assert all(getattr(moved, k).device.type == "meta" for k in ("train", "test", "targets", "regimes"))
    assert moved.regimes.dtype == task.regimes.dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sequence_experiments_run_on_cuda(tmp_path):
    methods = ["SAN-LDS", "latent HMM", "SLDS (SAN)", "unstructured guide", "VAR(2)"]
    rows = four_regime.main(
        ["--quick", "--out", str(tmp_path / "four"), "--no-progress", "--device", "cuda", "--methods", *methods]
    )
    assert all(torch.isfinite(torch.tensor(rows[m]["forecast_mse_1..10"])) for m in methods)
    rows = lds_benchmark.main(["--quick", "--out", str(tmp_path / "lds"), "--no-progress", "--device", "cuda"])
    (row,) = rows.values()
    assert row["gap_curve"][1][-1] < row["gap_curve"][1][0]


def test_lds_benchmark_retries_a_diverged_setting_at_a_lower_rate(monkeypatch):
    from pyro_sin.training import DivergenceError

    tried = []

    def diverge_at_high_rates(config, setting, progress=True):
        tried.append(config.lr)
        if config.lr > 0.02:
            raise DivergenceError("the loss per data point rose at step 3")
        return {**setting, "gap": 0.01}

    monkeypatch.setattr(lds_benchmark, "run_setting", diverge_at_high_rates)
    config = lds_benchmark.Config(lr=0.03)
    with pytest.warns(RuntimeWarning, match="Trying again at lr 0.01"):
        row = lds_benchmark.run_setting_with_backoff(config, lds_benchmark.TARGET, attempts=2)
    assert tried == pytest.approx([0.03, 0.01]) and row["lr"] == pytest.approx(0.01) and row["gap"] == 0.01
    with pytest.warns(RuntimeWarning):
        row = lds_benchmark.run_setting_with_backoff(lds_benchmark.Config(lr=0.3), lds_benchmark.TARGET, attempts=2)
    assert row["diverged"] == 1.0 and row["lr"] == pytest.approx(0.1)
