"""
Time per ``SVI.step`` of SAN-GMM and of a plain Pyro VAE with the same networks,
the same number of particles and the same minibatch, printed side by side::

    python benchmarks/step_time.py [--steps 300] [--device cpu|cuda]
"""

import argparse
import time

import torch

import pyro

from pyro_sin.datasets import pinwheel
from pyro_sin.experiments.pinwheel import Config, build_san, build_vae


def seconds_per_step(svi, y, idx, steps, warmup=30):
    for _ in range(warmup):
        svi.step(y, idx)
    if y.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(y, idx)
    if y.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = pinwheel()
    train = split.train.to(args.device)
    idx = torch.arange(100, device=args.device)
    y = train[idx]
    rows = []
    for name, estimator in (("SAN-GMM (sample z)", "sample"), ("SAN-GMM (enumerate z)", "enumerate")):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        _, _, svi = build_san(Config(decoder_estimator=estimator), train)
        rows.append((name, seconds_per_step(svi, y, idx, args.steps)))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    _, svi = build_vae(Config(), train)
    vae = seconds_per_step(svi, y, idx, args.steps)
    rows.append(("VAE (Trace_ELBO)", vae))
    print(f"SVI.step on {args.device}, batch 100, 10 particles, 2x50 tanh nets, K = 10, D = 2")
    print(f"{'method':<24}{'ms/step':>10}{'x VAE':>8}")
    for name, sec in rows:
        print(f"{name:<24}{1e3 * sec:>10.2f}{sec / vae:>8.2f}")
    return rows


if __name__ == "__main__":
    main()
