"""
The SAN paper's figures, one command each::

    python examples/paper.py fig2a   # pinwheel: test MSE vs iterations, GMM / SVAE / SAN
    python examples/paper.py fig2b   # Auto MPG: test MSE vs iterations, GMM / VAE / SAN
    python examples/paper.py fig2c   # noisy pinwheel: test MSE vs outlier ratio, GMM / SAN-GMM / SAN-TMM
    python examples/paper.py fig3    # generative samples of GMM, SAN, VAE on pinwheel and Auto

Each writes ``<figure>.png``, ``<figure>.json`` (every setting used, every seed's
metrics and curves) and ``<figure>.md`` (medians over seeds) to ``--out``.
``--long`` trains for 10^4 iterations (at least), ``--iterations`` and ``--seeds``
override the data set's settings, ``--device cuda`` runs on the GPU, and
``--quick`` (or the environment variable ``CI``) shrinks every run.

The deep methods share their starting point: SAN, the SVAE and the VAE use the
same networks (:func:`pinwheel.build_networks`: standardised
networks with a decoder floor; on pinwheel the decoder's hidden layers start at
LeCun's scale, ``--decoder-body-gain``), and SAN and the SVAE the same mixture
components on the k-means clusters of the encoded data and the same natural-step
warm-up, so the curves differ only by the inference each method makes.

Metrics (docs/mathematics.rst, *Evaluation and the paper's settings*):

* ``test_mse`` — the paper's weighted reconstruction error of the test points;
* ``test_log_likelihood`` — the mean over test points of an importance-sampled
  ``log p(y)`` (exact for the GMM), with its standard error over test points
  (``_se``) and the Monte Carlo standard error of the mean (``_mc_se``); the
  differences of SAN's to every other method are paired per test point;
* ``imputation_mse`` — each feature in turn is hidden and imputed by its
  conditional mean given the others under the learned model (importance
  sampling of the latent variables given the observed features alone; the GMM's
  exact Gaussian conditional), the squared error averaged over features; beside
  zero-fill and filling in the training mean;
* ``coverage`` — the share of training points with one of 2,000 generated
  samples within ``coverage_radius``;
* ``purity`` / ``nmi`` of the most probable component against the true labels.
"""

import argparse
import math
import statistics
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Optional

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_sin.datasets import auto_mpg, noisy_pinwheel, pinwheel
from pyro_sin.evaluation import Estimate
from pyro_sin.metrics import cluster_purity, normalized_mutual_info, sample_coverage

import pinwheel as pinwheel_experiment
from baselines import BayesianGMM
from harness import Results, compare, markdown_table, median_rows, on_device, parser
from pinwheel import Config, PinwheelMethod, natural_schedule
from plotting import new_figure, plot_curves, plot_generative_samples, plot_points_with_range, shared_limits

LONG_ITERATIONS = 10_000


@dataclass
class Setting(Config):
    """
    One data set's settings (docs/mathematics.rst, *Evaluation and the paper's settings*): the
    pinwheel experiment's :class:`~pinwheel.Config` at the paper's 2,000 iterations and with
    small decoder weights unless a data set says otherwise, with the seeds and the comparison's
    scores. The raw-data GMM takes the natural step without the warm-up.
    """

    iterations: int = 2000
    decoder_body_gain: Optional[float] = None
    seeds: int = 5
    imputation_samples: int = 1000


#: on pinwheel the decoders' hidden layers (the same for the VAE, the SVAE and SAN) start at LeCun's scale:
#: with every weight small a decoder stays nearly linear for thousands of steps, and SAN's samples miss the
#: curled ends of the arms (pyro_sin.nn.TwoHeadedMLP)
PINWHEEL_DECODER_BODY_GAIN = Config().decoder_body_gain  # the main job's

SETTINGS = {
    "pinwheel": Setting(decoder_body_gain=PINWHEEL_DECODER_BODY_GAIN),
    "auto": Setting(
        latent_dim=6, batch_size=64, lr=3e-4, natural_lr=0.2, natural_decay=0.95, iterations=20000, coverage_radius=5.0
    ),
    # the Student-t mixture learns its components by Adam, not by natural steps: both mixtures start at random
    "noisy": Setting(hidden=40, iterations=5000, seeds=3, component_init="random"),
}
QUICK = dict(iterations=150, seeds=2, warmup=50, curve_samples=5, test_samples=20, imputation_samples=200)


def eval_steps(iterations: int):
    """0 and a log-spaced grid up to ``iterations`` (1, 2, 5, 10, 20, 50, ...)."""
    steps = {0, iterations}
    scale = 1
    while scale <= iterations:
        steps.update(s for s in (scale, 2 * scale, 5 * scale) if s <= iterations)
        scale *= 10
    return sorted(steps)


def _estimate(per_point: torch.Tensor, mc_stderr=None) -> Estimate:
    mc_stderr = torch.zeros_like(per_point) if mc_stderr is None else mc_stderr
    return Estimate(float(per_point.mean()), float(per_point.std() / math.sqrt(len(per_point))), per_point, mc_stderr)


# ----- the methods: pinwheel.py's, and a Bayesian GMM on the raw data --------------------------


class TrainedGMM:
    """A Bayesian GMM on the raw data behind the scores of the deep methods (:class:`pinwheel.TrainedMixture`)."""

    def __init__(self, gmm: BayesianGMM):
        self.gmm = gmm

    def test_mse(self, y, num_samples) -> float:
        return self.gmm.test_mse(y, num_samples)

    @torch.no_grad()
    def reconstruction_error(self, y, num_samples) -> Estimate:
        """The weighted error of regenerating each point from its clusters, per point."""
        _, components = self.gmm._components()
        samples = components.sample((num_samples, len(y)))  # (S, N, K, D)
        error = (samples - y[:, None]).pow(2).sum(-1).mean(0)  # (N, K)
        return _estimate((self.gmm.log_responsibilities(y).exp() * error).sum(-1))

    def log_likelihood(self, y, num_samples) -> Estimate:
        return _estimate(self.gmm.log_density(y))  # exact: no Monte Carlo error

    def cluster(self, y):
        return self.gmm.cluster(y)

    def components_in_use(self):
        weights, _ = self.gmm._components()
        return int((weights >= 0.01).sum())

    def generate(self, num_samples):
        return self.gmm.generate(num_samples)

    def impute(self, y, observed, num_samples=None):
        return self.gmm.impute(y, observed)


class NaturalSteps:
    """
    Minibatch natural-gradient steps of a :class:`~baselines.BayesianGMM` in the shape of
    :class:`~pyro.infer.SVI` (``step(y, indices) -> loss``), so that :func:`~pyro_sin.training.fit`
    trains it as it trains the deep methods. The loss is the minibatch's negative
    log-likelihood under the mixture before the step, scaled to the whole data set.
    """

    def __init__(self, gmm: BayesianGMM, num_data: int, schedule):
        self.gmm, self.num_data, self.schedule, self.t = gmm, num_data, schedule, 0

    def step(self, y, indices=None) -> float:
        scale = self.num_data / len(y)
        loss = -scale * float(self.gmm.log_density(y).sum())
        self.gmm.step(y, scale, self.schedule(self.t))
        self.t += 1
        return loss


def raw_gmm(setting: Setting, train):
    """A Bayesian GMM on the raw data, started on random points (no warm-up): ``(trained model, trainer)``."""
    gmm = BayesianGMM(setting.num_components, train.shape[-1])
    gmm.pgm.to(train.device)
    gmm.initialize(train, torch.Generator().manual_seed(setting.seed))
    return TrainedGMM(gmm), NaturalSteps(gmm, len(train), natural_schedule(setting, warmup=False))


def _student_t_san(setting: Setting, train):
    """SAN with a Student-t mixture and the SIN's own (free) factor."""
    return pinwheel_experiment.san(replace(setting, factor="free"), train, mixture="tmm")


#: name -> ``build(setting, train) -> (trained model, trainer)``
BUILDERS = {
    "GMM": raw_gmm,
    "VAE": pinwheel_experiment.vae,
    "SVAE": partial(pinwheel_experiment.san, svae=True),
    "SAN": pinwheel_experiment.san,
    "SAN-GMM": pinwheel_experiment.san,
    "SAN-TMM": _student_t_san,
}


def make_method(name: str, setting: Setting) -> PinwheelMethod:
    """A method of the comparisons: its test-MSE curve on the logarithmic grid, scored by :func:`full_metrics`."""
    if name not in BUILDERS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(BUILDERS)}")
    return PinwheelMethod(name, setting, BUILDERS[name], score=full_metrics, eval_steps=eval_steps)


# ----- metrics ---------------------------------------------------------------------------


def _one_hidden(num_features: int, d: int, device) -> torch.Tensor:
    observed = torch.ones(num_features, dtype=torch.bool, device=device)
    observed[d] = False
    return observed


def imputation_error(impute, y) -> float:
    """Squared error of each feature imputed from the others by ``impute(y, observed)``, averaged over features."""
    errors = []
    for d in range(y.shape[-1]):
        imputed = impute(y, _one_hidden(y.shape[-1], d, y.device))
        errors.append(float((imputed[:, d] - y[:, d]).pow(2).mean()))
    return statistics.mean(errors)


def fill_in_baselines(split) -> dict:
    """The imputation error of filling in zero and the training mean."""
    mean = split.train.mean(0)
    return {
        "zero-fill": {"imputation_mse": float(split.test.pow(2).mean())},
        "mean-fill": {"imputation_mse": float((split.test - mean).pow(2).mean())},
    }


def full_metrics(method, split, setting: Setting):
    """:returns: ``(metrics, {"test_log_likelihood": per-point values})``."""

    def impute(y, observed):
        return method.impute(y, observed, setting.imputation_samples)

    error = method.reconstruction_error(split.test, setting.test_samples)
    ll = method.log_likelihood(split.test, setting.test_samples)
    samples, _, _ = method.generate(setting.generated_samples)
    metrics = {
        "test_mse": error.mean,
        "test_mse_se": error.stderr,
        "test_log_likelihood": ll.mean,
        "test_log_likelihood_se": ll.stderr,
        "test_log_likelihood_mc_se": float(ll.mc_stderr.pow(2).sum().sqrt() / len(ll.per_point)),
        "imputation_mse": imputation_error(impute, split.test),
        "coverage": sample_coverage(split.train, samples, setting.coverage_radius),
        "sample_precision": sample_coverage(samples, split.train, setting.coverage_radius),
    }
    clusters = method.cluster(split.test)
    if clusters is not None:
        metrics["purity"] = cluster_purity(clusters, split.test_labels)
        metrics["nmi"] = normalized_mutual_info(clusters, split.test_labels)
    in_use = method.components_in_use()
    if in_use is not None:
        metrics["components_in_use"] = float(in_use)
    return metrics, {"test_log_likelihood": ll.per_point}


def _paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean and standard error of ``a - b`` over the same test points."""
    diff = a - b
    return {"mean": float(diff.mean()), "se": float(diff.std() / math.sqrt(len(diff)))}


def over_seeds(names, setting: Setting, split, progress=True, reference=None):
    """
    Every method over ``setting.seeds`` seeds: the median test-MSE curves with their range,
    the median metrics, every seed's metrics and curve, and the paired test log-likelihood
    differences of ``reference`` (default: the last method) to each other method.

    :returns: ``(curves, finals, per_seed, differences, methods)``; ``methods`` holds seed 0's models.
    """
    reference = reference or names[-1]
    methods = [make_method(name, setting) for name in names]
    runs = [compare(methods, split, seed, progress, keep_going=False) for seed in range(setting.seeds)]
    curves, per_seed = {}, {}
    for name in names:
        steps = runs[0][name].history.eval_steps
        array = np.array([[e["test_mse"] for e in run[name].history.evals] for run in runs])
        curves[name] = (steps, np.median(array, 0).tolist(), array.min(0).tolist(), array.max(0).tolist())
        per_seed[name] = {"metrics": [run[name].metrics for run in runs], "curves": array.tolist()}
    finals = median_rows([{name: run[name].metrics for name in names} for run in runs])
    differences = {}
    for name in names:
        if name != reference:
            seeds = [
                _paired_difference(
                    run[reference].per_point["test_log_likelihood"], run[name].per_point["test_log_likelihood"]
                )
                for run in runs
            ]
            differences[f"{reference} - {name}"] = {
                "median": statistics.median(s["mean"] for s in seeds),
                "median_se": statistics.median(s["se"] for s in seeds),
                "per_seed": seeds,
            }
    return curves, finals, per_seed, differences, {name: runs[0][name].model for name in names}


# ----- writing results ---------------------------------------------------------------------

_COLUMNS = [
    ("test_mse", "test MSE"),
    ("test_log_likelihood", "test log-lik. ± s.e."),
    ("imputation_mse", "imputation MSE"),
    ("coverage", "coverage"),
    ("sample_precision", "sample precision"),
    ("purity", "purity"),
    ("nmi", "NMI"),
    ("components_in_use", "components"),
    ("ms_per_step", "ms / step"),
]


def _percent(key):
    return lambda row: f"{100 * row[key]:.1f}%"


#: the log-likelihood with its standard error over test points; shares in percent
_FORMATS = {
    "test_log_likelihood": lambda row: f"{row['test_log_likelihood']:.3f} ± {row['test_log_likelihood_se']:.3f}",
    "coverage": _percent("coverage"),
    "sample_precision": _percent("sample_precision"),
}


def results_table(rows: dict) -> str:
    """A Markdown table of medians; the log-likelihood with its standard error over test points."""
    return markdown_table(rows, _COLUMNS, _FORMATS)


def differences_table(differences: dict) -> str:
    lines = ["| difference | median over seeds | median s.e. (paired) |", "|---|---|---|"]
    for name, d in differences.items():
        lines.append(f"| {name} | {d['median']:+.3f} | {d['median_se']:.3f} |")
    return "\n".join(lines)


_NOTES = (
    "Medians over seeds. Test log-likelihood: mean over test points of an importance-sampled "
    "log p(y) (exact for the GMM) ± its standard error over test points; imputation MSE: each "
    "feature hidden in turn and imputed by its conditional mean given the others; coverage: share "
    "of training points with a generated sample within the coverage radius ({radius:g}) among "
    "{samples} samples (decoder means; the GMM's draws); sample precision: share of those samples "
    "within the radius of a training point."
)


# ----- the figures ----------------------------------------------------------------------


def fig2_curves(results: Results, data_name: str, split, names, setting: Setting, progress):
    curves, finals, per_seed, differences, methods = over_seeds(names, setting, split, progress)
    fig = new_figure()
    ax = fig.axes[0]
    plot_curves(ax, curves, seeds=setting.seeds, xlabel="iteration (0: before training)")
    ax.set_title(f"{data_name}: test MSE, median and range of {setting.seeds} seeds", fontsize="medium")
    results.figure(fig, f"{results.stem}.png")
    rows = {**finals, **fill_in_baselines(split)}
    notes = _NOTES.format(radius=setting.coverage_radius, samples=setting.generated_samples)
    results.write(
        f"{data_name}: {setting.iterations} iterations, {setting.seeds} seeds",
        [notes, results_table(rows), "Paired test log-likelihood differences:", differences_table(differences)],
        {
            "figure": f"{results.stem}.png",
            "config": asdict(setting),
            "metrics": rows,
            "log_likelihood_differences": differences,
            "curves": curves,
            "per_seed": per_seed,
        },
    )
    return curves, finals, methods


#: the paper's natural steps on the noisy pinwheel: larger for few outliers
def noisy_natural_lr(ratio: float) -> float:
    return 0.005 if ratio <= 0.3 else 0.0005


def fig2c(results: Results, setting: Setting, ratios, progress):
    names = ["GMM", "SAN-GMM", "SAN-TMM"]
    rows, runs, configs, differences = {}, {name: [] for name in names}, {}, {}
    for ratio in ratios:
        used = replace(setting, natural_lr=noisy_natural_lr(ratio))
        configs[f"{ratio:g}"] = asdict(used)
        _, finals, per_seed, diffs, _ = over_seeds(
            names, used, on_device(noisy_pinwheel(ratio, seed=0), used.device), progress
        )
        for name in names:
            rows[f"{name} @ {100 * ratio:g}%"] = finals[name]
            runs[name].append([m["test_mse"] for m in per_seed[name]["metrics"]])
        differences.update({f"{k} @ {100 * ratio:g}%": v for k, v in diffs.items()})
    fig = new_figure()
    ax = fig.axes[0]
    percent = [100 * r for r in ratios]
    for i, name in enumerate(names):
        shift = (i - 1) * 0.6  # side by side, so that the error bars do not hide each other
        plot_points_with_range(ax, [p + shift for p in percent], runs[name], f"{name} ({setting.seeds} seeds)")
    ax.set_yscale("log")
    ax.set_xticks(percent)
    ax.set_xlabel("outliers in the training set (%)")
    ax.set_ylabel("test MSE (median; bars: min to max over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Noisy pinwheel, {setting.iterations} iterations", fontsize="medium")
    results.figure(fig, "fig2c.png")
    notes = _NOTES.format(radius=setting.coverage_radius, samples=setting.generated_samples)
    notes += " Natural step β: " + ", ".join(f"{100 * r:g}% outliers: {noisy_natural_lr(r):g}" for r in ratios) + "."
    results.write(
        f"Noisy pinwheel: {setting.iterations} iterations, {setting.seeds} seeds",
        [notes, results_table(rows), "Paired test log-likelihood differences:", differences_table(differences)],
        {
            "figure": "fig2c.png",
            "config_by_ratio": configs,
            "ratios": list(ratios),
            "metrics": rows,
            "test_mse_by_ratio": {n: [statistics.median(r) for r in runs[n]] for n in names},
            "test_mse_per_seed_by_ratio": runs,
            "log_likelihood_differences": differences,
        },
    )
    return runs


def _pca(data, *others):
    """The data and ``others`` on the data's first two principal axes."""
    mean = data.mean(0)
    _, _, v = torch.linalg.svd(data - mean, full_matrices=False)
    return [(x - mean) @ v[:2].T for x in (data,) + others]


def fig3(results: Results, settings, splits, seed: int, progress):
    """:param splits: ``{setting key: (display name, split)}``."""
    names = ["GMM", "SAN", "VAE"]
    shown_data = {
        key: _pca(split.train)[0] if split.train.shape[-1] > 2 else split.train for key, (_, split) in splits.items()
    }
    limits = {key: shared_limits(data) for key, data in shown_data.items()}
    aspect = [(y[1] - y[0]) / (x[1] - x[0]) for x, y in limits.values()]  # rows as tall as their data
    fig = Figure(figsize=(4.6 * len(names), 4.6 * sum(aspect) + 1.2), layout="constrained")
    axes = fig.subplots(len(splits), len(names), squeeze=False, gridspec_kw={"height_ratios": aspect})
    rows, configs = {}, {}
    for row, (key, (data_name, split)) in enumerate(splits.items()):
        setting = settings[key]
        configs[key] = asdict(setting)
        panels = []
        for name in names:
            method, _, _ = make_method(name, setting).fit(split, seed, progress)
            samples, components, weights = method.generate(setting.generated_samples)
            ll = method.log_likelihood(split.test, setting.test_samples)
            rows[f"{name} on {data_name}"] = {
                "coverage": sample_coverage(split.train, samples, setting.coverage_radius),
                "sample_precision": sample_coverage(samples, split.train, setting.coverage_radius),
                "test_log_likelihood": ll.mean,
                "test_log_likelihood_se": ll.stderr,
                "components_in_use": float(method.components_in_use() or 1),
                "weights": weights.tolist(),
            }
            panels.append((name, samples, components, weights))
        projected = split.train.shape[-1] > 2
        for col, (name, samples, components, weights) in enumerate(panels):
            shown = _pca(split.train, samples)[1] if projected else samples
            coverage = rows[f"{name} on {data_name}"]["coverage"]
            plot_generative_samples(
                axes[row, col],
                shown_data[key],
                shown,
                components,
                weights,
                f"{name} on {data_name}: coverage {100 * coverage:.1f}%",
                labels=split.train_labels,
                limits=limits[key],
                axis_labels=("PC 1", "PC 2") if projected else ("$y_1$", "$y_2$"),
                legend=col == 0,
            )
    fig.suptitle(
        f"Samples of the learned models (seed {seed}); coverage: training points with one of "
        f"{settings['pinwheel'].generated_samples} samples within the coverage radius",
        fontsize="medium",
    )
    results.figure(fig, "fig3.png", dpi=120)
    radii = ", ".join(f"{splits[k][0]}: {settings[k].coverage_radius:g}" for k in splits)
    results.write(
        f"Generative samples (seed {seed})",
        [
            f"Coverage radius {radii} (data units; Auto MPG in its 6 standardised features). "
            "Log-likelihood ± s.e. over test points.",
            results_table(rows),
        ],
        {"figure": "fig3.png", "seed": seed, "config": configs, "metrics": rows},
    )
    return rows


_UNSET = object()


def _gain(text: str) -> Optional[float]:
    """``--decoder-body-gain``: a positive number, or ``none``."""
    if text.lower() == "none":
        return None
    try:
        gain = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'none', got {text!r}") from None
    if not gain > 0:
        raise argparse.ArgumentTypeError(f"the gain must be positive, got {text!r}")
    return gain


def main(argv=None):
    choices = ["GMM", "VAE", "SVAE", "SAN"]  # fig2a's; fig2b's without the SVAE
    command = parser(__doc__, "results/paper", seed=0, seeds=None, iterations=None, methods=choices)
    command.add_argument("figure", choices=["fig2a", "fig2b", "fig2c", "fig3"])
    command.add_argument("--long", action="store_true", help=f"train for at least {LONG_ITERATIONS} iterations")
    command.add_argument(
        "--decoder-body-gain",
        type=_gain,
        default=_UNSET,
        help=f"LeCun-scaled hidden layers in the decoders with this gain, or 'none' for small weights "
        f"(default: {PINWHEEL_DECODER_BODY_GAIN:g} on pinwheel, none on Auto MPG and the noisy pinwheel)",
    )
    command.add_argument(
        "--auto-data", help="a file in the format of UCI's auto-mpg.data (default: the copy shipped with pyro_sin)"
    )
    args = command.parse_args(argv)
    overrides = dict(QUICK) if args.quick else {}
    overrides["device"] = args.device
    if args.decoder_body_gain is not _UNSET:
        overrides["decoder_body_gain"] = args.decoder_body_gain
    overrides.update({k: v for k, v in (("iterations", args.iterations), ("seeds", args.seeds)) if v is not None})
    settings = {k: replace(s, **overrides) for k, s in SETTINGS.items()}
    if args.long:
        settings = {k: replace(s, iterations=max(s.iterations, LONG_ITERATIONS)) for k, s in settings.items()}
    results = command.results(args, stem=args.figure)

    def data(split):
        return on_device(split, args.device)

    def methods(default):
        if args.methods is None:
            return default
        if set(args.methods) - set(default) or "SAN" not in args.methods:
            command.error(f"--methods: choose among {default}, SAN included; got {args.methods}")
        return [m for m in default if m in args.methods]  # SAN last: the reference of the paired differences

    if args.figure == "fig2a":
        names = methods(["GMM", "VAE", "SVAE", "SAN"])
        return fig2_curves(results, "Pinwheel", data(pinwheel()), names, settings["pinwheel"], args.progress)
    if args.figure == "fig2b":
        split = data(auto_mpg(args.auto_data))
        names = methods(["GMM", "VAE", "SAN"])
        return fig2_curves(results, "Auto MPG", split, names, settings["auto"], args.progress)
    if args.figure == "fig2c":
        ratios = (0.3,) if args.quick else (0.1, 0.3, 0.5, 0.7)
        return fig2c(results, settings["noisy"], ratios, args.progress)
    splits = {"pinwheel": ("pinwheel", data(pinwheel())), "auto": ("Auto MPG", data(auto_mpg(args.auto_data)))}
    return fig3(results, settings, splits, args.seed, args.progress)


if __name__ == "__main__":
    main()
