"""
Forecasting and imputation on real multichannel sensor recordings: *BasicMotions*
(:func:`~pyro_sin.datasets.basic_motions`: 6-channel accelerometer and gyroscope, 100 steps,
40 training and 40 test recordings of standing, walking, running and badminton),
standardised by the training split. The first 85 steps of each test recording are
observed and the last 15 forecast; frames 40..49 are hidden for imputation. Every method
runs in the same harness (:mod:`sequence_harness`), beside the linear
vector autoregressions VAR(1) and VAR(2) (least squares, exact Kalman-smoother
imputation) and the training mean::

    python examples/real_sequences.py --out results/real_sequences

Needs the extra ``[data]`` (the recordings ship with sktime). ``--quick`` (or ``CI``)
shrinks the run.

:func:`benchmark_tasks` holds the real sequences of the forecasting and imputation benchmark
(``sequence_benchmark.py``): BasicMotions and three public series that statsmodels ships (so no
network is needed), each standardised by its training part:

* ``basic_motions``: the 40 training recordings, and windows of the 40 test recordings;
* ``sunspots``: yearly sunspot numbers 1700–2008, one channel with an 11-year cycle and long memory
  (the AIC picks an AR(9));
* ``macro``: US quarterly growth (log differences) of real GDP, consumption and investment, 1959–2009,
  three channels;
* ``elnino``: monthly sea-surface temperature off Peru (El Niño), 1950–2010, one channel with an
  annual cycle.

A long series is split in time: its first two thirds train, and every window of its last third is a
test window. A window has ``CONTEXT`` observed frames and ``HORIZON`` to forecast; the frames
``GAP`` of the context are hidden for imputation.
"""

from dataclasses import replace
from typing import Dict

import torch

from pyro_sin.datasets import basic_motions

from sequence_harness import Config, DeepLatent, SequenceTask, experiment_main, make_lds, standard_methods


def methods(config: Config):
    """The standard methods and SAN-LDS with either factor."""
    return [
        DeepLatent("SAN-LDS (tied)", config, make_lds, factor="tied"),
        DeepLatent("SAN-LDS (free)", config, make_lds, factor="free"),
        *standard_methods(config),
    ]


METHODS = ("SAN-LDS (tied)", "SAN-LDS (free)", "latent HMM", "SLDS (SAN)", "unstructured guide")
METHODS += ("VAR(1)", "VAR(2)", "training mean")
CONFIG = Config(latent_dim=8, num_states=4, batch_size=10, max_iterations=1200, eval_every=300, seconds=1800.0)
CONFIG = replace(CONFIG, methods=METHODS)
QUICK = replace(CONFIG, max_iterations=30, eval_every=10, eval_samples=10)
HORIZON, GAP = 15, (40, 50)


def make_task(config: Config, quick: bool = False) -> SequenceTask:
    data = basic_motions()
    train, test = data.train, data.test
    if quick:
        train, test = train[:16], test[:8]
    return SequenceTask("basic_motions", train, test, test, HORIZON, GAP)


CONTEXT, BENCHMARK_HORIZON, BENCHMARK_GAP = 40, 8, (20, 25)
WINDOW = CONTEXT + BENCHMARK_HORIZON


def _windows(series: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Every window of ``WINDOW`` frames of a series ``(T, P)``, ``stride`` apart: ``(M, WINDOW, P)``."""
    return series.unfold(0, WINDOW, stride).transpose(1, 2).contiguous()


def _series_task(name: str, series: torch.Tensor) -> SequenceTask:
    """One long series ``(T, P)``: the first two thirds train (one sequence), the windows of the rest test."""
    cut = round(2 * len(series) / 3)
    loc, scale = series[:cut].mean(0), series[:cut].std(0)
    standardised = (series - loc) / scale
    windows = _windows(standardised[cut:])
    return SequenceTask(name, standardised[None, :cut], windows, windows, BENCHMARK_HORIZON, BENCHMARK_GAP)


def _statsmodels_series(name: str, dtype) -> torch.Tensor:
    import statsmodels.api as sm

    if name == "sunspots":
        values = sm.datasets.sunspots.load_pandas().data[["SUNACTIVITY"]].to_numpy()
        return torch.tensor(values, dtype=dtype)
    if name == "macro":
        values = sm.datasets.macrodata.load_pandas().data[["realgdp", "realcons", "realinv"]].to_numpy()
        return torch.tensor(values, dtype=dtype).log().diff(dim=0)
    if name == "elnino":
        monthly = sm.datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy()  # (years, 12)
        return torch.tensor(monthly, dtype=dtype).reshape(-1, 1)
    raise ValueError(f"unknown series {name!r}")


BENCHMARK_SETS = ("basic_motions", "sunspots", "macro", "elnino")


def benchmark_tasks(names=BENCHMARK_SETS, quick: bool = False, dtype=torch.float64) -> Dict[str, SequenceTask]:
    """
    The benchmark's tasks by name (see the module's docstring); ``quick`` keeps a few windows of each
    and a quarter of BasicMotions.
    """
    tasks = {}
    for name in names:
        if name == "basic_motions":
            data = basic_motions(dtype=dtype)
            offsets = range(0, data.test.shape[1] - WINDOW + 1, 26)  # 0, 26, 52: three windows per recording
            windows = torch.cat([data.test[:, o : o + WINDOW] for o in offsets])
            task = SequenceTask(name, data.train, windows, windows, BENCHMARK_HORIZON, BENCHMARK_GAP)
            if quick:
                task = task._replace(train=task.train[:12])
        else:
            task = _series_task(name, _statsmodels_series(name, dtype))
        if quick:
            task = task._replace(test=task.test[:6], targets=task.targets[:6])
        tasks[name] = task
    return tasks


def main(argv=None):
    return experiment_main(
        argv,
        __doc__,
        make_task,
        CONFIG,
        QUICK,
        "BasicMotions (real 6-channel sensor recordings)",
        channels=(0, 3),
        default_out="results/real_sequences",
        methods=methods,
    )


if __name__ == "__main__":
    main()
