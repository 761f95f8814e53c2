"""
Time of a training step with the drop-in guide (``SINGuide(model, encoder=...)``, the mixture
recognised from a model written with plain ``pyro.sample`` statements) against the same model
written around the family's own sample statements (``gmm.sample_params()``, ``gmm.sample_latent``),
printed side by side::

    python benchmarks/dropin_step_time.py [--steps 200] [--particles 1,10] [--batch 100]
        [--threads 1] [--no-validation] [--profile 0]

The model: the pinwheel's deep latent Gaussian mixture (``tutorials/bring_your_own_model.ipynb``:
K = 10, D = 2, ``classic_start``'s networks, two tanh layers of 50). A step is ``SVI.step`` with
:class:`~pyro_sin.SINELBO` and :class:`~pyro_sin.optim.NaturalAdam` on a minibatch; both routes
start from the same networks and ``λ`` and see the same minibatches. Their steps alternate, so a
shared machine's load falls on both alike; the median over steps is reported, and the median of
the per-pair ratios. ``--no-validation`` runs both routes with Pyro's distribution checks off
(``pyro.enable_validation(False)``), which shows how much of the difference the checks of the
distributions the model builds take. ``--profile N`` runs ``N`` drop-in steps under cProfile afterwards and prints
the functions with the most cumulative time.
"""

import argparse
import copy
import cProfile
import pstats
import statistics
import time
import warnings

import torch

import pyro
import pyro.distributions as dist
from pyro.infer import SVI
from pyro.ops.indexing import Vindex

from pyro_sin import SINELBO, NaturalAdam, SINGuide
from pyro_sin.datasets import pinwheel
from pyro_sin.pgm.mixture import classic_start


def plain_model(decoder, N, K, D):
    """The mixture written as Pyro's GMM tutorial writes it (the weak prior's hyperparameters)."""

    def model(y, indices):
        pyro.module("plain_decoder", decoder)
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
        with pyro.plate("components", K):
            precisions = pyro.sample("precisions", dist.Wishart(D + 2.0, covariance_matrix=torch.eye(D)))
            locs = pyro.sample("locs", dist.MultivariateNormal(torch.zeros(D), precision_matrix=0.5 * precisions))
        with pyro.plate("data", N, subsample=indices):
            z = pyro.sample("assignment", dist.Categorical(weights))
            loc, precision = Vindex(locs)[..., z, :], Vindex(precisions)[..., z, :, :]
            x = pyro.sample("x", dist.MultivariateNormal(loc, precision_matrix=precision))
            pyro.sample("y", decoder.distribution(x), obs=y)

    return model


def hand_written_model(gmm, decoder, N):
    """The same model around the family's own sample statements."""

    def model(y, indices):
        pyro.module("hand_decoder", decoder)
        params = gmm.sample_params()
        with pyro.plate("data", N, subsample=indices):
            x = gmm.sample_latent(params)
            pyro.sample("y", decoder.distribution(x), obs=y)

    return model


def steps(particles: int, batch: int):
    """``{route: a function running one training step on a given minibatch}``, the drop-in guide's first."""
    y = pinwheel(seed=0).train
    N, K, D = len(y), 10, 2
    start = classic_start(y, num_components=K, per_feature=False)
    plates = lambda y, indices: pyro.plate("data", N, subsample=indices)  # noqa: E731
    routes = {}
    model = plain_model(copy.deepcopy(start.decoder), N, K, D)
    guide = SINGuide(
        model, encoder=copy.deepcopy(start.encoder), init_natural=start.natural, create_plates=plates, name="dropin"
    )
    routes["drop-in"] = (model, guide)
    model = hand_written_model(start.prior, copy.deepcopy(start.decoder), N)
    guide = SINGuide(
        model, start.prior, copy.deepcopy(start.encoder), init_natural=start.natural, create_plates=plates, name="hand"
    )
    routes["hand-written"] = (model, guide)
    runs = {}
    for name, (model, guide) in routes.items():
        svi = SVI(model, guide, NaturalAdam({"lr": 1e-3}, natural_lr=0.1), SINELBO(num_particles=particles))
        runs[name] = lambda indices, svi=svi: svi.step(y[indices], indices)
    return runs, N


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--particles", default="1,10")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-validation", action="store_true", help="pyro.enable_validation(False)")
    parser.add_argument("--profile", type=int, default=0, help="drop-in steps to run under cProfile afterwards")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(not args.no_validation)
    warnings.filterwarnings("ignore", message="Singular sample detected")  # torch's Wishart.rsample
    pyro.set_rng_seed(0)
    print(
        f"pinwheel deep latent GMM, K = 10, D = 2, minibatch {args.batch}, {torch.get_num_threads()} thread(s), "
        f"median of {args.steps} alternating steps, validation {'off' if args.no_validation else 'on'}"
    )
    print(
        f"{'particles':>9}{'hand-written ms':>17}{'drop-in ms':>12}{'extra ms':>10}"
        f"{'drop-in / hand (median of pairs)':>34}"
    )
    results = {}
    for particles in map(int, args.particles.split(",")):
        pyro.clear_param_store()
        runs, N = steps(particles, args.batch)
        batches = [torch.randperm(N)[: args.batch] for _ in range(args.steps + 5)]
        for indices in batches[:5]:  # set-up (recognition, prototype trace) and warm-up
            for run in runs.values():
                run(indices)
        seconds = {name: [] for name in runs}
        for i, indices in enumerate(batches[5:]):
            order = list(runs) if i % 2 == 0 else list(runs)[::-1]  # neither route always runs first
            for name in order:
                start = time.perf_counter()
                runs[name](indices)
                seconds[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        ratio = statistics.median(d / h for d, h in zip(seconds["drop-in"], seconds["hand-written"]))
        results[particles] = (median, ratio)
        hand, dropin = 1e3 * median["hand-written"], 1e3 * median["drop-in"]
        print(f"{particles:>9}{hand:>17.2f}{dropin:>12.2f}{dropin - hand:>10.2f}{ratio:>34.3f}")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for indices in batches[: args.profile]:
                runs["drop-in"](indices)
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    return results


if __name__ == "__main__":
    main()
