"""
Train SAN-GMM on the pinwheel data beside a plain VAE with the same networks and the
same budget; print the metrics and write the figures (one seed's)::

    python examples/pinwheel.py --out results/pinwheel [--device cuda]
    python examples/pinwheel.py --seeds 5     # seeds 0-4: every seed's metrics and their medians
    python examples/pinwheel.py --nproc 2     # SAN in 2 processes (or under torchrun)

``--quick`` (or the environment variable ``CI``) shrinks the run. The settings
(:class:`Config`: the paper's, with the decoder's hidden layers at LeCun's scale and a
longer run, measured in docs/results.rst), networks and methods here are also those of
``paper.py``.
"""

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.datasets import pinwheel
from pyro_sin.distributed import world
from pyro_sin.elbo import SINELBO
from pyro_sin.evaluation import Estimate
from pyro_sin.metrics import cluster_purity, normalized_mutual_info, sample_coverage, sample_precision
from pyro_sin.models import DeepLatentMixture
from pyro_sin.nn import GaussianDecoder, GaussianEncoder, latent_scale, mirrored_autoencoder
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import GaussianMixture, StudentTMixture
from pyro_sin.standardize import Standardization, StandardizedDecoder, StandardizedEncoder, standardized_autoencoder
from pyro_sin.training import History, components_in_use, fit

from baselines import VAE, SVAEGuide
from harness import (
    Results,
    Trained,
    compare,
    fit_evaluating_at,
    fresh_start,
    markdown_table,
    median_rows,
    on_device,
    parser,
)
from plotting import new_figure, plot_curves, plot_generative_samples, shared_limits


@dataclass
class Config:
    """
    The main job's settings: the paper's pinwheel settings (docs/mathematics.rst, *Evaluation
    and the paper's settings*) with the decoder's hidden layers at LeCun's scale, trained for
    longer (docs/results.rst, *The main job*, says what was measured). The one definition of
    the deep methods' settings, which ``paper.py`` extends per data set.
    """

    iterations: int = 6000
    num_components: int = 10
    latent_dim: int = 2
    hidden: int = 50
    batch_size: int = 100
    lr: float = 0.01
    natural_lr: float = 0.1
    natural_decay: float = 1.0  # β_t = natural_lr · natural_decay^(t / 1000) after the warm-up
    num_particles: int = 10
    factor: str = "tied"
    decoder_estimator: str = "sample"
    student_t_df: float = 5.0  # the Student-t mixture's degrees of freedom (SAN-TMM)
    init: str = "standardized"  # "mirrored" or "independent": the paper code's random shortcuts (standardised data)
    # "standardized" networks (measured in issue 7; all relative to the data's spread):
    spread: float = 5.0  # spread of the networks' inputs and outputs
    min_scale: float = 0.01  # the Gaussian decoder's floor
    init_noise: float = 0.135  # initial posterior and decoder spread (one unit of the paper's pinwheel)
    # LeCun-scaled hidden layers in the decoder (pyro_sin.nn.TwoHeadedMLP; None: small weights): with every
    # weight small the decoder stays nearly linear for thousands of steps and misses the curled ends of the arms
    decoder_body_gain: Optional[float] = 1.0
    warmup: int = 200  # steps before the natural step moves the mixture components
    component_init: str = "kmeans"  # components on the encoded data, or "random"
    # evaluation
    test_samples: int = 100
    generated_samples: int = 2000  # decoder means, for the coverage and the precision
    coverage_radius: float = 1.0  # in the data's units
    curve_samples: int = 10
    eval_every: int = 100
    seed: int = 0
    data_seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick(cls, **kwargs):
        return cls(**{"iterations": 200, "eval_every": 50, "test_samples": 20, "warmup": 50, **kwargs})


class NaturalSchedule:
    r"""``β_t = 0`` for ``t <`` warm-up, then ``natural_lr · decay^(t / 1000)``."""

    def __init__(self, natural_lr: float, decay: float = 1.0, warmup: int = 0):
        if not (0 < natural_lr <= 1 and 0 < decay <= 1 and warmup >= 0):
            raise ValueError("need 0 < natural_lr <= 1, 0 < decay <= 1 and warmup >= 0")
        self.natural_lr, self.decay, self.warmup = natural_lr, decay, warmup

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.warmup else self.natural_lr * math.pow(self.decay, step / 1000)


def natural_schedule(config: Config, warmup: bool = True) -> NaturalSchedule:
    """The natural step of ``config``, held at 0 for ``config.warmup`` steps unless ``warmup=False``."""
    return NaturalSchedule(config.natural_lr, config.natural_decay, config.warmup if warmup else 0)


# ----- the models ------------------------------------------------------------------------------


def build_networks(config: Config, train: torch.Tensor):
    """The encoder and decoder, the same for SAN, the SVAE and the VAE."""
    data_dim, hidden = train.shape[-1], (config.hidden,) * 2
    if config.decoder_body_gain is not None and config.init != "standardized":
        raise ValueError("decoder_body_gain needs the standardized networks")
    if config.init == "standardized":
        gain = {} if config.decoder_body_gain is None else {"body_gain": config.decoder_body_gain}
        encoder, decoder = standardized_autoencoder(
            train,
            config.latent_dim,
            hidden,
            spread=config.spread,
            min_scale=config.min_scale,
            init_noise=config.init_noise,
            **gain,
        )
    elif config.init in ("mirrored", "independent"):
        # the paper code's networks read and answer in standardised units: in the data's own units
        # they lost the clusters once the data were scaled by 1e3, 1e6 or 1e-3
        standardization = Standardization.fit(train).to(train.device)
        if config.init == "mirrored":
            encoder, decoder = mirrored_autoencoder(
                data_dim, config.latent_dim, hidden, scale=latent_scale(standardization(train))
            )
        else:
            encoder = GaussianEncoder(data_dim, config.latent_dim, hidden)
            decoder = GaussianDecoder(config.latent_dim, data_dim, hidden)
        encoder, decoder = StandardizedEncoder(encoder, standardization), StandardizedDecoder(decoder, standardization)
    else:
        raise ValueError(f"unknown init {config.init!r}")
    return encoder.to(train.device), decoder.to(train.device)


def build_san(config: Config, train: torch.Tensor, mixture: str = "gmm", svae: bool = False):
    """
    The deep latent mixture, its guide (components on the encoded data) and the SVI object.

    :param str mixture: ``"gmm"`` (Gaussian) or ``"tmm"`` (Student-t, whose components
        are learned by Adam: start them at random, ``component_init="random"``).
    :param bool svae: the SVAE's guide instead of SAN's SIN guide.
    :returns: ``(model, guide, svi)``.
    """
    K, D = config.num_components, config.latent_dim
    if mixture == "gmm":
        prior = GaussianMixture(K, D)
    elif mixture == "tmm":
        prior = StudentTMixture(K, D, df=config.student_t_df)
    else:
        raise ValueError(f"unknown mixture {mixture!r}; choose 'gmm' or 'tmm'")
    prior = prior.to(train.device)
    encoder, decoder = build_networks(config, train)
    model = DeepLatentMixture(prior, decoder, len(train))
    if config.component_init == "kmeans":
        if mixture != "gmm":
            raise ValueError(
                "k-means components need a Gaussian mixture (the Student-t components are learned by Adam)"
            )
        init_natural = prior.encoded_start(encoder, train, torch.Generator().manual_seed(config.seed))
    elif config.component_init == "random":
        init_natural = None
    else:
        raise ValueError(f"unknown component_init {config.component_init!r}")
    if svae:
        guide = SVAEGuide(model, prior, encoder, create_plates=model.create_plates, init_natural=init_natural)
    else:
        guide = model.make_guide(encoder, factor=config.factor, init_natural=init_natural)
    svi = SVI(
        model,
        guide,
        NaturalAdam({"lr": config.lr}, natural_lr=natural_schedule(config)),
        SINELBO(num_particles=config.num_particles, decoder_estimator=config.decoder_estimator, max_plate_nesting=1),
    )
    return model, guide, svi


def build_vae(config: Config, train: torch.Tensor):
    """A plain VAE with the same networks as SAN: ``(vae, svi)``."""
    vae = VAE(*build_networks(config, train), len(train))
    elbo = Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
    return vae, SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": config.lr}), elbo)


class TrainedMixture:
    """A trained deep latent mixture (SAN or the SVAE) and its guide, behind the scores of the pinwheel experiments."""

    def __init__(self, model: DeepLatentMixture, guide, config: Config):
        self.model, self.guide, self.config = model, guide, config

    def test_mse(self, y, num_samples) -> float:
        return self.model.test_mse(self.guide, y, num_samples)

    def reconstruction_error(self, y, num_samples) -> Estimate:
        return self.model.reconstruction_error(self.guide, y, num_samples)

    def log_likelihood(self, y, num_samples) -> Estimate:
        return self.model.log_likelihood(self.guide, y, num_samples)

    def cluster(self, y):
        return self.model.cluster(self.guide, y)

    def components_in_use(self):
        return components_in_use(self.guide)

    def generate(self, num_samples):
        """``(samples, components, weights)``."""
        return self.model.generate(self.guide, num_samples)

    def impute(self, y, observed, num_samples):
        return self.model.impute(self.guide, y, observed, num_samples).values


class TrainedVAE:
    """A trained :class:`~baselines.VAE` behind the same scores (no clusters)."""

    def __init__(self, vae: VAE, config: Config):
        self.vae, self.config = vae, config

    def test_mse(self, y, num_samples) -> float:
        return self.vae.test_mse(y, num_samples)

    def reconstruction_error(self, y, num_samples) -> Estimate:
        return self.vae.reconstruction_error(y, num_samples)

    def log_likelihood(self, y, num_samples) -> Estimate:
        return self.vae.log_likelihood(y, num_samples)

    def cluster(self, y):
        return None

    def components_in_use(self):
        return None

    @torch.no_grad()
    def generate(self, num_samples):
        like = next(self.vae.decoder.parameters())  # the prior's dtype and device
        mean = self.vae.decoder.distribution(self.vae.prior(like).sample((num_samples,))).mean
        return mean, torch.zeros(num_samples, dtype=torch.long, device=mean.device), mean.new_ones(1)

    def impute(self, y, observed, num_samples):
        return self.vae.impute(y, observed, num_samples).values


def san(config: Config, train: torch.Tensor, mixture: str = "gmm", svae: bool = False):
    """SAN (or the SVAE) for :class:`PinwheelMethod`: ``(trained model, svi)``."""
    model, guide, svi = build_san(config, train, mixture, svae)
    return TrainedMixture(model, guide, config), svi


def vae(config: Config, train: torch.Tensor):
    """The VAE for :class:`PinwheelMethod`: ``(trained model, svi)``."""
    model, svi = build_vae(config, train)
    return TrainedVAE(model, config), svi


# ----- the methods -------------------------------------------------------------------------


def pinwheel_metrics(trained, split, config: Config):
    """
    Test MSE and log-likelihood, the coverage of the training data by generated samples and
    their precision, and for a mixture the purity and NMI of its clusters: ``(metrics, None)``.
    """
    clusters = trained.cluster(split.test)
    samples, _, _ = trained.generate(config.generated_samples)
    metrics = {
        "test_mse": trained.test_mse(split.test, config.test_samples),
        "test_log_likelihood": trained.log_likelihood(split.test, config.test_samples).mean,
        "coverage": sample_coverage(split.train, samples, config.coverage_radius),
        "sample_precision": sample_precision(split.train, samples, config.coverage_radius),
    }
    if clusters is not None:
        metrics["purity"] = cluster_purity(clusters, split.test_labels)
        metrics["nmi"] = normalized_mutual_info(clusters, split.test_labels)
    return metrics, None


class PinwheelMethod:
    """
    A method of the pinwheel experiments (this script's and ``paper.py``'s), in the harness's
    protocol: built afresh by ``build(config, train) -> (trained model, svi)``, trained by
    :func:`~pyro_sin.training.fit` with the test MSE as its curve, scored by
    ``score(trained model, split, config) -> (metrics, per-point scores)``.

    :param eval_steps: ``iterations -> steps`` at which the curve is evaluated; default
        every ``config.eval_every`` steps.
    """

    def __init__(
        self,
        name: str,
        config: Config,
        build: Callable,
        score: Callable = pinwheel_metrics,
        eval_steps: Optional[Callable[[int], Sequence[int]]] = None,
    ):
        self.name, self.config, self.builder, self.score, self.eval_steps = name, config, build, score, eval_steps

    def build(self, train, seed: int):
        """The untrained model and its trainer, built from nothing with ``seed``."""
        fresh_start(seed)
        return self.builder(replace(self.config, seed=seed), train)

    def fit(self, split, seed: int, progress: bool = True):
        """Trains from scratch: ``(trained model, history, seconds per step)``, the time without evaluations."""
        config = replace(self.config, seed=seed)
        model, svi = self.build(split.train, seed)
        options = dict(
            iterations=config.iterations,
            batch_size=config.batch_size,
            generator=torch.Generator().manual_seed(seed),
            progress=progress,
            desc=f"{self.name} seed {seed}",
        )

        def evaluate():
            return {"test_mse": model.test_mse(split.test, config.curve_samples)}

        if self.eval_steps is None:
            history = fit(svi, split.train, evaluate=evaluate, eval_every=config.eval_every, **options)
        else:
            history = fit_evaluating_at(svi, split.train, self.eval_steps(config.iterations), evaluate, **options)
        # in a process group only rank 0 evaluates, and so records the time
        seconds = history.eval_seconds[-1] / max(config.iterations, 1) if history.eval_seconds else math.nan
        return model, history, seconds

    def train(self, split, seed: int, progress: bool = True) -> Trained:
        model, history, seconds = self.fit(split, seed, progress)
        if world()[0] != 0:  # rank 0 scores
            return Trained({}, history, model)
        metrics, per_point = self.score(model, split, replace(self.config, seed=seed))
        timing = {"ms_per_step": 1e3 * seconds, "seconds": seconds * self.config.iterations}
        return Trained({**metrics, **timing}, history, model, per_point)


def train_san(config: Config, split, progress=True):
    """SAN-GMM with ``config.seed``: ``(model, guide, history, seconds per step)``."""
    trained, history, seconds = PinwheelMethod("SAN-GMM", config, san).fit(split, config.seed, progress)
    return trained.model, trained.guide, history, seconds


# ----- the experiment ----------------------------------------------------------------------


def _curve(history: History):
    return [history.eval_steps, [e["test_mse"] for e in history.evals]]


def write_figures(results: Results, split, models, curves, config: Config, num_samples=3000):
    """
    ``generative_samples.png`` (each model's samples over the data coloured by class) and
    ``test_mse.png`` (a marker at every evaluation), each captioned with its one seed.

    :param models: ``{name: trained model}``, SAN-GMM first.
    :param curves: ``{name: (steps, test MSE)}``.
    :returns: ``{file name: figure}``.
    """
    caption = f"Pinwheel, one seed (seed {config.seed}), {config.iterations} iterations"
    limits = shared_limits(split.train)
    fig = new_figure(len(models))
    for ax, (name, model) in zip(fig.axes, models.items()):
        samples, components, weights = model.generate(num_samples)
        plot_generative_samples(
            ax,
            split.train,
            samples,
            components,
            weights,
            f"{name}: samples of the learned model",
            labels=split.train_labels,
            limits=limits,
        )
    fig.suptitle(caption, fontsize="medium")
    figures = {"generative_samples.png": fig}
    fig = new_figure()
    plot_curves(fig.axes[0], curves, xlabel=f"iteration (a marker every {config.eval_every} steps: the evaluations)")
    fig.axes[0].set_title(f"Test MSE. {caption}", fontsize="medium")
    figures["test_mse.png"] = fig
    for name, figure in figures.items():
        results.figure(figure, name)
    return figures


_COLUMNS = [
    ("test_log_likelihood", "test log-lik."),
    ("test_mse", "test MSE"),
    ("coverage", "coverage"),
    ("sample_precision", "sample precision"),
    ("purity", "purity"),
    ("nmi", "NMI"),
    ("ms_per_step", "ms / step"),
    ("seconds", "seconds"),
]


def _percent(key):
    return lambda row: f"{100 * row[key]:.1f}%"


_FORMATS = {
    "test_log_likelihood": lambda row: f"{row['test_log_likelihood']:.3f}",
    "coverage": _percent("coverage"),
    "sample_precision": _percent("sample_precision"),
    "seconds": lambda row: f"{row['seconds']:.0f}",
}

_NOTES = (
    "Test log-likelihood: the mean over test points of an importance-sampled log p(y) "
    "({test_samples} samples); coverage: the share of training points with one of {generated} generated "
    "samples (decoder means) within {radius:g}; sample precision: the share of those samples within {radius:g} "
    "of a training point; seconds: training time, evaluations excluded."
)


def log_likelihood_lead(per_seed: dict) -> str:
    """SAN-GMM's test log-likelihood minus the VAE's on every seed, and on how many it is ahead."""
    leads = [rows["SAN-GMM"]["test_log_likelihood"] - rows["VAE"]["test_log_likelihood"] for rows in per_seed.values()]
    ahead = sum(lead > 0 for lead in leads)
    listed = ", ".join(f"seed {seed}: {lead:+.3f}" for seed, lead in zip(per_seed, leads))
    seeds = f"{len(leads)} seeds" if len(leads) > 1 else "1 seed"
    return f"Test log-likelihood, SAN-GMM minus VAE: {listed} (SAN-GMM ahead on {ahead} of {seeds})."


def run(config: Config, results: Results, progress=True, rank=0, world_size=1, seeds: Optional[Sequence[int]] = None):
    """
    Trains, evaluates and writes the outputs. In a process group of ``world_size``
    (``--nproc`` or ``torchrun``) every process trains SAN on its share of each
    minibatch of ``config.batch_size`` and rank 0 evaluates and writes; the VAE
    baseline is trained by a single process only.

    :param seeds: train and score every method on each of these seeds (default:
        ``config.seed``); the figures show the first.
    :returns: on rank 0, the median over seeds of each method's metrics.
    """
    seeds = [config.seed] if seeds is None else list(seeds)
    split = on_device(pinwheel(seed=config.data_seed), config.device)
    per_process = replace(config, batch_size=config.batch_size // world_size)
    methods = [PinwheelMethod("SAN-GMM", per_process, san)]
    if world_size == 1:
        methods.append(PinwheelMethod("VAE", config, vae))
    runs = {seed: compare(methods, split, seed, progress and rank == 0, keep_going=False) for seed in seeds}
    if rank != 0:
        return None
    per_seed = {seed: {name: t.metrics for name, t in trained.items()} for seed, trained in runs.items()}
    shown = runs[seeds[0]]
    curves = {name: _curve(t.history) for name, t in shown.items()}
    write_figures(results, split, {name: t.model for name, t in shown.items()}, curves, replace(config, seed=seeds[0]))
    medians = median_rows(list(per_seed.values()))
    notes = _NOTES.format(
        test_samples=config.test_samples, generated=config.generated_samples, radius=config.coverage_radius
    )
    where = f"{world_size} processes" if world_size > 1 else config.device
    if len(seeds) == 1:
        title = f"Pinwheel after {config.iterations} iterations (seed {seeds[0]}, {where})"
        sections = [notes, markdown_table(medians, _COLUMNS, _FORMATS)]
    else:
        title = f"Pinwheel after {config.iterations} iterations (seeds {seeds[0]}-{seeds[-1]}, {where})"
        rows = {f"{name}, seed {seed}": row for seed, trained in per_seed.items() for name, row in trained.items()}
        sections = [
            notes,
            f"Median over {len(seeds)} seeds:",
            markdown_table(medians, _COLUMNS, _FORMATS),
            "Every seed:",
            markdown_table(rows, _COLUMNS, _FORMATS),
        ]
    if "VAE" in medians:
        sections.insert(1, log_likelihood_lead(per_seed))
    settings = {**asdict(config), "processes": world_size}
    results.write(
        title,
        sections,
        {
            "config": settings,
            "seeds": seeds,
            "metrics": medians,
            "per_seed": per_seed,
            "curves": curves,
            "figures_seed": seeds[0],
        },
    )
    return medians


def _process(rank, world_size, init_file, config, results, progress, seeds):
    """One process of a ``--nproc`` run."""
    backend = "nccl" if torch.device(config.device).type == "cuda" else "gloo"
    if backend == "nccl":
        config = replace(config, device=f"cuda:{rank % torch.cuda.device_count()}")
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        run(config, results, progress, rank, world_size, seeds)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    command = parser(__doc__, "results/pinwheel", seed=0, seeds=1, iterations=None)
    command.add_argument("--factor", choices=["tied", "free"], default="tied")
    command.add_argument("--decoder-estimator", choices=["sample", "enumerate"], default="sample")
    command.add_argument("--init", choices=["standardized", "mirrored", "independent"], default="standardized")
    command.add_argument(
        "--nproc", type=int, default=1, help="train SAN in N processes (torch.distributed: gloo on CPU, nccl on CUDA)"
    )
    args = command.parse_args(argv)
    overrides = dict(
        seed=args.seed, factor=args.factor, decoder_estimator=args.decoder_estimator, init=args.init, device=args.device
    )
    if args.init != "standardized":  # the decoder's gain is a setting of the standardized networks
        overrides["decoder_body_gain"] = None
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    config = Config.quick(**overrides) if args.quick else Config(**overrides)
    seeds = list(range(args.seed, args.seed + args.seeds))
    results = command.results(args)
    if args.nproc > 1:
        if config.batch_size % args.nproc:
            command.error(f"--nproc must divide the minibatch of {config.batch_size}")
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _process,
                args=(args.nproc, f"{tmp}/init", config, results, args.progress, seeds),
                nprocs=args.nproc,
                join=True,
            )
        return json.loads((args.out / "results.json").read_text())["metrics"]
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # launched by torchrun
        backend = "nccl" if torch.device(args.device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            config = replace(config, device=f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
        try:
            return run(config, results, args.progress, rank, world_size, seeds)
        finally:
            dist.destroy_process_group()
    return run(config, results, args.progress, seeds=seeds)


if __name__ == "__main__":
    main()
