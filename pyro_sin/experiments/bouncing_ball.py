"""
Regime segmentation, forecasting and imputation on the 1-D bouncing ball
(:func:`~pyro_sin.datasets.bouncing_ball`: a ball between walls at 0 and 10, observed with
noise 0.1; the regime is the direction of motion), every method in the same harness
(:mod:`pyro_sin.experiments.sequence_harness`)::

    python -m pyro_sin.experiments.bouncing_ball --out results/bouncing_ball

Segmentation scores compare ``argmax_k q(z_t = k)`` with the true direction; forecasts
(10 steps) and imputation (10 hidden frames) are scored against the noise-free positions.
``--quick`` (or ``CI``) shrinks the run.
"""

from dataclasses import replace

from ..datasets import bouncing_ball
from .sequence_harness import Config, SequenceTask, experiment_main

CONFIG = Config(latent_dim=2, num_states=2, seconds=90.0)
QUICK = replace(CONFIG, seconds=60.0, max_iterations=30, eval_every=10, eval_samples=10)
NUM_STEPS, HORIZON = 100, 10


def make_task(config: Config, quick: bool = False) -> SequenceTask:
    num_train, num_test = (32, 16) if quick else (200, 100)
    steps = 50 if quick else NUM_STEPS
    train = bouncing_ball(num_train, steps, seed=config.seed)
    test = bouncing_ball(num_test, steps + HORIZON, seed=config.seed + 1000)
    gap = (steps // 2 - 5, steps // 2 + 5)
    return SequenceTask("bouncing_ball", train.frames, test.frames, test.clean, HORIZON, gap, test.regimes[:, :steps])


def main(argv=None):
    return experiment_main(
        argv, __doc__, make_task, CONFIG, QUICK, "1-D bouncing ball", channels=(0,), default_out="results/bouncing_ball"
    )


if __name__ == "__main__":
    main()
