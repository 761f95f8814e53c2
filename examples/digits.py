"""
Cluster images of handwritten digits with SAN-GMM beside k-means, PCA + Bayesian GMM, a two-stage
VAE + GMM and the SVAE: ``python examples/digits.py [--data digits-binary|mnist5k] [--seeds 5]``
(extra ``[data]``; ``--quick`` or ``CI``: a short run). How the recipe was tuned: docs/notes/digits_tuning.rst.
"""

import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from pyro.infer import SVI

from pyro_sin.datasets.digits import digits, mnist5k
from pyro_sin.elbo import SINELBO
from pyro_sin.initialization import pretrain_components, warmup_schedule
from pyro_sin.metrics import clustering_scores
from pyro_sin.models import DeepLatentMixture
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import GaussianMixture
from pyro_sin.pgm.mixture import classic_start
from pyro_sin.standardize import standardized_autoencoder
from pyro_sin.training import fit

import harness
from baselines import PCAGMM, VAEGMM, KMeansBaseline, SVAEGuide
from harness import Results, Trained, compare, fresh_start, markdown_table, on_device, parser
from plotting import component_colours, new_figure, plot_curves
from plotting_images import embed_2d, plot_component_means, plot_embedding, plot_image_rows


@dataclass(frozen=True)
class DataSet:
    """How to load a data set, which likelihood models it, and the shape of its images."""

    load: object  # seed -> LabelledSplit
    likelihood: str
    image_shape: Tuple[int, int]
    hidden: Tuple[int, ...]  # the networks' hidden layers


DATASETS: Dict[str, DataSet] = {
    "digits": DataSet(lambda seed: digits(seed), "gaussian", (8, 8), (50, 50)),
    "digits-binary": DataSet(lambda seed: digits(seed, binarize=True), "bernoulli", (8, 8), (50, 50)),
    "mnist5k": DataSet(lambda seed: mnist5k(seed, binarize=True), "bernoulli", (28, 28), (500, 500)),
}

METHODS = ("SAN-GMM", "SAN-GMM (classic start)", "SVAE", "k-means", "PCA+BGMM", "VAE+BGMM")


@dataclass
class Config:
    """Settings of one run; the defaults are the measured recipe (docs/notes/digits_tuning.rst)."""

    data: str = "digits"
    iterations: int = 2000
    num_components: int = 10
    latent_dim: int = 10
    hidden: Optional[Tuple[int, ...]] = None  # None: the data set's (DATASETS)
    batch_size: int = 100
    lr: float = 0.01
    natural_lr: float = 0.1
    num_particles: int = 3
    factor: str = "tied"
    # scale-free networks and their start (pyro_sin.standardize, pyro_sin.initialization)
    spread: float = 5.0
    min_scale: float = 0.05
    init_noise: float = 0.15
    shortcut: str = "pca"
    refine: int = 500  # sweeps of a Bayesian mixture that refine the k-means start of the components
    pretrain: int = 0  # steps with the components held before they are placed again (measured: no gain here)
    warmup: int = 500  # steps before the natural step moves the components
    # SAN-GMM (classic start): the model at the Gaussian mixture it contains (pyro_sin.pgm.mixture.classic_start),
    # trained at this rate while the log-likelihood of held-out training images improves
    classic_lr: float = 1e-3
    classic_validation: float = 0.15
    classic_patience: int = 5
    # the baselines
    vae_particles: int = 1
    svae_iterations: int = 10  # the SVAE's inner mean-field sweeps
    # evaluation
    test_samples: int = 100
    eval_every: int = 100
    max_train: Optional[int] = None  # use only the first training images (quick runs)
    max_test: Optional[int] = None
    methods: Tuple[str, ...] = METHODS
    seed: int = 0
    data_seed: int = 0

    def __post_init__(self):
        if self.data not in DATASETS:
            raise ValueError(f"unknown data set {self.data!r}; choose one of {sorted(DATASETS)}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
        if self.hidden is None:
            self.hidden = DATASETS[self.data].hidden

    @property
    def likelihood(self) -> str:
        return DATASETS[self.data].likelihood

    @classmethod
    def quick(cls, **kwargs):
        """A run of seconds on a small slice: it checks the pipeline, not the numbers."""
        settings = dict(
            iterations=100, pretrain=20, warmup=40, num_particles=2, test_samples=10, eval_every=50,
            max_train=300, max_test=200, svae_iterations=5,
        )
        if kwargs.get("data") == "mnist5k":
            settings["hidden"] = (100, 100)
        return cls(**{**settings, **kwargs})


def load_data(config: Config):
    split = DATASETS[config.data].load(config.data_seed)
    if config.max_train:
        split = split._replace(
            train=split.train[: config.max_train], train_labels=split.train_labels[: config.max_train]
        )
    if config.max_test:
        split = split._replace(test=split.test[: config.max_test], test_labels=split.test_labels[: config.max_test])
    return split


def build_networks(config: Config, train: torch.Tensor):
    """The encoder and decoder, the same for SAN, the SVAE and the two-stage VAE."""
    kwargs = {"min_scale": config.min_scale} if config.likelihood == "gaussian" else {}
    return standardized_autoencoder(
        train,
        config.latent_dim,
        config.hidden,
        likelihood=config.likelihood,
        spread=config.spread,
        init_noise=config.init_noise,
        shortcut=config.shortcut,
        **kwargs,
    )


def _svi(config, model, guide, natural_lr):
    return SVI(
        model,
        guide,
        NaturalAdam({"lr": config.lr}, natural_lr=natural_lr),
        SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
    )


def train_san_classic(config: Config, split, progress: bool = True):
    """
    SAN-GMM from the classic start (:func:`~pyro_sin.pgm.mixture.classic_start`: probabilistic-PCA
    networks and the Bayesian Gaussian mixture of their potentials), trained while the
    log-likelihood of held-out training images improves (:func:`~pyro_sin.training.fit`'s
    ``select``), the start included.

    :returns: ``(model, guide, history, seconds)``.
    """
    if config.likelihood != "gaussian":
        raise ValueError("the classic start is a Gaussian mixture of the data: it needs the Gaussian likelihood")
    fresh_start(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(split.train), generator=generator).to(split.train.device)
    held = int(config.classic_validation * len(order))
    held_out, train = split.train[order[:held]], split.train[order[held:]]
    start = time.perf_counter()
    begin = classic_start(
        train, config.num_components, config.latent_dim, config.hidden, per_feature=False, generator=generator
    )
    model = DeepLatentMixture(begin.prior, begin.decoder, len(train))
    guide = model.make_guide(begin.encoder, factor=config.factor, init_natural=begin.natural)
    svi = SVI(
        model, guide, NaturalAdam({"lr": config.classic_lr}, natural_lr=config.natural_lr),
        SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
    )

    def evaluate():
        nmi = clustering_scores(model.cluster(guide, split.test), split.test_labels)["nmi"]
        return {"nmi": nmi, "held_out_ll": model.test_log_likelihood(guide, held_out, 16)}

    history = fit(
        svi, train, iterations=config.iterations, evaluate=evaluate, eval_every=config.eval_every,
        select="held_out_ll", patience=config.classic_patience, batch_size=min(config.batch_size, len(train)),
        generator=generator, progress=progress, desc=f"SAN-GMM (classic start) seed {config.seed}",
    )
    return model, guide, history, time.perf_counter() - start


def train_san(config: Config, split, svae: bool = False, progress: bool = True):
    """
    SAN-GMM (or the SVAE with ``svae=True``) on the training images: components on the
    encoded data; ``config.pretrain`` steps with the components held, the components placed
    on the encoded data again; ``config.warmup`` more steps with them held, then the natural
    step moves them.

    :returns: ``(model, guide, history, seconds)``.
    """
    fresh_start(config.seed)
    train, generator = split.train, torch.Generator().manual_seed(config.seed)
    gmm = GaussianMixture(config.num_components, config.latent_dim).to(train)
    encoder, decoder = build_networks(config, train)
    model = DeepLatentMixture(gmm, decoder, len(train))
    init_natural = gmm.encoded_start(encoder, train, generator, refine=config.refine)
    if svae:
        guide = SVAEGuide(
            model, gmm, encoder, create_plates=model.create_plates, init_natural=init_natural,
            num_iterations=config.svae_iterations,
        )
    else:
        guide = model.make_guide(encoder, factor=config.factor, init_natural=init_natural)
    desc = f"{'SVAE' if svae else 'SAN-GMM'} seed {config.seed}"
    options = dict(batch_size=min(config.batch_size, len(train)), generator=generator, progress=progress)
    start = time.perf_counter()
    if config.pretrain:
        held = _svi(config, model, guide, warmup_schedule(config.natural_lr, config.pretrain))
        pretrain_components(held, guide, train, iterations=config.pretrain, desc=f"{desc} (pre-training)", **options)
    natural_lr = warmup_schedule(config.natural_lr, config.warmup) if config.warmup else config.natural_lr
    evaluate = lambda: {"nmi": clustering_scores(model.cluster(guide, split.test), split.test_labels)["nmi"]}  # noqa: E731
    history = fit(
        _svi(config, model, guide, natural_lr), train, iterations=config.iterations, evaluate=evaluate,
        eval_every=config.eval_every, desc=desc, **options,
    )
    return model, guide, history, time.perf_counter() - start


def _estimates(result: dict, name: str, estimate):
    result[name], result[f"{name}_stderr"] = estimate.mean, estimate.stderr
    result[f"{name}_mc_stderr"] = float(estimate.mc_stderr.mean())


@torch.no_grad()
def evaluate_san(model, guide, split, num_samples: int) -> dict:
    """Clustering scores on the test images, the importance-sampled test log-likelihood and the reconstruction error."""
    clusters = model.cluster(guide, split.test)
    result = {**clustering_scores(clusters, split.test_labels), "clusters_used": int(clusters.unique().numel())}
    _estimates(result, "test_log_likelihood", model.log_likelihood(guide, split.test, num_samples))
    _estimates(result, "reconstruction_error", model.reconstruction_error(guide, split.test, num_samples))
    return result


def run_baseline(name: str, config: Config, split, progress: bool = True) -> dict:
    fresh_start(config.seed)
    start = time.perf_counter()
    if name == "k-means":
        method = KMeansBaseline(config.num_components, seed=config.seed)
    elif name == "PCA+BGMM":
        method = PCAGMM(config.num_components, config.latent_dim, seed=config.seed)
    elif name == "VAE+BGMM":
        encoder, decoder = build_networks(config, split.train)
        method = VAEGMM(
            encoder, decoder, config.num_components, iterations=config.pretrain + config.iterations,
            batch_size=min(config.batch_size, len(split.train)), lr=config.lr, num_particles=config.vae_particles,
            seed=config.seed, progress=progress,
        )
    else:
        raise ValueError(f"unknown baseline {name!r}")
    method.fit(split.train)
    seconds = time.perf_counter() - start
    result = method.evaluate(split.test, split.test_labels, config.test_samples)
    if name == "PCA+BGMM" and config.likelihood != "gaussian":
        # a density on the real line: no match for the probabilities of binary pixels
        for key in [k for k in result if k.startswith("test_log_likelihood")]:
            result[key] = None
    return {**result, "seconds": seconds}


class SAN:
    """SAN-GMM (or the SVAE, ``svae=True``) in the harness's protocol (:class:`harness.Method`)."""

    def __init__(self, config: Config, svae: bool = False, classic: bool = False):
        self.config, self.svae, self.classic = config, svae, classic
        self.name = "SVAE" if svae else "SAN-GMM (classic start)" if classic else "SAN-GMM"

    def train(self, split, seed: int, progress: bool = True) -> Trained:
        config = replace(self.config, seed=seed)
        if self.classic:
            model, guide, history, seconds = train_san_classic(config, split, progress)
        else:
            model, guide, history, seconds = train_san(config, split, svae=self.svae, progress=progress)
        metrics = {
            **evaluate_san(model, guide, split, config.test_samples),
            "components_in_use": history.components[-1] if history.components else None,
            "seconds": seconds,
        }
        return Trained(metrics, history, (model, guide))


class Baseline:
    """A clustering baseline (:func:`run_baseline`) in the harness's protocol."""

    def __init__(self, name: str, config: Config):
        self.name, self.config = name, config

    def train(self, split, seed: int, progress: bool = True) -> Trained:
        return Trained(run_baseline(self.name, replace(self.config, seed=seed), split, progress))


def methods(config: Config):
    """The methods of ``config.methods``."""
    sans = {"SAN-GMM": {}, "SVAE": {"svae": True}, "SAN-GMM (classic start)": {"classic": True}}
    names = config.methods
    if config.likelihood != "gaussian" and names == METHODS:  # the classic start is a Gaussian mixture
        names = tuple(name for name in names if name != "SAN-GMM (classic start)")
    return [SAN(config, **sans[name]) if name in sans else Baseline(name, config) for name in names]


COLUMNS = ("nmi", "ari", "accuracy", "clusters_used", "test_log_likelihood", "reconstruction_error", "seconds")
COLUMNS += ("diverged",)  # shown where a method diverged


def median_rows(per_seed: Dict[int, Dict[str, dict]]) -> Dict[str, dict]:
    """
    :func:`harness.median_rows` (seeds on which a method diverged left out and counted in
    ``diverged``), with the fewest clusters used and the worst NMI (``nmi_min``) over seeds.
    """
    medians = harness.median_rows(list(per_seed.values()))
    for method, median in medians.items():
        rows = [seed_rows[method] for seed_rows in per_seed.values() if not seed_rows[method].get("diverged")]
        if rows:
            median["clusters_used"] = min(row["clusters_used"] for row in rows)
            median["nmi_min"] = min(row["nmi"] for row in rows)
    return medians


@torch.no_grad()
def latent_means(guide, y) -> torch.Tensor:
    """The SIN posterior mean of ``x`` of every point, ``Σ_k r_nk E[x_n | z_n = k]``, shape ``(N, D)``."""
    post = guide.local_posterior(y)
    return (post.probs[..., None] * post.loc).sum(-2)


@torch.no_grad()
def write_figures(results: Results, config: Config, split, model, guide, histories, samples_per_component: int = 10):
    """
    ``component_means.png`` (the decoded mean of each component), ``component_samples.png``
    (decoded samples of each component, a row each), ``embedding.png`` (the test set's latent
    means, by cluster and by digit) and ``nmi.png`` (test NMI during training).
    """
    shape = DATASETS[config.data].image_shape
    params = model.pgm.point_estimate(guide.global_posterior())
    weights = params.weights
    order = torch.argsort(weights, descending=True)
    K = len(weights)
    fig = new_figure(width=min(1.1 * K, 14), height=2.0)
    plot_component_means(
        fig.axes[0],
        model.component_means(guide),
        weights,
        shape,
        f"SAN-GMM on {config.data}: decoded component means (id: weight)",
    )
    results.figure(fig, "component_means.png")

    ids = order.repeat_interleave(samples_per_component)
    samples, _, _ = model.generate(guide, component_ids=ids.to(weights.device))
    fig = new_figure(width=0.55 * samples_per_component + 1, height=0.55 * K + 0.6)
    plot_image_rows(
        fig.axes[0], samples.reshape(K, samples_per_component, -1), shape,
        row_labels=[f"{int(k)} ({float(weights[k]):.2f})" for k in order],
        label_colours=[component_colours(K)[int(k)] for k in order],
        title="samples of each component (decoder means)",
    )
    results.figure(fig, "component_samples.png")

    points = latent_means(guide, split.test)
    clusters = model.cluster(guide, split.test)
    try:
        xy, how = embed_2d(points, "tsne", config.seed), "t-SNE"
    except ImportError:
        xy, how = embed_2d(points, "pca"), "PCA"
    fig = new_figure(ncols=2, width=4.5, height=4.5)
    plot_embedding(fig.axes[0], xy, clusters, K, f"test set by SAN cluster ({how} of latent means)")
    plot_embedding(fig.axes[1], xy, split.test_labels, 10, "test set by true digit", labels=split.test_labels)
    results.figure(fig, "embedding.png")

    fig = new_figure()
    curves = {name: (h.eval_steps, [e["nmi"] for e in h.evals]) for name, h in histories.items() if h is not None}
    plot_curves(fig.axes[0], curves, ylabel="test NMI", log=False)
    fig.axes[0].set_title(f"{config.data}: test NMI during training (after pre-training)")
    results.figure(fig, "nmi.png")


def main(argv=None):
    command = parser(__doc__, None, seeds=1, iterations=None, methods=METHODS)
    command.add_argument("--data", choices=sorted(DATASETS), default="digits")
    args = command.parse_args(argv)
    overrides = {"data": args.data}
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    if args.methods:
        overrides["methods"] = tuple(args.methods)
    config = Config.quick(**overrides) if args.quick else Config(**overrides)
    results = command.results(args, args.out or Path("results") / args.data)
    device = torch.device(args.device)

    split = on_device(load_data(config), device)
    per_seed, figures = {}, None
    for seed in range(args.seeds):
        trained = compare(methods(config), split, seed, args.progress)
        per_seed[seed] = {name: t.metrics for name, t in trained.items()}
        print(f"\n{config.data}, seed {seed}:\n{markdown_table(per_seed[seed], COLUMNS)}", flush=True)
        if seed == 0 and "SAN-GMM" in trained and trained["SAN-GMM"].model is not None:
            svae = trained.get("SVAE")
            figures = (trained["SAN-GMM"], svae.history if svae is not None else None)
    medians = median_rows(per_seed)
    seed_tables = [f"Seed {seed}:\n\n{markdown_table(rows, COLUMNS)}" for seed, rows in per_seed.items()]
    results.write(
        f"{config.data}: median over {args.seeds} seed(s)",
        [markdown_table(medians, COLUMNS + ("nmi_min",)), *seed_tables],
        {"config": asdict(config), "seeds": args.seeds, "device": str(device), "median": medians, "per_seed": per_seed},
    )
    if figures is not None:
        san, svae_history = figures
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # matplotlib's layout notes on tiny figures
            write_figures(results, config, split, *san.model, {"SAN-GMM": san.history, "SVAE": svae_history})
    return medians, per_seed


if __name__ == "__main__":
    main()
