r"""
SAN-LDS on the synthetic linear dynamical system benchmark of Zhao & Linderman
(``linear_gaussian.linear_gaussian_benchmark``): the bound per data element
against the exact log-likelihood of the training sequences under the system that made
them (a Kalman filter, ``LinearGaussianSystem.distribution``),

.. math:: \text{gap} = \frac{\log p_{\rm true}(y) - \mathcal L}{N\,T\,P},

the gap the benchmark reports. The model is SAN-LDS with a linear Gaussian decoder
``y_t ~ N(C x_t + d, diag r)`` (the true model class) and an affine encoder (the exact
posterior's potentials of such an emission are affine in ``y_t``). The gap splits into
the learned model's own exact log-likelihood (also a Kalman filter) and the bound's
slack below it::

    python examples/lds_benchmark.py                 # latent 3, emission 5, noise 1, 100 sequences
    python examples/lds_benchmark.py --grid          # the benchmark's 27 settings

``--quick`` (or the environment variable ``CI``) shrinks the run.
"""

import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

import pyro.distributions as dist
from pyro.infer import SVI

from pyro_sin.elbo import SINELBO
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import GaussianEncoder
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import LinearDynamicalSystem
from pyro_sin.pgm.lds import LDSParams
from pyro_sin.training import DivergenceError, fit

from harness import Trained, compare, fresh_start, markdown_table, parser
from linear_gaussian import lds_benchmark_settings, linear_gaussian_benchmark

TARGET = dict(latent_dim=3, emission_dim=5, emission_noise=1.0, dynamics_noise=0.1, num_sequences=100)


@dataclass
class Config:
    num_steps: int = 200
    iterations: int = 1500
    batch_size: int = 10
    lr: float = 0.03
    natural_lr: float = 0.1
    num_particles: int = 1
    eval_particles: int = 20
    eval_every: int = 250
    factor: str = "tied"
    encoder_hidden: int = 0  # hidden layers of width 50 in the encoder (0: affine)
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick(cls, **kwargs):
        return cls(**{"num_steps": 50, "iterations": 60, "eval_every": 30, "eval_particles": 4, **kwargs})


class LinearGaussianDecoder(nn.Module):
    r"""``y | x ~ N(C x + d, diag r)``: the emission of a linear Gaussian state-space model."""

    def __init__(self, latent_dim: int, data: torch.Tensor, init_scale: float = 0.5):
        super().__init__()
        frames = data.reshape(-1, data.shape[-1])
        self.linear = nn.Linear(latent_dim, frames.shape[-1])
        nn.init.normal_(self.linear.weight, std=init_scale)
        with torch.no_grad():
            self.linear.bias.copy_(frames.mean(0))
        self.log_variance = nn.Parameter(frames.var(0).log())

    def distribution(self, x) -> dist.Normal:
        return dist.Normal(self.linear(x), (0.5 * self.log_variance).exp()).to_event(1)


@torch.no_grad()
def learned_log_likelihood(model: DeepLatentSequence, guide, y: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(y)`` per sequence of the learned model under its posterior-mean dynamics."""
    params = model.pgm.point_estimate(guide.global_posterior())
    return linear_gaussian_log_likelihood(model.pgm, model.decoder, params, y)


@torch.no_grad()
def linear_gaussian_log_likelihood(
    lds: LinearDynamicalSystem, decoder: LinearGaussianDecoder, params: LDSParams, y: torch.Tensor
) -> torch.Tensor:
    """
    Exact ``log p(y)`` per sequence of an LDS prior with dynamics ``params`` and a linear decoder:
    ``log p(y_1) + log p(y_{2:T} | y_1)``, the second term by Pyro's ``GaussianHMM`` started from
    ``p(x_1 | y_1)``.
    """
    D = lds.latent_dim
    A, b = params.transition[:, :D], params.transition[:, D]
    Q = torch.cholesky_inverse(torch.linalg.cholesky(params.noise_precision))
    C, d = decoder.linear.weight, decoder.linear.bias
    R = torch.diag(decoder.log_variance.exp())
    init_cov = torch.cholesky_inverse(torch.linalg.cholesky(lds.init_precision))
    first = dist.MultivariateNormal(C @ lds.init_loc + d, C @ init_cov @ C.T + R)
    # x_1 | y_1 by Gaussian conditioning
    gain = torch.linalg.solve(C @ init_cov @ C.T + R, C @ init_cov).T  # (D, P)
    post_mean = lds.init_loc + (y[:, 0] - C @ lds.init_loc - d) @ gain.T
    post_cov = init_cov - gain @ C @ init_cov
    rest = dist.GaussianHMM(
        dist.MultivariateNormal(post_mean, 0.5 * (post_cov + post_cov.T)),
        A.T,
        dist.MultivariateNormal(b, Q),
        C.T,
        dist.MultivariateNormal(d, R),
        duration=y.shape[1] - 1,
    )
    return first.log_prob(y[:, 0]) + rest.log_prob(y[:, 1:])


def run_setting(config: Config, setting: dict, progress: bool = True) -> dict:
    """Trains SAN-LDS on one benchmark setting; returns the per-element numbers."""
    fresh_start(config.seed)
    data = linear_gaussian_benchmark(num_steps=config.num_steps, seed=config.seed, system_seed=config.seed, **setting)
    N, T, P = data.frames.shape
    D = setting["latent_dim"]
    elements = data.frames.numel()
    exact = float(data.system.distribution(T).log_prob(data.frames).sum()) / elements
    y = data.frames.to(config.device)
    lds = LinearDynamicalSystem(D).to(y.device)
    decoder = LinearGaussianDecoder(D, y).to(y.device)
    encoder = GaussianEncoder(P, D, (50,) * config.encoder_hidden).to(y.device)
    model = DeepLatentSequence(lds, decoder, N)
    guide = model.make_guide(encoder, factor=config.factor)
    svi = SVI(
        model,
        guide,
        NaturalAdam({"lr": config.lr}, natural_lr=config.natural_lr),
        SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
    )
    bound = SINELBO(num_particles=config.eval_particles, max_plate_nesting=1)

    def elbo_per_element():
        with torch.no_grad():
            return -bound.loss(model, guide, y) / elements

    start = time.perf_counter()
    history = fit(
        svi,
        y,
        iterations=config.iterations,
        batch_size=min(config.batch_size, N),
        generator=torch.Generator().manual_seed(config.seed),
        evaluate=lambda: {"gap": exact - elbo_per_element()},
        eval_every=config.eval_every,
        progress=progress,
        desc=f"D={D} P={P} r={setting['emission_noise']:g} N={N}",
    )
    seconds = time.perf_counter() - start
    elbo = elbo_per_element()
    learned = float(learned_log_likelihood(model, guide, y).sum()) / elements
    return {
        **setting,
        "exact_ll_per_element": exact,
        "learned_model_ll_per_element": learned,
        "elbo_per_element": elbo,
        "gap": exact - elbo,
        "model_gap": exact - learned,
        "bound_slack": learned - elbo,
        "iterations": config.iterations,
        "seconds": seconds,
        "gap_curve": [history.eval_steps, [e["gap"] for e in history.evals]],
    }


def run_setting_with_backoff(config: Config, setting: dict, progress: bool = True, attempts: int = 3) -> dict:
    """
    :func:`run_setting`, again at a third of the learning rate when training diverges, up to
    ``attempts`` times; the row records the learning rate used, or ``diverged`` when every
    attempt diverged (a grid goes on either way).
    """
    for attempt in range(1, attempts + 1):
        try:
            return {**run_setting(config, setting, progress), "lr": config.lr}
        except DivergenceError as error:
            if attempt == attempts:
                warnings.warn(f"{error} Diverged at every rate tried, down to lr {config.lr:.3g}.", RuntimeWarning)
                return {**setting, "diverged": 1.0, "lr": config.lr}
            warnings.warn(f"{error} Trying again at lr {config.lr / 3:.3g}.", RuntimeWarning)
            config = replace(config, lr=config.lr / 3)


class SANLDS:
    """SAN-LDS on a benchmark setting (the task), in the harness's protocol; :func:`run_setting_with_backoff`."""

    name = "SAN-LDS"

    def __init__(self, config: Config):
        self.config = config

    def train(self, setting: dict, seed: int, progress: bool = True) -> Trained:
        return Trained(run_setting_with_backoff(replace(self.config, seed=seed), setting, progress))


COLUMNS = (
    "exact_ll_per_element",
    "learned_model_ll_per_element",
    "elbo_per_element",
    "gap",
    "model_gap",
    "bound_slack",
)
COLUMNS += ("lr", "seconds", "diverged")


def _label(row):
    return (
        f"D={row['latent_dim']} P={row['emission_dim']} σy²={row['emission_noise']:g} "
        f"σx²={row['dynamics_noise']:g} N={row['num_sequences']}"
    )


def main(argv=None):
    command = parser(__doc__, "results/lds_benchmark", seed=0, iterations=None)
    command.add_argument("--grid", action="store_true", help="every setting of LDS_BENCHMARK_GRID")
    command.add_argument("--factor", choices=["tied", "free"], default="tied")
    command.add_argument("--encoder-hidden", type=int, default=0)
    args = command.parse_args(argv)
    overrides = {"factor": args.factor, "encoder_hidden": args.encoder_hidden, "seed": args.seed, "device": args.device}
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    config = Config.quick(**overrides) if args.quick else Config(**overrides)
    settings = list(lds_benchmark_settings()) if args.grid else [TARGET]
    if args.quick and args.grid:
        settings = settings[:2]
    results = command.results(args)
    rows = {}
    for setting in tqdm(settings, desc="settings", disable=not args.progress or len(settings) == 1):
        row = compare([SANLDS(config)], setting, config.seed, args.progress)[SANLDS.name].metrics
        rows[_label(row)] = row
        outcome = "diverged" if "diverged" in row else f"gap {row['gap']:.4f} nats per element"
        print(f"{_label(row)}: {outcome} (lr {row['lr']:.3g})", flush=True)
    title = "Synthetic LDS benchmark: SAN-LDS bound per data element against the exact log-likelihood"
    notes = (
        "gap = exact − ELBO; model_gap = exact − learned model's exact LL; "
        "bound_slack = learned model's LL − ELBO (all nats per data element, training sequences)."
    )
    results.write(
        title, [markdown_table(rows, COLUMNS), notes], {"title": title, "config": asdict(config), "rows": rows}
    )
    return rows


if __name__ == "__main__":
    main()
