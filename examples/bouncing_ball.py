"""
Regime segmentation, forecasting and imputation on the 1-D bouncing ball
(:func:`~pyro_sin.datasets.bouncing_ball`: a ball between walls at 0 and 10, observed with
noise 0.1; the regime is the direction of motion), every method in the same harness
(:mod:`sequence_harness`)::

    python examples/bouncing_ball.py --out results/bouncing_ball

Segmentation scores compare ``argmax_k q(z_t = k)`` with the true direction; forecasts
(10 steps) and imputation (10 hidden frames) are scored against the noise-free positions.
``--quick`` (or ``CI``) shrinks the run.
"""

from dataclasses import replace

from pyro_sin.datasets import bouncing_ball

from sequence_harness import (
    Config,
    DeepLatent,
    SequenceTask,
    experiment_main,
    hmm_natural_from_encoded,
    make_hmm,
    standard_methods,
)


def methods(config: Config):
    """The standard methods and, since one frame holds the position only (a per-frame encoder cannot
    see the direction, the regime), the latent HMM with a bidirectional GRU encoder, which can."""
    gru = DeepLatent(
        "latent HMM (GRU encoder)", config, make_hmm, "hmm_factor", hmm_natural_from_encoded, encoder="rnn"
    )
    return [*standard_methods(config), gru]


CONFIG = Config(latent_dim=2, num_states=2, max_iterations=500)
CONFIG = replace(CONFIG, methods=("SAN-LDS", "latent HMM", "latent HMM (GRU encoder)", *CONFIG.methods[2:]))
QUICK = replace(CONFIG, max_iterations=30, eval_every=10, eval_samples=10)
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
        argv,
        __doc__,
        make_task,
        CONFIG,
        QUICK,
        "1-D bouncing ball",
        channels=(0,),
        default_out="results/bouncing_ball",
        methods=methods,
    )


if __name__ == "__main__":
    main()
