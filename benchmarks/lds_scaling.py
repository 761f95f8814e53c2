"""
Time per ``SVI.step`` of SAN-LDS as a function of the sequence length T at a
fixed batch (8 sequences, D = 2, 16-pixel frames, 4 particles), with Kalman
filtering by parallel scan and sequentially, and the peak memory of one step::

    python benchmarks/lds_scaling.py [--lengths 10,100,1000,10000] [--device cpu|cuda]

On the CPU the parallel scan does the same O(T) work in O(log T) sequential
depth, so its advantage shows as fewer Python-level steps; on a GPU the depth is
what the wall clock sees.
"""

import argparse
import resource
import time

import torch

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.datasets import bouncing_dot
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import mirrored_autoencoder
from pyro_sin.pgm import LinearDynamicalSystem


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(T, parallel, steps, device, batch=8):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = bouncing_dot(batch, T).frames.to(device)
    encoder, decoder = mirrored_autoencoder(16, 2, (50, 50))
    lds = LinearDynamicalSystem(2, parallel=parallel).to(device)
    model = DeepLatentSequence(lds, decoder.to(device), batch)
    guide = model.make_guide(encoder.to(device), factor="free")
    svi = SVI(model, guide, NaturalAdam({"lr": 0.01}), SINELBO(num_particles=4, max_plate_nesting=1))
    svi.step(y)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(y)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return seconds, memory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="10,100,1000,10000")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequential-up-to", type=int, default=1000, help="skip the sequential filter beyond this T")
    args = parser.parse_args(argv)
    memory_label = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    print(f"SAN-LDS SVI.step on {args.device}: 8 sequences, D = 2, 16 pixels, 4 particles")
    print(f"{'T':>7}{'parallel ms':>14}{'sequential ms':>15}{'ms per step of T (par.)':>25}{memory_label:>16}")
    for T in map(int, args.lengths.split(",")):
        par, memory = time_steps(T, True, args.steps, args.device)
        seq = time_steps(T, False, args.steps, args.device)[0] if T <= args.sequential_up_to else float("nan")
        print(f"{T:>7}{1e3 * par:>14.1f}{1e3 * seq:>15.1f}{1e3 * par / T:>25.3f}{memory:>16.0f}", flush=True)


if __name__ == "__main__":
    main()
