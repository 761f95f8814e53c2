"""
Cost per frame of a training step of the regime families against one EM iteration of
hmmlearn's GaussianHMM (full covariances) on the same frames, printed side by side::

    python benchmarks/regime_step_time.py [--steps 20] [--latent-dims 6] [--particles 1,4]
        [--sweeps 5] [--copies 1] [--threads 1]

The frames: the BasicMotions segmentation task's training sequences (``examples/
segmentation_benchmark.py``: one recording of each of 4 activities joined end to end, T = 400,
6 channels), ``--copies`` times over, all in one minibatch. A step is ``SVI.step`` with
:class:`~pyro_sin.SINELBO` and :class:`~pyro_sin.optim.NaturalAdam` on the sequence harness's
standardised networks (two tanh layers of 50), the tied factor and K = 4; the switching LDS
with ``--sweeps`` mean-field sweeps. hmmlearn's iteration is timed from its converged
parameters (``init_params=""``, no k-means), its whole ``fit`` divided by its iterations.
Every method's steps alternate with the others', so a shared machine's load falls on all alike;
the median over steps is reported.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.models import DeepLatentSequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the experiments are scripts there
from segmentation_benchmark import basic_motions_task
from sequence_harness import Config, _networks, make_hmm, make_slds


def deep_step(make_prior, frames: torch.Tensor, latent_dim: int, particles: int, sweeps: int):
    """A function running one training step of a latent regime model on every sequence of ``frames``."""
    config = Config(latent_dim=latent_dim, num_states=4, num_particles=particles, slds_sweeps=sweeps)
    encoder, decoder = _networks(config, frames)
    prior = make_prior(config, None)
    model = DeepLatentSequence(prior, decoder, len(frames))
    guide = model.make_guide(encoder, init_natural=prior.encoded_start(encoder, frames))
    svi = SVI(model, guide, NaturalAdam({"lr": config.lr}), SINELBO(num_particles=particles, max_plate_nesting=1))
    indices = torch.arange(len(frames))
    return lambda: svi.step(frames, indices=indices)


def hmmlearn_iteration(frames: torch.Tensor, iterations: int = 10):
    """A function running ``iterations`` EM iterations of hmmlearn's GaussianHMM from fitted parameters."""
    from hmmlearn.hmm import GaussianHMM

    X = frames.reshape(-1, frames.shape[-1]).double().numpy()
    lengths = [frames.shape[1]] * len(frames)
    fitted = GaussianHMM(4, "full", n_iter=100, random_state=0).fit(X, lengths)

    def run():
        model = GaussianHMM(4, "full", n_iter=iterations, tol=-np.inf, init_params="")
        model.startprob_, model.transmat_ = fitted.startprob_, fitted.transmat_
        model.means_, model.covars_ = fitted.means_, fitted.covars_
        model.fit(X, lengths)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latent-dims", default="6")
    parser.add_argument("--particles", default="1,4")
    parser.add_argument("--sweeps", type=int, default=5, help="the switching LDS's mean-field sweeps")
    parser.add_argument("--copies", type=int, default=1, help="the training sequences this many times over")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="hmm,slds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = basic_motions_task(0).train.repeat(args.copies, 1, 1)
    num_frames = frames.shape[0] * frames.shape[1]
    pyro.set_rng_seed(0)
    em_iterations = 10
    runs = {"hmmlearn EM iteration": hmmlearn_iteration(frames, em_iterations)}
    per_call = {"hmmlearn EM iteration": em_iterations}
    for D in map(int, args.latent_dims.split(",")):
        for particles in map(int, args.particles.split(",")):
            if "hmm" in args.methods.split(","):
                runs[f"latent HMM step, D = {D}, {particles} particle(s)"] = deep_step(
                    make_hmm, frames, D, particles, args.sweeps
                )
            if "slds" in args.methods.split(","):
                runs[f"SLDS step, D = {D}, {particles} particle(s), {args.sweeps} sweeps"] = deep_step(
                    make_slds, frames, D, particles, args.sweeps
                )
    for run in runs.values():  # warm-up
        run()
    seconds = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - start) / per_call.get(name, 1))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    reference = median["hmmlearn EM iteration"]
    print(
        f"{frames.shape[0]} sequences x {frames.shape[1]} frames x {frames.shape[2]} channels, K = 4, "
        f"{torch.get_num_threads()} thread(s), median of {args.steps} alternating repetitions"
    )
    print(f"{'':<48}{'ms':>9}{'us / frame':>12}{'x hmmlearn':>12}")
    for name, value in median.items():
        print(f"{name:<48}{1e3 * value:>9.1f}{1e6 * value / num_frames:>12.2f}{value / reference:>12.1f}")
    return median


if __name__ == "__main__":
    main()
