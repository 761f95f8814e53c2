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
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.datasets import auto_mpg, noisy_pinwheel, pinwheel
from pyro_sin.datasets.pinwheel import LabelledSplit
from pyro_sin.elbo import SINELBO
from pyro_sin.evaluation import Estimate
from pyro_sin.guide import SVAEGuide
from pyro_sin.initialization import encoded_components
from pyro_sin.metrics import cluster_purity, normalized_mutual_info, sample_coverage
from pyro_sin.models import DeepLatentMixture
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import GaussianMixture, StudentTMixture
from pyro_sin.standardize import standardized_autoencoder
from pyro_sin.training import components_in_use, minibatch_indices

import pinwheel as pinwheel_experiment
from baselines import VAE, BayesianGMM
from plotting import new_figure, plot_curves, plot_generative_samples, plot_points_with_range, shared_limits

_NETWORKS = pinwheel_experiment.Config()  # the shared networks' defaults, one source of truth
LONG_ITERATIONS = 10_000


@dataclass
class Setting:
    """One data set's settings (docs/mathematics.rst, *Evaluation and the paper's settings*)."""

    num_components: int = 10
    latent_dim: int = 2
    hidden: int = 50
    batch_size: int = 100
    lr: float = 0.01
    natural_lr: float = 0.1
    natural_decay: float = 1.0  # β_t = natural_lr · natural_decay^(t / 1000) after the warm-up
    num_particles: int = 10
    iterations: int = 2000
    seeds: int = 5
    student_t_df: float = 5.0
    # the shared starting point of the deep methods
    init: str = _NETWORKS.init
    spread: float = _NETWORKS.spread
    min_scale: float = _NETWORKS.min_scale
    init_noise: float = _NETWORKS.init_noise
    warmup: int = _NETWORKS.warmup  # steps of β = 0 for SAN and the SVAE (not the raw-data GMM)
    component_init: str = _NETWORKS.component_init  # "kmeans" on the encoded data, or "random"
    decoder_body_gain: Optional[float] = None  # LeCun-scaled hidden layers in the decoder (pyro_sin.nn.TwoHeadedMLP)
    # evaluation
    curve_samples: int = 10
    test_samples: int = 100
    generated_samples: int = 2000
    coverage_radius: float = 1.0
    imputation_samples: int = 1000
    device: str = "cpu"

    def schedule(self, warmup: bool = True) -> "NaturalSchedule":
        return NaturalSchedule(self.natural_lr, self.natural_decay, self.warmup if warmup else 0)

    def networks(self) -> pinwheel_experiment.Config:
        """The pinwheel experiment's configuration of the shared networks, for its ``build_networks``."""
        return replace(
            _NETWORKS,
            latent_dim=self.latent_dim,
            hidden=self.hidden,
            init=self.init,
            spread=self.spread,
            min_scale=self.min_scale,
            init_noise=self.init_noise,
        )


def build_networks(setting: Setting, train):
    """The pinwheel experiment's networks, with the decoder's hidden layers LeCun-scaled when asked."""
    if setting.decoder_body_gain is None:
        return pinwheel_experiment.build_networks(setting.networks(), train)
    if setting.init != "standardized":
        raise ValueError("decoder_body_gain needs the standardized networks")
    return standardized_autoencoder(
        train,
        setting.latent_dim,
        (setting.hidden,) * 2,
        spread=setting.spread,
        min_scale=setting.min_scale,
        init_noise=setting.init_noise,
        body_gain=setting.decoder_body_gain,
    )


class NaturalSchedule:
    r"""``β_t = 0`` for ``t <`` warm-up, then ``natural_lr · decay^(t / 1000)``."""

    def __init__(self, natural_lr: float, decay: float = 1.0, warmup: int = 0):
        if not (0 < natural_lr <= 1 and 0 < decay <= 1 and warmup >= 0):
            raise ValueError("need 0 < natural_lr <= 1, 0 < decay <= 1 and warmup >= 0")
        self.natural_lr, self.decay, self.warmup = natural_lr, decay, warmup

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.warmup else self.natural_lr * math.pow(self.decay, step / 1000)


#: on pinwheel the decoders' hidden layers (the same for the VAE, the SVAE and SAN) start at LeCun's scale:
#: with every weight small a decoder stays nearly linear for thousands of steps, and SAN's samples miss the
#: curled ends of the arms (pyro_sin.nn.TwoHeadedMLP)
PINWHEEL_DECODER_BODY_GAIN = 1.0

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


# ----- methods, all behind one interface ---------------------------------------------


class SANMethod:
    """SAN (or the SVAE) with a latent mixture, trained by SINELBO and NaturalAdam."""

    def __init__(self, setting: Setting, train, seed: int, pgm="gmm", guide="sin"):
        D, K = setting.latent_dim, setting.num_components
        if pgm == "gmm":
            prior = GaussianMixture(K, D)
        else:
            prior = StudentTMixture(K, D, df=setting.student_t_df)
        prior = prior.to(train.device)
        encoder, decoder = build_networks(setting, train)
        self.model = DeepLatentMixture(prior, decoder, len(train))
        init_natural = None
        if setting.component_init == "kmeans":
            if pgm != "gmm":
                raise ValueError(
                    "k-means components need a Gaussian mixture (the Student-t components are learned by Adam)"
                )
            init_natural = encoded_components(prior, encoder, train, torch.Generator().manual_seed(seed))
        elif setting.component_init != "random":
            raise ValueError(f"unknown component_init {setting.component_init!r}")
        if guide == "svae":
            self.guide = SVAEGuide(
                self.model, prior, encoder, create_plates=self.model.create_plates, init_natural=init_natural
            )
        else:
            factor = "free" if pgm == "tmm" else "tied"
            self.guide = self.model.make_guide(encoder, factor=factor, init_natural=init_natural)
        self.setting = setting
        self.svi = SVI(
            self.model,
            self.guide,
            NaturalAdam({"lr": setting.lr}, natural_lr=setting.schedule()),
            SINELBO(num_particles=setting.num_particles, max_plate_nesting=1),
        )

    def step(self, y, indices):
        return self.svi.step(y, indices=indices)

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
        return self.model.generate(self.guide, num_samples)

    def impute(self, y, observed):
        return self.model.impute(self.guide, y, observed, self.setting.imputation_samples).values


class VAEMethod:
    def __init__(self, setting: Setting, train, seed: int):
        encoder, decoder = build_networks(setting, train)
        self.vae = VAE(encoder, decoder, len(train))
        self.setting = setting
        elbo = Trace_ELBO(num_particles=setting.num_particles, vectorize_particles=True, max_plate_nesting=1)
        self.svi = SVI(self.vae.model, self.vae.guide, pyro.optim.Adam({"lr": setting.lr}), elbo)

    def step(self, y, indices):
        return self.svi.step(y, indices=indices)

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

    def impute(self, y, observed):
        return self.vae.impute(y, observed, self.setting.imputation_samples).values


class GMMMethod:
    """A Bayesian GMM on the raw data, trained by minibatch natural-gradient steps (no warm-up)."""

    def __init__(self, setting: Setting, train, seed: int):
        self.gmm = BayesianGMM(setting.num_components, train.shape[-1])
        self.gmm.pgm.to(train.device)
        self.gmm.initialize(train, torch.Generator().manual_seed(seed))
        self.num_data, self.schedule, self.t = len(train), setting.schedule(warmup=False), 0

    def step(self, y, indices):
        self.gmm.step(y, self.num_data / len(y), self.schedule(self.t))
        self.t += 1

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

    def impute(self, y, observed):
        return self.gmm.impute(y, observed)


def make_method(name: str, setting: Setting, train, seed: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if name == "GMM":
        return GMMMethod(setting, train, seed)
    if name == "VAE":
        return VAEMethod(setting, train, seed)
    if name == "SVAE":
        return SANMethod(setting, train, seed, guide="svae")
    if name in ("SAN", "SAN-GMM"):
        return SANMethod(setting, train, seed)
    if name == "SAN-TMM":
        return SANMethod(setting, train, seed, pgm="tmm")
    raise ValueError(f"unknown method {name!r}")


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
    """:returns: ``(metrics, per-point test log-likelihoods)``."""
    error = method.reconstruction_error(split.test, setting.test_samples)
    ll = method.log_likelihood(split.test, setting.test_samples)
    samples, _, _ = method.generate(setting.generated_samples)
    metrics = {
        "test_mse": error.mean,
        "test_mse_se": error.stderr,
        "test_log_likelihood": ll.mean,
        "test_log_likelihood_se": ll.stderr,
        "test_log_likelihood_mc_se": float(ll.mc_stderr.pow(2).sum().sqrt() / len(ll.per_point)),
        "imputation_mse": imputation_error(method.impute, split.test),
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
    return metrics, ll.per_point


def train(name, setting: Setting, split, seed, progress=True, desc=""):
    """
    Trains one method for ``setting.iterations`` steps.

    :returns: ``(method, evaluation steps, test-MSE curve, seconds per step)``, the time
        excluding evaluations.
    """
    method = make_method(name, setting, split.train, seed)
    steps = eval_steps(setting.iterations)
    curve = [method.test_mse(split.test, setting.curve_samples)]
    batches = minibatch_indices(len(split.train), setting.batch_size, torch.Generator().manual_seed(seed))
    seconds = 0.0
    bar = tqdm(
        range(1, setting.iterations + 1), desc=desc or f"{name} seed {seed}", disable=not progress, mininterval=1
    )
    for t in bar:
        start = time.perf_counter()
        idx = next(batches).to(split.train.device)
        method.step(split.train[idx], idx)
        seconds += time.perf_counter() - start
        if t in steps:
            curve.append(method.test_mse(split.test, setting.curve_samples))
    return method, steps, curve, seconds / max(setting.iterations, 1)


def _paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean and standard error of ``a - b`` over the same test points."""
    diff = a - b
    return {"mean": float(diff.mean()), "se": float(diff.std() / math.sqrt(len(diff)))}


def compare(names, setting: Setting, split, progress=True, reference=None):
    """
    Every method over ``setting.seeds`` seeds.

    :param str reference: the method whose test log-likelihood is compared with every
        other's, point by point on the same seed (default: the last of ``names``).
    :returns: ``(curves, finals, per_seed, differences, methods)``: curves as
        ``(steps, median, min, max)`` over seeds; the median of every metric; every
        seed's metrics and curve; the paired log-likelihood differences; seed 0's models.
    """
    reference = reference or names[-1]
    curves, finals, per_seed, methods, points = {}, {}, {}, {}, {}
    for name in names:
        runs, metrics = [], []
        for seed in range(setting.seeds):
            method, steps, curve, seconds = train(name, setting, split, seed, progress=progress)
            runs.append(curve)
            row, ll_points = full_metrics(method, split, setting)
            metrics.append({**row, "ms_per_step": 1e3 * seconds})
            points.setdefault(name, []).append(ll_points)
            methods.setdefault(name, method)
        array = np.array(runs)
        curves[name] = (steps, np.median(array, 0).tolist(), array.min(0).tolist(), array.max(0).tolist())
        finals[name] = {k: statistics.median(m[k] for m in metrics) for k in metrics[0]}
        per_seed[name] = {"metrics": metrics, "curves": runs}
    differences = {}
    for name in names:
        if name != reference:
            seeds = [_paired_difference(a, b) for a, b in zip(points[reference], points[name])]
            differences[f"{reference} - {name}"] = {
                "median": statistics.median(s["mean"] for s in seeds),
                "median_se": statistics.median(s["se"] for s in seeds),
                "per_seed": seeds,
            }
    return curves, finals, per_seed, differences, methods


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


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, float):
        return "—"
    if key == "test_log_likelihood":
        return f"{value:.3f} ± {row['test_log_likelihood_se']:.3f}"
    if key in ("coverage", "sample_precision"):
        return f"{100 * value:.1f}%"
    if key == "components_in_use":
        return f"{value:g}"
    return f"{value:.4g}"


def results_table(rows: dict) -> str:
    """A Markdown table of medians; the log-likelihood with its standard error over test points."""
    keys = [(k, title) for k, title in _COLUMNS if any(k in row for row in rows.values())]
    lines = ["| method | " + " | ".join(t for _, t in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row, k) for k, _ in keys) + " |")
    return "\n".join(lines)


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


def _write(out: Path, stem: str, title: str, sections, payload: dict):
    text = f"# {title}\n\n" + "\n\n".join(sections) + "\n"
    print(f"\n{text}")
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))


# ----- the figures ----------------------------------------------------------------------


def fig2_curves(out: Path, stem: str, data_name: str, split, names, setting: Setting, progress):
    curves, finals, per_seed, differences, methods = compare(names, setting, split, progress)
    fig = new_figure()
    ax = fig.axes[0]
    plot_curves(ax, curves, seeds=setting.seeds, xlabel="iteration (0: before training)")
    ax.set_title(f"{data_name}: test MSE, median and range of {setting.seeds} seeds", fontsize="medium")
    fig.savefig(out / f"{stem}.png", dpi=150)
    rows = {**finals, **fill_in_baselines(split)}
    notes = _NOTES.format(radius=setting.coverage_radius, samples=setting.generated_samples)
    _write(
        out,
        stem,
        f"{data_name}: {setting.iterations} iterations, {setting.seeds} seeds",
        [notes, results_table(rows), "Paired test log-likelihood differences:", differences_table(differences)],
        {
            "figure": f"{stem}.png",
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


def fig2c(out: Path, setting: Setting, ratios, progress):
    names = ["GMM", "SAN-GMM", "SAN-TMM"]
    rows, runs, configs, differences = {}, {name: [] for name in names}, {}, {}
    for ratio in ratios:
        used = replace(setting, natural_lr=noisy_natural_lr(ratio))
        configs[f"{ratio:g}"] = asdict(used)
        _, finals, per_seed, diffs, _ = compare(names, used, _on(noisy_pinwheel(ratio, seed=0), used.device), progress)
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
    fig.savefig(out / "fig2c.png", dpi=150)
    notes = _NOTES.format(radius=setting.coverage_radius, samples=setting.generated_samples)
    notes += " Natural step β: " + ", ".join(f"{100 * r:g}% outliers: {noisy_natural_lr(r):g}" for r in ratios) + "."
    _write(
        out,
        "fig2c",
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


def fig3(out: Path, settings, splits, seed: int, progress):
    """:param splits: ``{setting key: (display name, split)}``."""
    names = ["GMM", "SAN", "VAE"]
    shown_data = {
        key: _pca(split.train)[0] if split.train.shape[-1] > 2 else split.train for key, (_, split) in splits.items()
    }
    limits = {key: shared_limits(data) for key, data in shown_data.items()}
    aspect = [(y[1] - y[0]) / (x[1] - x[0]) for x, y in limits.values()]  # rows as tall as their data
    fig = Figure(figsize=(4.6 * len(names), 4.6 * sum(aspect) + 1.2), layout="constrained")
    axes = fig.subplots(len(splits), len(names), squeeze=False, gridspec_kw={"height_ratios": aspect})
    results, configs = {}, {}
    for row, (key, (data_name, split)) in enumerate(splits.items()):
        setting = settings[key]
        configs[key] = asdict(setting)
        panels = []
        for name in names:
            method, _, _, _ = train(name, setting, split, seed, progress=progress)
            samples, components, weights = method.generate(setting.generated_samples)
            ll = method.log_likelihood(split.test, setting.test_samples)
            results[f"{name} on {data_name}"] = {
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
            coverage = results[f"{name} on {data_name}"]["coverage"]
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
    fig.savefig(out / "fig3.png", dpi=120)
    radii = ", ".join(f"{splits[k][0]}: {settings[k].coverage_radius:g}" for k in splits)
    table = results_table(results)
    _write(
        out,
        "fig3",
        f"Generative samples (seed {seed})",
        [
            f"Coverage radius {radii} (data units; Auto MPG in its 6 standardised features). "
            "Log-likelihood ± s.e. over test points.",
            table,
        ],
        {"figure": "fig3.png", "seed": seed, "config": configs, "metrics": results},
    )
    return results


def _on(split: LabelledSplit, device) -> LabelledSplit:
    return LabelledSplit(*(t.to(device) for t in split))


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=["fig2a", "fig2b", "fig2c", "fig3"])
    parser.add_argument("--out", type=Path, default=Path("results/paper"))
    parser.add_argument("--iterations", type=int, help="override the data set's iterations")
    parser.add_argument("--long", action="store_true", help=f"train for at least {LONG_ITERATIONS} iterations")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--seed", type=int, default=0, help="fig3: the seed whose models are drawn")
    parser.add_argument("--methods", help="fig2a / fig2b: a comma-separated subset of the methods")
    parser.add_argument(
        "--decoder-body-gain",
        type=_gain,
        default=_UNSET,
        help=f"LeCun-scaled hidden layers in the decoders with this gain, or 'none' for small weights "
        f"(default: {PINWHEEL_DECODER_BODY_GAIN:g} on pinwheel, none on Auto MPG and the noisy pinwheel)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train and evaluate")
    parser.add_argument(
        "--auto-data", help="a file in the format of UCI's auto-mpg.data (default: the copy shipped with pyro_sin)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs (also when CI is set)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    quick = args.quick or "CI" in os.environ
    overrides = dict(QUICK) if quick else {}
    overrides["device"] = args.device
    if args.decoder_body_gain is not _UNSET:
        overrides["decoder_body_gain"] = args.decoder_body_gain
    overrides.update({k: v for k, v in (("iterations", args.iterations), ("seeds", args.seeds)) if v is not None})
    settings = {k: replace(s, **overrides) for k, s in SETTINGS.items()}
    if args.long:
        settings = {k: replace(s, iterations=max(s.iterations, LONG_ITERATIONS)) for k, s in settings.items()}
    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)

    def data(split):
        return _on(split, args.device)

    def methods(default):
        if args.methods is None:
            return default
        chosen = args.methods.split(",")
        unknown = sorted(set(chosen) - set(default))
        if unknown or "SAN" not in chosen:
            parser.error(f"--methods: choose among {default}, SAN included; got {args.methods}")
        return [m for m in default if m in chosen]  # SAN last: the reference of the paired differences

    if args.figure == "fig2a":
        names = methods(["GMM", "VAE", "SVAE", "SAN"])
        return fig2_curves(args.out, "fig2a", "Pinwheel", data(pinwheel()), names, settings["pinwheel"], progress)
    if args.figure == "fig2b":
        split = data(auto_mpg(args.auto_data))
        names = methods(["GMM", "VAE", "SAN"])
        return fig2_curves(args.out, "fig2b", "Auto MPG", split, names, settings["auto"], progress)
    if args.figure == "fig2c":
        ratios = (0.3,) if quick else (0.1, 0.3, 0.5, 0.7)
        return fig2c(args.out, settings["noisy"], ratios, progress)
    splits = {"pinwheel": ("pinwheel", data(pinwheel())), "auto": ("Auto MPG", data(auto_mpg(args.auto_data)))}
    return fig3(args.out, settings, splits, args.seed, progress)


if __name__ == "__main__":
    main()
