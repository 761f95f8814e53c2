"""
SAN with a latent linear dynamical system on a 1-D bouncing-dot video, against
the baselines a Pyro user would build today with the same generative model:

* **unstructured** — per-step Gaussians from a bidirectional RNN and point
  estimates of the dynamics, trained with ``Trace_ELBO`` and Adam;
* **two-stage** — a VAE with an i.i.d. prior on frames, then an LDS fitted to its
  latent means.

Every method trains for the same wall-clock time (``--iterations`` caps the steps too); we report reconstruction,
multi-step prediction of future frames, imputation of missing frames and the
importance-sampled test log-likelihood, and write figures::

    python examples/bouncing_dot.py --out results/bouncing_dot

``--quick`` (or the environment variable ``CI``) shrinks the run.
"""

from dataclasses import asdict, dataclass, replace
from typing import Callable, NamedTuple

import torch

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.datasets import bouncing_dot
from pyro_sin.elbo import SINELBO
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import SequenceEncoder, mirrored_autoencoder
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import LinearDynamicalSystem
from pyro_sin.training import fit

from baselines import VAE, TwoStageLDS, UnstructuredLDSGuide
from harness import Results, Trained, compare, fresh_start, markdown_table, on_device, parser
from plotting import new_figure, plot_curves
from sequence_harness import DeepLatentMethod


@dataclass
class Config:
    num_train: int = 400
    num_test: int = 100
    num_steps: int = 40
    horizon: int = 10
    num_pixels: int = 16
    missing_from: int = 15  # test frames [missing_from, missing_to) are hidden for imputation
    missing_to: int = 25
    latent_dim: int = 2
    hidden: int = 50
    batch_size: int = 32
    lr: float = 0.01
    natural_lr: float = 0.1
    num_particles: int = 4
    factor: str = "free"
    seconds: float = 60.0  # training time per method
    max_iterations: int = 10**6
    eval_every: int = 100
    eval_samples: int = 50
    seed: int = 0
    device: str = "cpu"  # "cuda" to train and evaluate on the GPU

    @classmethod
    def quick(cls, **kwargs):
        defaults = dict(num_train=64, num_test=16, seconds=3.0, eval_every=20, eval_samples=10)
        return cls(**{**defaults, **kwargs})


def make_data(config: Config):
    """Training and test sequences, drawn on the CPU (the same on every machine) and moved to ``config.device``."""
    train = bouncing_dot(config.num_train, config.num_steps, config.num_pixels, seed=config.seed)
    test = bouncing_dot(
        config.num_test, config.num_steps + config.horizon, config.num_pixels, seed=config.seed + 1000
    )
    return on_device(train, config.device), on_device(test, config.device)


class Evaluator:
    """The same metrics for every method, through ``decode_posterior``, ``predict`` and ``test_log_likelihood``."""

    def __init__(self, config: Config, test):
        self.config, self.test = config, test
        T = config.num_steps
        self.observed = test.frames[:, :T]
        self.mask = torch.ones(self.observed.shape[:2], dtype=self.observed.dtype, device=self.observed.device)
        self.mask[:, config.missing_from : config.missing_to] = 0

    def prediction_error(self, method) -> float:
        T, H = self.config.num_steps, self.config.horizon
        prediction = method.predict(self.observed, H, self.config.eval_samples)
        return float((prediction - self.test.clean[:, T : T + H]).pow(2).mean())

    def __call__(self, method, samples=None) -> dict:
        config, T, H = self.config, self.config.num_steps, self.config.horizon
        samples = samples or config.eval_samples
        clean = self.test.clean
        prediction = method.predict(self.observed, H, samples)
        imputed = method.decode_posterior(self.observed * self.mask[..., None], self.mask, samples)
        hidden = self.mask == 0
        return {
            "reconstruction_mse": float(
                (method.decode_posterior(self.observed, None, samples) - clean[:, :T]).pow(2).mean()
            ),
            "prediction_mse": float((prediction - clean[:, T : T + H]).pow(2).mean()),
            f"prediction_mse_at_{H}": float((prediction[:, -1] - clean[:, T + H - 1]).pow(2).mean()),
            "imputation_mse": float((imputed[hidden] - clean[:, :T][hidden]).pow(2).mean()),
            "test_log_likelihood": method.test_log_likelihood(self.observed, 2 * samples),
        }


def _networks(config: Config, train):
    torch.manual_seed(config.seed)
    encoder, decoder = mirrored_autoencoder(config.num_pixels, config.latent_dim, (config.hidden,) * 2)
    return encoder.to(config.device), decoder.to(config.device)


def _fit(config, svi, data, evaluate, desc, progress, batch_size=None):
    return fit(
        svi,
        data,
        iterations=config.max_iterations,
        batch_size=batch_size or config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
        evaluate=evaluate,
        eval_every=config.eval_every,
        max_seconds=config.seconds,
        progress=progress,
        desc=desc,
    )


def train_san(config: Config, train, evaluator: Evaluator, progress=True):
    fresh_start(config.seed)
    encoder, decoder = _networks(config, train)
    lds = LinearDynamicalSystem(config.latent_dim).to(config.device)
    model = DeepLatentSequence(lds, decoder, len(train.frames))
    guide = model.make_guide(encoder, factor=config.factor)
    svi = SVI(
        model,
        guide,
        NaturalAdam({"lr": config.lr}, natural_lr=config.natural_lr),
        SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
    )
    method = DeepLatentMethod(model, guide)
    history = _fit(
        config, svi, train.frames, lambda: {"prediction_mse": evaluator.prediction_error(method)}, "SAN-LDS", progress
    )
    return method, history


def train_unstructured(config: Config, train, evaluator: Evaluator, progress=True):
    fresh_start(config.seed)
    _, decoder = _networks(config, train)
    lds = LinearDynamicalSystem(config.latent_dim).to(config.device)
    model = DeepLatentSequence(lds, decoder, len(train.frames))
    encoder = SequenceEncoder(config.num_pixels, config.latent_dim, (config.hidden,) * 2).to(config.device)
    guide = UnstructuredLDSGuide(model, encoder)
    elbo = Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": config.lr}), elbo)
    history = _fit(
        config, svi, train.frames, lambda: {"prediction_mse": evaluator.prediction_error(guide)}, "unstructured",
        progress,
    )
    return guide, history


def train_two_stage(config: Config, train, evaluator: Evaluator, progress=True):
    fresh_start(config.seed)
    encoder, decoder = _networks(config, train)
    frames = train.frames.reshape(-1, config.num_pixels)
    vae = VAE(encoder, decoder, len(frames))
    elbo = Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": config.lr}), elbo)
    method = TwoStageLDS(vae, LinearDynamicalSystem(config.latent_dim).to(config.device))

    def evaluate():
        method.fit_dynamics(train.frames)
        return {"prediction_mse": evaluator.prediction_error(method)}

    # minibatches of the same number of frames as the sequence models see
    history = _fit(config, svi, frames, evaluate, "two-stage", progress, config.batch_size * config.num_steps)
    method.fit_dynamics(train.frames)
    return method, history


class Task(NamedTuple):
    """The training sequences and the evaluator of the test sequences."""

    train: object  # BouncingDot
    evaluator: Evaluator


class TimedMethod:
    """
    A method of this comparison in the harness's protocol (:class:`harness.Method`): trained by
    ``train(config, train, evaluator, progress) -> (method, history)`` for ``config.seconds``,
    scored by the evaluator, with the iterations and seconds it took.
    """

    def __init__(self, name: str, config: Config, train: Callable):
        self.name, self.config, self._train = name, config, train

    def train(self, task: Task, seed: int, progress: bool = True) -> Trained:
        method, history = self._train(replace(self.config, seed=seed), task.train, task.evaluator, progress)
        row = task.evaluator(method)
        row["iterations"] = float(history.eval_steps[-1])
        row["seconds"] = float(history.eval_seconds[-1])
        return Trained(row, history, method)


def methods(config: Config):
    return [
        TimedMethod("SAN-LDS", config, train_san),
        TimedMethod("unstructured guide", config, train_unstructured),
        TimedMethod("two-stage VAE+LDS", config, train_two_stage),
    ]


def _image_rows(results: Results, filename: str, rows, edges, xlabel):
    """Sequences as grey images (pixels × frames), one row each, with red lines at ``edges``."""
    fig = new_figure(ncols=1, width=8, height=1.3 * len(rows))
    fig.clear()
    axes = fig.subplots(len(rows), 1, sharex=True)
    for ax, (name, image) in zip(axes, rows):
        ax.imshow(image.T, aspect="auto", cmap="gray_r", vmin=0, vmax=1, origin="lower")
        for edge in edges:
            ax.axvline(edge, color="tab:red")
        ax.set_ylabel(name, rotation=0, ha="right", fontsize="small")
        ax.set_yticks([])
    axes[-1].set_xlabel(xlabel)
    results.figure(fig, filename, dpi=120)


def write_figures(results: Results, config: Config, evaluator: Evaluator, methods, histories):
    T, H, samples = config.num_steps, config.horizon, config.eval_samples
    test, k = evaluator.test, 0
    observed = evaluator.observed[k : k + 1]
    rows = [("truth (clean)", test.clean[k, : T + H].cpu().numpy())]
    for name, method in methods.items():
        recon = method.decode_posterior(observed, None, samples)[0]
        pred = method.predict(observed, H, samples)[0]
        rows.append((name, torch.cat([recon, pred]).cpu().numpy()))
    _image_rows(
        results,
        "reconstruction_and_prediction.png",
        rows,
        [T - 0.5],
        f"frame (reconstruction left of the red line, {H}-step prediction right of it)",
    )
    mask = evaluator.mask[k : k + 1]
    rows = [("observed", (observed[0] * mask[0, :, None]).cpu().numpy())]
    for name, method in methods.items():
        rows.append((name, method.decode_posterior(observed * mask[..., None], mask, samples)[0].cpu().numpy()))
    _image_rows(
        results,
        "imputation.png",
        rows,
        [config.missing_from - 0.5, config.missing_to - 0.5],
        "frame (frames between the red lines are missing)",
    )

    fig = new_figure()
    curves = {name: (h.eval_seconds, [e["prediction_mse"] for e in h.evals]) for name, h in histories.items()}
    plot_curves(
        fig.axes[0], curves, ylabel=f"test prediction MSE (1..{H} steps ahead)", xlabel="training time (s)"
    )
    results.figure(fig, "prediction_vs_time.png", dpi=120)


def main(argv=None):
    command = parser(__doc__, "results/bouncing_dot", seed=0, seconds=None, iterations=None)
    command.add_argument("--factor", choices=["tied", "free"], default="free")
    command.add_argument("--latent-dim", type=int, default=2)
    args = command.parse_args(argv)
    overrides = {"factor": args.factor, "latent_dim": args.latent_dim, "seed": args.seed, "device": args.device}
    if args.seconds is not None:
        overrides["seconds"] = args.seconds
    if args.iterations is not None:  # a cap beside the time
        overrides["max_iterations"] = args.iterations
    config = Config.quick(**overrides) if args.quick else Config(**overrides)
    results = command.results(args)

    train, test = make_data(config)
    evaluator = Evaluator(config, test)
    trained = compare(methods(config), Task(train, evaluator), config.seed, args.progress, keep_going=False)
    rows = {name: t.metrics for name, t in trained.items()}
    histories = {name: t.history for name, t in trained.items()}
    write_figures(results, config, evaluator, {name: t.model for name, t in trained.items()}, histories)
    curves = {n: [h.eval_seconds, [e["prediction_mse"] for e in h.evals]] for n, h in histories.items()}
    results.write(
        f"Bouncing dot, {config.seconds:g} s of training per method",
        [markdown_table(rows)],
        {"config": asdict(config), "metrics": rows, "curves": curves},
    )
    return rows


if __name__ == "__main__":
    main()
