"""
Which decoder estimator should SINELBO use by default? Gradient variance of the
network parameters times the time per gradient, for summing the decoder term
over all K components (``enumerate``) versus sampling one component per
particle with a leave-one-out score-function term (``sample``), both with 10
particles, at initialisation and after some training::

    python benchmarks/estimator_variance.py [--train 500] [--repeats 30]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import pyro

from pyro_sin.datasets import pinwheel
from pyro_sin.elbo import SINELBO

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the experiments are scripts there
from pinwheel import Config, train_san


def gradient_stats(model, guide, y, idx, estimator, repeats):
    elbo = SINELBO(num_particles=10, decoder_estimator=estimator, max_plate_nesting=1)
    params = [p for n, p in guide.named_parameters() if "natural" not in n] + list(model.decoder.parameters())
    grads, start = [], time.perf_counter()
    for _ in range(repeats):
        loss = elbo.differentiable_loss(model, guide, y, idx)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    seconds = (time.perf_counter() - start) / repeats
    grads = torch.stack(grads)
    return grads.var(0).sum().item(), grads.mean(0).norm().item(), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=500, help="training iterations before the second measurement")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = pinwheel()
    idx = torch.arange(100)
    y = split.train[idx]
    print(f"{'state':<16}{'estimator':<11}{'grad var':>12}{'|mean grad|':>13}{'ms/grad':>9}{'var x time':>12}")
    for label, iterations in (("initial", 1), (f"after {args.train}", args.train)):
        model, guide, _, _ = train_san(Config(iterations=iterations, eval_every=10**9), split, progress=False)
        for estimator in ("enumerate", "sample"):
            pyro.set_rng_seed(1)
            var, mean_norm, sec = gradient_stats(model, guide, y, idx, estimator, args.repeats)
            print(f"{label:<16}{estimator:<11}{var:>12.4g}{mean_norm:>13.4g}{1e3 * sec:>9.2f}{var * sec:>12.4g}")


if __name__ == "__main__":
    main()
