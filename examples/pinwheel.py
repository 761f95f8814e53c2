"""
Train SAN-GMM on the pinwheel data with the paper's settings, beside a plain VAE
with the same networks; print the metrics and write the figures::

    python examples/pinwheel.py --out results/pinwheel [--device cuda]
    python examples/pinwheel.py --nproc 2     # SAN in 2 processes (or under torchrun)

``--quick`` (or the environment variable ``CI``) shrinks the run.
"""

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.datasets import pinwheel
from pyro_sin.elbo import SINELBO
from pyro_sin.initialization import encoded_components, warmup_schedule
from pyro_sin.metrics import cluster_purity, normalized_mutual_info
from pyro_sin.models import DeepLatentMixture
from pyro_sin.nn import GaussianDecoder, GaussianEncoder, latent_scale, mirrored_autoencoder
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import GaussianMixture
from pyro_sin.standardize import standardized_autoencoder
from pyro_sin.training import fit

from baselines import VAE
from plotting import new_figure, plot_curves, plot_generative_samples


@dataclass
class Config:
    """The paper's pinwheel settings (docs/mathematics.rst, *Evaluation and the paper's settings*)."""

    iterations: int = 2000
    num_components: int = 10
    latent_dim: int = 2
    hidden: int = 50
    batch_size: int = 100
    lr: float = 0.01
    natural_lr: float = 0.1
    num_particles: int = 10
    test_samples: int = 100
    curve_samples: int = 10
    eval_every: int = 50
    factor: str = "tied"
    decoder_estimator: str = "sample"
    init: str = "standardized"  # "mirrored" (raw data units) or "independent": the paper code's random shortcuts
    # "standardized" networks (measured in issue 7; all relative to the data's spread):
    spread: float = 5.0  # spread of the networks' inputs and outputs
    min_scale: float = 0.01  # the Gaussian decoder's floor
    init_noise: float = 0.135  # initial posterior and decoder spread (one unit of the paper's pinwheel)
    warmup: int = 200  # steps before the natural step moves the mixture components
    component_init: str = "kmeans"  # components on the encoded data, or "random"
    seed: int = 0
    data_seed: int = 0

    @classmethod
    def quick(cls, **kwargs):
        return cls(**{"iterations": 200, "eval_every": 50, "test_samples": 20, "warmup": 50, **kwargs})


def build_networks(config: Config, train: torch.Tensor):
    """The encoder and decoder, the same for SAN and the VAE."""
    data_dim, hidden = train.shape[-1], (config.hidden,) * 2
    if config.init == "standardized":
        encoder, decoder = standardized_autoencoder(
            train,
            config.latent_dim,
            hidden,
            spread=config.spread,
            min_scale=config.min_scale,
            init_noise=config.init_noise,
        )
    elif config.init == "mirrored":
        encoder, decoder = mirrored_autoencoder(
            data_dim, config.latent_dim, hidden, scale=latent_scale(train)
        )
    elif config.init == "independent":
        encoder = GaussianEncoder(data_dim, config.latent_dim, hidden)
        decoder = GaussianDecoder(config.latent_dim, data_dim, hidden)
    else:
        raise ValueError(f"unknown init {config.init!r}")
    return encoder.to(train.device), decoder.to(train.device)


def build_san(config: Config, train: torch.Tensor):
    """The deep latent GMM, its SIN guide (components on the encoded data) and the SVI object."""
    gmm = GaussianMixture(config.num_components, config.latent_dim).to(train.device)
    encoder, decoder = build_networks(config, train)
    model = DeepLatentMixture(gmm, decoder, len(train))
    if config.component_init == "kmeans":
        init_natural = encoded_components(gmm, encoder, train, torch.Generator().manual_seed(config.seed))
    elif config.component_init == "random":
        init_natural = None
    else:
        raise ValueError(f"unknown component_init {config.component_init!r}")
    guide = model.make_guide(encoder, factor=config.factor, init_natural=init_natural)
    natural_lr = warmup_schedule(config.natural_lr, config.warmup) if config.warmup else config.natural_lr
    svi = SVI(
        model,
        guide,
        NaturalAdam({"lr": config.lr}, natural_lr=natural_lr),
        SINELBO(
            num_particles=config.num_particles,
            decoder_estimator=config.decoder_estimator,
            max_plate_nesting=1,
        ),
    )
    return model, guide, svi


def build_vae(config: Config, train: torch.Tensor):
    vae = VAE(*build_networks(config, train), len(train))
    elbo = Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
    return vae, SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": config.lr}), elbo)


def _train(config: Config, split, svi, test_mse, desc, progress):
    """Minibatch training with a test-MSE curve; returns the history and seconds per step (evaluations excluded)."""
    history = fit(
        svi,
        split.train,
        iterations=config.iterations,
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
        evaluate=lambda: {"test_mse": test_mse(split.test, config.curve_samples)},
        eval_every=config.eval_every,
        progress=progress,
        desc=f"{desc} seed {config.seed}",
    )
    seconds = history.eval_seconds[-1] / config.iterations if history.eval_seconds else float("nan")  # rank > 0
    return history, seconds


def _fresh(config: Config):
    pyro.clear_param_store()  # parameters are looked up by name: start from nothing
    pyro.set_rng_seed(config.seed)


def train_san(config: Config, split, progress=True):
    """:returns: ``(model, guide, history, seconds per step)``."""
    _fresh(config)
    model, guide, svi = build_san(config, split.train)
    history, seconds = _train(
        config, split, svi, lambda y, n: model.test_mse(guide, y, n), "SAN-GMM", progress
    )
    return model, guide, history, seconds


def train_vae(config: Config, split, progress=True):
    """:returns: ``(vae, history, seconds per step)``."""
    _fresh(config)
    vae, svi = build_vae(config, split.train)
    history, seconds = _train(config, split, svi, vae.test_mse, "VAE", progress)
    return vae, history, seconds


def evaluate_san(model, guide, split, num_samples):
    clusters = model.cluster(guide, split.test)
    return {
        "test_mse": model.test_mse(guide, split.test, num_samples),
        "test_log_likelihood": model.test_log_likelihood(guide, split.test, num_samples),
        "purity": cluster_purity(clusters, split.test_labels),
        "nmi": normalized_mutual_info(clusters, split.test_labels),
    }


def evaluate_vae(vae, split, num_samples):
    return {
        "test_mse": vae.test_mse(split.test, num_samples),
        "test_log_likelihood": vae.test_log_likelihood(split.test, num_samples),
    }


def markdown_table(rows, columns):
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else "—" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_figures(out: Path, split, model, guide, san_history, vae_history=None, num_samples=3000):
    samples, components, weights = model.generate(guide, num_samples)
    fig = new_figure()
    plot_generative_samples(
        fig.axes[0], split.train, samples, components, weights, "SAN-GMM: samples of the learned model"
    )
    fig.savefig(out / "generative_samples.png", dpi=150)
    fig = new_figure()
    curves = {"SAN-GMM": (san_history.eval_steps, [e["test_mse"] for e in san_history.evals])}
    if vae_history is not None:
        curves["VAE"] = (vae_history.eval_steps, [e["test_mse"] for e in vae_history.evals])
    plot_curves(fig.axes[0], curves)
    fig.axes[0].set_title("Pinwheel: test MSE")
    fig.savefig(out / "test_mse.png", dpi=150)


def _on(split, device):
    return split._replace(**{k: v.to(device) for k, v in split._asdict().items()})


def run(config: Config, out: Path, device="cpu", progress=True, rank=0, world_size=1):
    """
    Trains, evaluates and writes the outputs. In a process group of ``world_size``
    (``--nproc`` or ``torchrun``) every process trains SAN on its share of each
    minibatch of ``config.batch_size`` and rank 0 evaluates and writes; the VAE
    baseline is trained by a single process only.
    """
    split = _on(pinwheel(seed=config.data_seed), device)
    per_process = replace(config, batch_size=config.batch_size // world_size)
    model, guide, san_history, san_step = train_san(per_process, split, progress and rank == 0)
    if rank != 0:
        return None
    rows = {"SAN-GMM": {**evaluate_san(model, guide, split, config.test_samples), "ms_per_step": 1e3 * san_step}}
    curves = {"SAN-GMM": [san_history.eval_steps, [e["test_mse"] for e in san_history.evals]]}
    vae_history = None
    if world_size == 1:
        vae, vae_history, vae_step = train_vae(config, split, progress)
        rows["VAE"] = {**evaluate_vae(vae, split, config.test_samples), "ms_per_step": 1e3 * vae_step}
        curves["VAE"] = [vae_history.eval_steps, [e["test_mse"] for e in vae_history.evals]]
    columns = ["test_mse", "test_log_likelihood", "purity", "nmi", "ms_per_step"]
    table = markdown_table(rows, columns)
    where = f"{world_size} processes" if world_size > 1 else device
    print(f"\nPinwheel after {config.iterations} iterations (seed {config.seed}, {where}):\n{table}")
    write_figures(out, split, model, guide, san_history, vae_history)
    (out / "metrics.md").write_text(table + "\n")
    settings = {**asdict(config), "device": str(device), "processes": world_size}
    (out / "metrics.json").write_text(json.dumps({"config": settings, "metrics": rows, "curves": curves}, indent=2))
    print(f"figures and metrics written to {out}/")
    return rows


def _process(rank, world_size, init_file, config, out, device, progress):
    """One process of a ``--nproc`` run."""
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        device = f"cuda:{rank % torch.cuda.device_count()}"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        run(config, out, device, progress, rank, world_size)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, help="training iterations (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factor", choices=["tied", "free"], default="tied")
    parser.add_argument("--decoder-estimator", choices=["sample", "enumerate"], default="sample")
    parser.add_argument("--init", choices=["standardized", "mirrored", "independent"], default="standardized")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--nproc", type=int, default=1, help="train SAN in N processes (torch.distributed: gloo on CPU, nccl on CUDA)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/pinwheel"))
    parser.add_argument("--quick", action="store_true", help="a short run (also when CI is set)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick or "CI" in os.environ
    overrides = {
        "seed": args.seed,
        "factor": args.factor,
        "decoder_estimator": args.decoder_estimator,
        "init": args.init,
    }
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    config = Config.quick(**overrides) if quick else Config(**overrides)
    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)
    if args.nproc > 1:
        if config.batch_size % args.nproc:
            parser.error(f"--nproc must divide the minibatch of {config.batch_size}")
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _process,
                args=(args.nproc, f"{tmp}/init", config, args.out, args.device, progress),
                nprocs=args.nproc,
                join=True,
            )
        return json.loads((args.out / "metrics.json").read_text())["metrics"]
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # launched by torchrun
        backend = "nccl" if torch.device(args.device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world_size = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if backend == "nccl" else args.device
        try:
            return run(config, args.out, device, progress, rank, world_size)
        finally:
            dist.destroy_process_group()
    return run(config, args.out, args.device, progress)


if __name__ == "__main__":
    main()
