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
"""

from dataclasses import replace

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
