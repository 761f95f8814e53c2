"""
Time per ``SVI.step`` of SAN-GMM beside a plain Pyro VAE with the same networks,
particles and minibatch, at two sizes, printed side by side with their ratio
and the peak memory of a step::

    python benchmarks/step_time.py [--device cpu|cuda] [--threads 1] [--steps 200]
        [--sizes pinwheel,mnist] [--batches 100,1000]

* ``pinwheel``: 2-d data, two tanh layers of 50, K = 10, D = 2, 10 particles (the
  paper's pinwheel setting), batch 100.
* ``mnist``: 784-d data, two layers of 500, K = 10, D = 10, 1 particle, at each of
  ``--batches`` (random data of MNIST's shape: the timing does not depend on it).

SAN and VAE steps alternate, so both see the same machine load, and the median
over steps is reported. SAN's decoder estimator is the default ("sample").
"""

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import pyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the experiments are scripts there
from pinwheel import Config, build_san, build_vae

SIZES = {
    "pinwheel": dict(data_dim=2, config=dict(hidden=50, latent_dim=2, num_particles=10), batches=(100,)),
    "mnist": dict(data_dim=784, config=dict(hidden=500, latent_dim=10, num_particles=1), batches=None),
}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device, reset=False):
    if torch.device(device).type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS


def compare(size, batch, device, steps, warmup=20):
    """``(SAN seconds, VAE seconds, SAN peak MB, VAE peak MB)`` per step, medians of alternating steps."""
    spec = SIZES[size]
    num_data = max(batch, 1000)
    train = torch.randn(num_data, spec["data_dim"], device=device)
    config = Config(batch_size=batch, **spec["config"])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    _, _, san = build_san(config, train)
    _, vae = build_vae(config, train)
    idx = torch.arange(batch, device=device)
    y = train[idx]
    times = {"san": [], "vae": []}
    peaks = {}
    for step in range(warmup + steps):
        for name, svi in (("san", san), ("vae", vae)):
            if step == warmup:
                _peak_mb(device, reset=True)
            _sync(device)
            start = time.perf_counter()
            svi.step(y, idx)
            _sync(device)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
            if step == warmup:
                peaks[name] = _peak_mb(device)
    return statistics.median(times["san"]), statistics.median(times["vae"]), peaks["san"], peaks["vae"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sizes", default="pinwheel,mnist")
    parser.add_argument("--batches", default="100,1000", help="minibatch sizes of the mnist size")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        batches = SIZES[size]["batches"] or tuple(int(b) for b in args.batches.split(","))
        for batch in batches:
            rows.append((size, batch) + compare(size, batch, args.device, args.steps))
    memory = "peak CUDA MB" if torch.device(args.device).type == "cuda" else "peak RSS MB (process)"
    print(f"SVI.step on {args.device} ({torch.get_num_threads()} threads), median of {args.steps} alternating steps")
    print(f"{'size':<10}{'batch':>7}{'SAN ms':>10}{'VAE ms':>10}{'SAN/VAE':>9}   {memory}: SAN, VAE")
    for size, batch, san, vae, san_mb, vae_mb in rows:
        print(f"{size:<10}{batch:>7}{1e3 * san:>10.2f}{1e3 * vae:>10.2f}{san / vae:>9.2f}   {san_mb:.0f}, {vae_mb:.0f}")
    return rows


if __name__ == "__main__":
    main()
