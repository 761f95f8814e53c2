"""
Throughput of SAN-GMM training on the pinwheel data in 1 process and in N
processes (torch.distributed, gloo on the CPU), the global minibatch of 100
split between them, printed side by side::

    python benchmarks/distributed_throughput.py [--nproc 2] [--steps 200] [--threads 1]

Each process trains on its share of every minibatch and NaturalAdam averages the
gradients, so both layouts take the same steps; the table reports milliseconds
per step (median over steps, after a warm-up) and steps per second.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro

from pyro_sin.datasets import pinwheel
from pyro_sin.distributed import broadcast_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the experiments are scripts there
from pyro_sin.training import minibatch_indices

from pinwheel import Config, build_san


def step_times(rank, world_size, steps, threads, warmup=20):
    torch.set_num_threads(threads)
    train = pinwheel().train
    config = Config(batch_size=100 // world_size)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    _, _, svi = build_san(config, train)
    batches = minibatch_indices(len(train), config.batch_size, torch.Generator().manual_seed(0), rank, world_size)
    idx = next(batches)
    svi.evaluate_loss(train[idx], idx)
    broadcast_parameters()
    times = []
    for step in range(warmup + steps):
        idx = next(batches)
        start = time.perf_counter()
        svi.step(train[idx], idx)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _process(rank, world_size, init_file, steps, threads, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        seconds = step_times(rank, world_size, steps, threads)
        if rank == 0:
            torch.save(seconds, out)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args(argv)
    single = step_times(0, 1, args.steps, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_process, args=(args.nproc, f"{tmp}/init", args.steps, args.threads, f"{tmp}/out"), nprocs=args.nproc)
        several = torch.load(f"{tmp}/out")
    print(
        f"SAN-GMM on pinwheel, global minibatch 100, {args.threads} thread(s) per process, "
        f"CPU ({torch.get_num_threads()} threads here)"
    )
    print(f"{'processes':<10}{'batch/process':>14}{'ms/step':>10}{'steps/s':>10}")
    for n, seconds in ((1, single), (args.nproc, several)):
        print(f"{n:<10}{100 // n:>14}{1e3 * seconds:>10.2f}{1 / seconds:>10.1f}")


if __name__ == "__main__":
    main()
