"""
The SAN paper's figures, one command each, with the settings listed in docs/mathematics.rst::

    python -m pyro_sin.experiments.paper fig2a   # pinwheel: test MSE vs iterations, GMM / SVAE / SAN
    python -m pyro_sin.experiments.paper fig2b   # Auto MPG: test MSE vs iterations, GMM / VAE / SAN
    python -m pyro_sin.experiments.paper fig2c   # noisy pinwheel: test MSE vs outlier ratio, GMM / SAN-GMM / SAN-TMM
    python -m pyro_sin.experiments.paper fig3    # generative samples of GMM, SAN, VAE on pinwheel and Auto

Each writes a figure, a JSON and a Markdown table (test MSE, test log-likelihood,
cluster purity / NMI against the true labels, missing-value imputation error) to
``--out``. ``--quick`` (or the environment variable ``CI``) shrinks every run.
"""

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import pyro
from pyro.infer import SVI, Trace_ELBO

from ..baselines import VAE, BayesianGMM
from ..datasets import auto_mpg, noisy_pinwheel, pinwheel
from ..elbo import SINELBO
from ..evaluation import decoded_mean
from ..guide import SVAEGuide
from ..metrics import cluster_purity, normalized_mutual_info
from ..models import DeepLatentMixture
from ..nn import latent_scale, mirrored_autoencoder
from ..optim import NaturalAdam, decaying_schedule
from ..pgm import GaussianMixture, StudentTMixture
from ..plotting import new_figure, plot_curves, plot_generative_samples
from ..training import minibatch_indices
from .pinwheel import markdown_table


@dataclass
class Setting:
    """One data set's settings (docs/mathematics.rst, *Evaluation and the paper's settings*)."""

    num_components: int = 10
    latent_dim: int = 2
    hidden: int = 50
    batch_size: int = 100
    lr: float = 0.01
    natural_lr: float = 0.1
    natural_decay: float = 1.0  # β_t = natural_lr · natural_decay^(t / 1000)
    num_particles: int = 10
    iterations: int = 2000
    seeds: int = 5
    student_t_df: float = 5.0

    def schedule(self):
        if self.natural_decay == 1.0:
            return self.natural_lr
        return decaying_schedule(self.natural_lr, self.natural_decay, 1000)


SETTINGS = {
    "pinwheel": Setting(),
    "auto": Setting(latent_dim=6, batch_size=64, lr=3e-4, natural_lr=0.2, natural_decay=0.95, iterations=20000),
    "noisy": Setting(hidden=40, iterations=5000, seeds=3),
}
QUICK = dict(iterations=150, seeds=2)


def eval_steps(iterations: int):
    """0 and a log-spaced grid up to ``iterations`` (1, 2, 5, 10, 20, 50, ...)."""
    steps = {0, iterations}
    scale = 1
    while scale <= iterations:
        steps.update(s for s in (scale, 2 * scale, 5 * scale) if s <= iterations)
        scale *= 10
    return sorted(steps)


# ----- methods, all behind one interface ---------------------------------------------


class _Autoencoding:
    """Imputation by iterated encoding and decoding, shared by the deep methods."""

    def impute(self, y, observed, iterations: int = 10):
        filled = y.clone()
        filled[:, ~observed] = 0.0  # the training mean of standardised or centred data
        for _ in range(iterations):
            filled[:, ~observed] = self.reconstruct_mean(filled)[:, ~observed]
        return filled


class SANMethod(_Autoencoding):
    """SAN (or the SVAE) with a latent mixture, trained by SINELBO and NaturalAdam."""

    def __init__(self, setting: Setting, train, pgm="gmm", guide="sin"):
        D, K = setting.latent_dim, setting.num_components
        encoder, decoder = mirrored_autoencoder(
            train.shape[-1], D, (setting.hidden,) * 2, scale=latent_scale(train)
        )
        if pgm == "gmm":
            prior = GaussianMixture(K, D)
        else:
            prior = StudentTMixture(K, D, df=setting.student_t_df)
        self.model = DeepLatentMixture(prior, decoder, len(train))
        if guide == "svae":
            self.guide = SVAEGuide(self.model, prior, encoder, create_plates=self.model.create_plates)
        else:
            self.guide = self.model.make_guide(encoder, factor="free" if pgm == "tmm" else "tied")
        self.svi = SVI(
            self.model,
            self.guide,
            NaturalAdam({"lr": setting.lr}, natural_lr=setting.schedule()),
            SINELBO(num_particles=setting.num_particles, max_plate_nesting=1),
        )

    def step(self, y, indices):
        return self.svi.step(y, indices=indices)

    def test_mse(self, y, num_samples):
        return self.model.test_mse(self.guide, y, num_samples)

    def test_log_likelihood(self, y, num_samples):
        return self.model.test_log_likelihood(self.guide, y, num_samples)

    def cluster(self, y):
        return self.model.cluster(self.guide, y)

    def generate(self, num_samples):
        return self.model.generate(self.guide, num_samples)

    @torch.no_grad()
    def reconstruct_mean(self, y):
        post = self.guide.local_posterior(y)
        x = (post.probs[..., None] * post.loc).sum(-2)
        return decoded_mean(self.model.decoder, x)


class VAEMethod(_Autoencoding):
    def __init__(self, setting: Setting, train):
        encoder, decoder = mirrored_autoencoder(
            train.shape[-1], setting.latent_dim, (setting.hidden,) * 2, scale=latent_scale(train)
        )
        self.vae = VAE(encoder, decoder, len(train))
        elbo = Trace_ELBO(num_particles=setting.num_particles, vectorize_particles=True, max_plate_nesting=1)
        self.svi = SVI(self.vae.model, self.vae.guide, pyro.optim.Adam({"lr": setting.lr}), elbo)

    def step(self, y, indices):
        return self.svi.step(y, indices=indices)

    def test_mse(self, y, num_samples):
        return self.vae.test_mse(y, num_samples)

    def test_log_likelihood(self, y, num_samples):
        return self.vae.test_log_likelihood(y, num_samples)

    def cluster(self, y):
        return None

    @torch.no_grad()
    def generate(self, num_samples):
        x = self.vae.prior(torch.zeros(1)).sample((num_samples,))
        return decoded_mean(self.vae.decoder, x), torch.zeros(num_samples, dtype=torch.long), torch.ones(1)

    @torch.no_grad()
    def reconstruct_mean(self, y):
        return decoded_mean(self.vae.decoder, self.vae.encoder(y).mean)


class GMMMethod:
    """A Bayesian GMM on the raw data, trained by minibatch natural-gradient steps."""

    def __init__(self, setting: Setting, train, generator):
        self.gmm = BayesianGMM(setting.num_components, train.shape[-1]).initialize(train, generator)
        self.num_data, self.schedule, self.t = len(train), setting.schedule(), 0

    def step(self, y, indices):
        beta = self.schedule(self.t) if callable(self.schedule) else self.schedule
        self.gmm.step(y, self.num_data / len(y), beta)
        self.t += 1

    def test_mse(self, y, num_samples):
        return self.gmm.test_mse(y, num_samples)

    def test_log_likelihood(self, y, num_samples):
        return self.gmm.test_log_likelihood(y)

    def cluster(self, y):
        return self.gmm.cluster(y)

    def generate(self, num_samples):
        return self.gmm.generate(num_samples)

    def impute(self, y, observed):
        return self.gmm.impute(y, observed)


def make_method(name: str, setting: Setting, train, seed: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if name == "GMM":
        return GMMMethod(setting, train, torch.Generator().manual_seed(seed))
    if name == "VAE":
        return VAEMethod(setting, train)
    if name == "SVAE":
        return SANMethod(setting, train, guide="svae")
    if name in ("SAN", "SAN-GMM"):
        return SANMethod(setting, train)
    if name == "SAN-TMM":
        return SANMethod(setting, train, pgm="tmm")
    raise ValueError(f"unknown method {name!r}")


def imputation_error(method, y) -> float:
    """Mean squared error of each feature imputed from the others, averaged over features."""
    errors = []
    for d in range(y.shape[-1]):
        observed = torch.ones(y.shape[-1], dtype=torch.bool)
        observed[d] = False
        errors.append(float((method.impute(y, observed)[:, d] - y[:, d]).pow(2).mean()))
    return statistics.mean(errors)


def full_metrics(method, split, num_samples) -> dict:
    clusters = method.cluster(split.test)
    metrics = {
        "test_mse": method.test_mse(split.test, num_samples),
        "test_log_likelihood": method.test_log_likelihood(split.test, num_samples),
        "imputation_mse": imputation_error(method, split.test),
    }
    if clusters is not None:
        metrics["purity"] = cluster_purity(clusters, split.test_labels)
        metrics["nmi"] = normalized_mutual_info(clusters, split.test_labels)
    return metrics


def train(name, setting: Setting, split, seed, curve_samples=10, progress=True, desc=""):
    """Trains one method for ``setting.iterations`` steps; returns it and its test-MSE curve."""
    method = make_method(name, setting, split.train, seed)
    steps = eval_steps(setting.iterations)
    curve = [method.test_mse(split.test, curve_samples)]
    batches = minibatch_indices(len(split.train), setting.batch_size, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for t in tqdm(range(1, setting.iterations + 1), desc=desc or f"{name} seed {seed}", disable=not progress, mininterval=1):
        idx = next(batches)
        method.step(split.train[idx], idx)
        if t in steps:
            curve.append(method.test_mse(split.test, curve_samples))
    return method, steps, curve, (time.perf_counter() - start) / setting.iterations


def compare(names, setting: Setting, split, test_samples, progress=True):
    """Every method over ``setting.seeds`` seeds: curves (median and range) and final metrics (median)."""
    curves, finals, methods = {}, {}, {}
    for name in names:
        runs, metrics = [], []
        for seed in range(setting.seeds):
            method, steps, curve, seconds = train(name, setting, split, seed, progress=progress)
            runs.append(curve)
            metrics.append({**full_metrics(method, split, test_samples), "ms_per_step": 1e3 * seconds})
            methods.setdefault(name, method)  # seed 0's model, for figures
        runs = np.array(runs)
        curves[name] = (steps, np.median(runs, 0).tolist(), runs.min(0).tolist(), runs.max(0).tolist())
        finals[name] = {k: statistics.median(m[k] for m in metrics) for k in metrics[0]}
        finals[name]["test_mse_per_seed"] = [m["test_mse"] for m in metrics]
    return curves, finals, methods


# ----- the figures ----------------------------------------------------------------------


def _write(out: Path, stem: str, title: str, finals: dict, extra: dict, config: dict):
    columns = ["test_mse", "test_log_likelihood", "imputation_mse", "purity", "nmi", "ms_per_step"]
    table = markdown_table(finals, columns)
    print(f"\n{title} (medians over seeds):\n{table}")
    (out / f"{stem}.md").write_text(f"{title} (medians over seeds)\n\n{table}\n")
    (out / f"{stem}.json").write_text(json.dumps({"config": config, "metrics": finals, **extra}, indent=2))


def fig2_curves(out: Path, stem: str, data_name: str, split, names, setting, test_samples, progress):
    curves, finals, methods = compare(names, setting, split, test_samples, progress)
    fig = new_figure()
    plot_curves(fig.axes[0], curves)
    fig.axes[0].set_title(f"{data_name}: test MSE (median and range over {setting.seeds} seeds)")
    fig.savefig(out / f"{stem}.png", dpi=150)
    _write(out, stem, f"{data_name} after {setting.iterations} iterations", finals, {"curves": curves}, asdict(setting))
    return curves, finals, methods


def fig2c(out: Path, setting: Setting, ratios, test_samples, progress):
    rows, results = {}, {"ratios": list(ratios)}
    for ratio in ratios:
        split = noisy_pinwheel(ratio, seed=0)
        beta = 0.005 if ratio <= 0.3 else 0.0005  # the paper's natural steps
        _, finals, _ = compare(["GMM", "SAN-GMM", "SAN-TMM"], replace(setting, natural_lr=beta), split, test_samples, progress)
        for name, row in finals.items():
            rows[f"{name} @ {int(100 * ratio)}%"] = row
            results.setdefault(name, []).append(row["test_mse"])
    fig = new_figure()
    ax = fig.axes[0]
    for name in ("GMM", "SAN-GMM", "SAN-TMM"):
        ax.plot([100 * r for r in ratios], results[name], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("outliers in the training set (%)")
    ax.set_ylabel("test MSE (median over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Noisy pinwheel")
    fig.savefig(out / "fig2c.png", dpi=150)
    _write(out, "fig2c", "Noisy pinwheel", rows, {"test_mse_by_ratio": results}, asdict(setting))
    return results


def _pca(data, *others):
    mean = data.mean(0)
    _, _, v = torch.linalg.svd(data - mean, full_matrices=False)
    return [(x - mean) @ v[:2].T for x in (data,) + others]


def fig3(out: Path, settings, splits, progress):
    """:param splits: ``{setting key: (display name, split)}``."""
    names = ["GMM", "SAN", "VAE"]
    fig = new_figure(ncols=3, height=4.2)
    fig.clear()
    axes = fig.subplots(len(splits), 3, squeeze=False)
    for row, (key, (data_name, split)) in enumerate(splits.items()):
        for col, name in enumerate(names):
            method, _, _, _ = train(name, settings[key], split, 0, progress=progress)
            samples, components, weights = method.generate(2000)
            data, samples = _pca(split.train, samples) if split.train.shape[-1] > 2 else (split.train, samples)
            plot_generative_samples(axes[row, col], data, samples, components, weights, f"{name} on {data_name}")
    fig.set_size_inches(15, 4.5 * len(splits))
    fig.savefig(out / "fig3.png", dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=["fig2a", "fig2b", "fig2c", "fig3"])
    parser.add_argument("--out", type=Path, default=Path("results/paper"))
    parser.add_argument("--iterations", type=int, help="override the data set's iterations")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--auto-data", help="a file in the format of UCI's auto-mpg.data (default: the copy shipped with pyro_sin)")
    parser.add_argument("--quick", action="store_true", help="short runs (also when CI is set)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick or "CI" in os.environ
    overrides = dict(QUICK) if quick else {}
    overrides.update({k: v for k, v in (("iterations", args.iterations), ("seeds", args.seeds)) if v is not None})
    settings = {k: replace(s, **overrides) for k, s in SETTINGS.items()}
    test_samples = 20 if quick else 100
    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)

    if args.figure == "fig2a":
        return fig2_curves(args.out, "fig2a", "Pinwheel", pinwheel(), ["GMM", "SVAE", "SAN"], settings["pinwheel"], test_samples, progress)
    if args.figure == "fig2b":
        split = auto_mpg(args.auto_data)
        return fig2_curves(args.out, "fig2b", "Auto MPG", split, ["GMM", "VAE", "SAN"], settings["auto"], test_samples, progress)
    if args.figure == "fig2c":
        ratios = (0.3,) if quick else (0.1, 0.3, 0.5, 0.7)
        return fig2c(args.out, settings["noisy"], ratios, test_samples, progress)
    splits = {"pinwheel": ("pinwheel", pinwheel()), "auto": ("Auto MPG (PCA)", auto_mpg(args.auto_data))}
    return fig3(args.out, settings, splits, progress)


if __name__ == "__main__":
    main()
