r"""
One harness for the sequence experiments: every method is trained on the same
training sequences and scored by the same :class:`Evaluator` on the same test
sequences, through four calls:

* ``decode_posterior(y, mask, num_samples)`` — the frames reconstructed from the
  observed ones (imputation where ``mask == 0``), ``(B, T, P)``;
* ``predict(y, horizon, num_samples)`` — the mean forecast of the next ``horizon`` frames;
* ``test_log_likelihood(y, num_samples)`` — the mean ``log p(y_{1:T})`` per sequence
  (importance-sampled for latent-variable models, exact for the VAR);
* ``state_probs(y)`` (optional) — ``q(z_t = k)``, ``(B, T, K)``, for segmentation.

The methods follow the harness's protocol (:class:`harness.Method`: ``name`` and
``train(task, seed, progress)``); :func:`standard_methods` lists them. A structured prior
that runs inside :class:`~pyro_sin.models.DeepLatentSequence` (with ``forecast``, ``proposal``
and ``latent_log_prob``; ``state_probs`` on its posterior for segmentation) becomes one
more method with :class:`DeepLatent`::

    DeepLatent("SLDS (SAN)", config, make_slds, "slds_factor", slds_natural_from_encoded)
"""

import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_sin.elbo import SINELBO
from pyro_sin.metrics import clustering_scores
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import SequenceEncoder
from pyro_sin.optim import NaturalAdam
from pyro_sin.pgm import LatentHMM, LinearDynamicalSystem, SwitchingLDS
from pyro_sin.pgm.lds import autoregressive_start, order_by_aic
from pyro_sin.standardize import Standardization, StandardizedEncoder, standardized_autoencoder
from pyro_sin.training import DivergenceError, History, fit

from baselines import UnstructuredLDSGuide, VectorAutoregression
from harness import Method, Results, Trained, compare, fresh_start, markdown_table, on_device, parser
from plotting import component_colours, new_figure, plot_curves

__all__ = [
    "AutoregressiveSAN",
    "Config",
    "DeepLatent",
    "DeepLatentMethod",
    "Evaluator",
    "FittedInClosedForm",
    "SequenceTask",
    "TrainingMean",
    "UnstructuredGuide",
    "experiment_main",
    "run_methods",
    "standard_methods",
]


class SequenceTask(NamedTuple):
    """
    Training sequences and the test sequences that score forecasts and imputation.

    ``test`` holds ``T + horizon`` frames: the first ``T`` are observed, the rest are
    the future to forecast. The frames ``gap[0] .. gap[1] - 1`` of the observed part are
    hidden for imputation. ``targets`` are what the predictions are scored against
    (the noise-free frames where the data set has them, else ``test`` itself).
    """

    name: str
    train: torch.Tensor  # (N, T, P)
    test: torch.Tensor  # (M, T + H, P)
    targets: torch.Tensor  # (M, T + H, P)
    horizon: int
    gap: Tuple[int, int]
    regimes: Optional[torch.Tensor] = None  # (M, T) true regimes of the observed test frames

    @property
    def num_steps(self) -> int:
        return self.test.shape[1] - self.horizon

    def to(self, device) -> "SequenceTask":
        """The same task with its tensors on ``device``."""
        return on_device(self, device)


@dataclass
class Config:
    """Settings shared by every method of a sequence experiment."""

    latent_dim: int = 2
    num_states: int = 4  # the latent HMM's (and a switching model's) regimes
    hidden: int = 50
    batch_size: int = 32
    lr: float = 0.01
    natural_lr: float = 0.1
    num_particles: int = 4
    factor: str = "tied"  # SAN's factor (tied or free)
    hmm_factor: str = "tied"  # the latent HMM's factor
    slds_factor: str = "tied"  # the switching LDS's SIN factor in "SLDS (SAN)"; "SLDS (free factor)" is the other
    encoder: str = "frame"  # SAN's encoder: "frame" (one MLP per frame) or "rnn" (bidirectional GRU)
    spread: float = 1.0  # spread of the standardised network inputs and outputs
    init_noise: float = 0.3  # initial posterior and decoder spread, relative to the data's
    min_scale: float = 0.05  # the Gaussian decoder's floor, relative to the data's spread
    sticky: float = 10.0  # prior pseudo-counts on staying in a regime (diagonal of the transition Dirichlet)
    slds_sweeps: int = 5  # the switching LDS's mean-field sweeps per posterior
    max_iterations: int = 500  # training steps per method
    seconds: float = 600.0  # a cap on the training time per method
    eval_every: int = 100
    eval_samples: int = 50
    methods: Tuple[str, ...] = (
        "SAN-LDS", "latent HMM", "SLDS (SAN)", "SLDS (free factor)", "unstructured guide", "VAR(1)", "VAR(2)",
        "training mean",
    )
    seed: int = 0
    device: str = "cpu"  # where the networks train and the metrics are computed
    extra: Dict[str, float] = field(default_factory=dict)


class DeepLatentMethod:
    """A :class:`~pyro_sin.models.DeepLatentSequence` and its SIN guide behind the harness's interface."""

    def __init__(self, model: DeepLatentSequence, guide):
        self.model, self.guide = model, guide

    def decode_posterior(self, y, mask=None, num_samples=50):
        return self.model.decode_posterior(self.guide, y, mask, num_samples)

    def predict(self, y, horizon, num_samples=50):
        return self.model.predict(self.guide, y, horizon, num_samples)

    def test_log_likelihood(self, y, num_samples=100):
        return self.model.test_log_likelihood(self.guide, y, num_samples)

    def state_probs(self, y) -> Optional[torch.Tensor]:
        return getattr(self.model.posterior(self.guide, y), "state_probs", None)


class TrainingMean:
    """Predicts every frame as the training data's mean frame: the floor any model should clear."""

    def __init__(self, train: torch.Tensor):
        self.mean = train.reshape(-1, train.shape[-1]).mean(0)

    def decode_posterior(self, y, mask=None, num_samples=None):
        if mask is None:
            return y
        return torch.where(mask.bool()[..., None], y, self.mean)

    def predict(self, y, horizon, num_samples=None):
        return self.mean.expand(len(y), horizon, -1)

    def test_log_likelihood(self, y, num_samples=None):
        return float("nan")


class Evaluator:
    """The same metrics for every method."""

    def __init__(self, task: SequenceTask, eval_samples: int = 50):
        self.task, self.eval_samples = task, eval_samples
        T = task.num_steps
        self.observed = task.test[:, :T]
        self.mask = torch.ones(self.observed.shape[:2], dtype=self.observed.dtype, device=self.observed.device)
        self.mask[:, task.gap[0] : task.gap[1]] = 0

    def forecast_error(self, method) -> float:
        """Mean squared error of the forecast over the horizon (the training curves' metric)."""
        T, H = self.task.num_steps, self.task.horizon
        prediction = method.predict(self.observed, H, self.eval_samples)
        return float((prediction - self.task.targets[:, T : T + H]).pow(2).mean())

    def segment(self, method) -> Optional[torch.Tensor]:
        """``argmax_k q(z_t = k)`` of the observed test frames, ``(M, T)``, or None for a method without regimes."""
        state_probs = getattr(method, "state_probs", None)
        probs = state_probs(self.observed) if state_probs is not None else None
        return None if probs is None else probs.argmax(-1)

    @torch.no_grad()
    def __call__(self, method) -> Dict[str, float]:
        task, samples = self.task, self.eval_samples
        T, H = task.num_steps, task.horizon
        targets = task.targets
        prediction = method.predict(self.observed, H, samples)
        hidden = self.mask == 0
        imputed = method.decode_posterior(self.observed * self.mask[..., None], self.mask, samples)
        row = {
            f"forecast_mse_1..{H}": float((prediction - targets[:, T : T + H]).pow(2).mean()),
            f"forecast_mse_at_{H}": float((prediction[:, -1] - targets[:, T + H - 1]).pow(2).mean()),
            "imputation_mse": float((imputed[hidden] - targets[:, :T][hidden]).pow(2).mean()),
            "reconstruction_mse": float(
                (method.decode_posterior(self.observed, None, samples) - targets[:, :T]).pow(2).mean()
            ),
            "test_log_likelihood": float(method.test_log_likelihood(self.observed, 2 * samples)),
        }
        row["test_log_likelihood_per_frame"] = row["test_log_likelihood"] / T
        regimes = self.segment(method)
        if regimes is not None and task.regimes is not None:
            scores = clustering_scores(regimes.reshape(-1), task.regimes.reshape(-1))
            row.update(
                segmentation_nmi=scores["nmi"], segmentation_ari=scores["ari"], segmentation_accuracy=scores["accuracy"]
            )
        return row


# ----- building and training the methods -------------------------------------------------


def _fit(config: Config, svi, data, evaluator: Evaluator, method, desc, progress) -> History:
    """
    :func:`~pyro_sin.training.fit` with a snapshot of the parameters at every evaluation: when
    training diverges, the parameters go back to the last snapshot (early stopping at the last
    evaluation before the divergence, chosen without looking at the test metrics) and the
    history's last evaluation records the step of the divergence as ``diverged_at``.
    """
    store = pyro.get_param_store()
    steps, evals, snapshot = [], [], {}
    start = time.perf_counter()

    def evaluate():
        evals.append({"forecast_mse": evaluator.forecast_error(method)})
        steps.append(0 if len(steps) == 0 else min(steps[-1] + config.eval_every, config.max_iterations))
        snapshot.clear()
        snapshot.update({name: store._params[name].detach().clone() for name in store.keys()})
        return evals[-1]

    try:
        return fit(
            svi,
            data,
            iterations=config.max_iterations,
            batch_size=min(config.batch_size, len(data)),
            generator=torch.Generator().manual_seed(config.seed),
            evaluate=evaluate,
            eval_every=config.eval_every,
            max_seconds=config.seconds,
            progress=progress,
            desc=desc,
        )
    except DivergenceError as error:
        if len(steps) < 2:  # diverged before the first evaluation after the start: nothing learned to keep
            raise
        step = int(re.search(r"at step (\d+)", str(error)).group(1))
        warnings.warn(f"{error} Back to the parameters of step {steps[-1]}.", RuntimeWarning)
        with torch.no_grad():
            for name, value in snapshot.items():
                store._params[name].copy_(value)
        evals[-1] = {**evals[-1], "diverged_at": float(step)}
        seconds = time.perf_counter() - start
        return History([], steps, [seconds * s / step for s in steps], evals, [])


def _networks(config: Config, train: torch.Tensor):
    """
    Standardised encoder and decoder (the data's units do not matter); a GRU encoder when
    ``config.encoder == "rnn"``.
    """
    frames = train.reshape(-1, train.shape[-1])
    hidden = (config.hidden,) * 2
    encoder, decoder = standardized_autoencoder(
        frames, config.latent_dim, hidden, spread=config.spread, min_scale=config.min_scale,
        init_noise=config.init_noise,
    )
    if config.encoder == "rnn":
        frame_encoder = encoder.encoder
        rnn = SequenceEncoder(frames.shape[-1], config.latent_dim, hidden)
        with torch.no_grad():  # the same starting map from frames to latents as the per-frame encoder
            rnn.head.shortcut.weight.zero_()
            rnn.head.shortcut.weight[:, : frames.shape[-1]].copy_(frame_encoder.shortcut.weight)
            rnn.head.second.bias.copy_(frame_encoder.second.bias)
        encoder = StandardizedEncoder(rnn, encoder.standardization)
    elif config.encoder != "frame":
        raise ValueError(f"unknown encoder {config.encoder!r}; choose 'frame' or 'rnn'")
    return encoder.to(train.device), decoder.to(train.device)


def hmm_natural_from_encoded(hmm: LatentHMM, encoder, train: torch.Tensor, seed: int = 0) -> Dict[str, torch.Tensor]:
    """:meth:`~pyro_sin.pgm.LatentHMM.encoded_start` with a seeded generator."""
    return hmm.encoded_start(encoder, train, torch.Generator().manual_seed(seed))


def slds_natural_from_encoded(
    slds: SwitchingLDS, encoder, train: torch.Tensor, seed: int = 0
) -> Dict[str, torch.Tensor]:
    """:meth:`~pyro_sin.pgm.SwitchingLDS.encoded_start` with a seeded generator."""
    return slds.encoded_start(encoder, train, torch.Generator().manual_seed(seed))


def make_lds(config: Config, task: SequenceTask) -> LinearDynamicalSystem:
    return LinearDynamicalSystem(config.latent_dim)


def make_hmm(config: Config, task: SequenceTask) -> LatentHMM:
    K = config.num_states
    sticky = torch.ones(K, K) + (config.sticky - 1) * torch.eye(K)
    return LatentHMM(K, config.latent_dim, transition_concentration=sticky)


def make_slds(config: Config, task: SequenceTask) -> SwitchingLDS:
    """A switching LDS with ``config.num_states`` regimes and the same sticky transition prior as the latent HMM."""
    K = config.num_states
    sticky = torch.ones(K, K) + (config.sticky - 1) * torch.eye(K)
    return SwitchingLDS(K, config.latent_dim, transition_concentration=sticky, num_sweeps=config.slds_sweeps)


class DeepLatent:
    """
    A structured prior inside :class:`~pyro_sin.models.DeepLatentSequence`, trained with
    :class:`~pyro_sin.SINELBO` and :class:`~pyro_sin.optim.NaturalAdam`: a
    :class:`harness.Method` of the sequence experiments.

    :param make_prior: ``(config, task) -> prior``.
    :param str factor_key: the field of :class:`Config` that holds the SIN factor (``"tied"``/``"free"``).
    :param init: optional ``(prior, encoder, train, seed) -> init_natural``.
    :param overrides: fields of :class:`Config` to change for this method (e.g. ``factor="free"``).
    """

    def __init__(
        self,
        name: str,
        config: Config,
        make_prior: Callable[[Config, SequenceTask], object],
        factor_key: str = "factor",
        init=None,
        **overrides,
    ):
        self.name, self.config, self.make_prior, self.factor_key, self.init = name, config, make_prior, factor_key, init
        self.overrides = overrides

    def train(self, task: SequenceTask, seed: int, progress: bool = True) -> Trained:
        config = replace(self.config, seed=seed, **self.overrides)
        fresh_start(config.seed)
        encoder, decoder = _networks(config, task.train)
        prior = self.make_prior(config, task).to(task.train.device)
        model = DeepLatentSequence(prior, decoder, len(task.train))
        init_natural = None if self.init is None else self.init(prior, encoder, task.train, config.seed)
        guide = model.make_guide(encoder, factor=getattr(config, self.factor_key), init_natural=init_natural)
        svi = SVI(
            model,
            guide,
            NaturalAdam({"lr": config.lr}, natural_lr=config.natural_lr),
            SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
        )
        method = DeepLatentMethod(model, guide)
        evaluator = Evaluator(task, config.eval_samples)
        return _scored(evaluator, method, _fit(config, svi, task.train, evaluator, method, self.name, progress))


class InDtype:
    """A trained method behind the harness's interface, fed in ``dtype`` and answering in the dtype it was asked in."""

    def __init__(self, method, dtype: torch.dtype):
        self.method, self.dtype = method, dtype

    def _call(self, name, y, *args):
        args = [a.to(self.dtype) if torch.is_tensor(a) else a for a in args]
        answer = getattr(self.method, name)(y.to(self.dtype), *args)
        return answer.to(y.dtype) if torch.is_tensor(answer) else answer

    def decode_posterior(self, y, mask=None, num_samples=50):
        return self._call("decode_posterior", y, mask, num_samples)

    def predict(self, y, horizon, num_samples=50):
        return self._call("predict", y, horizon, num_samples)

    def test_log_likelihood(self, y, num_samples=100):
        return self._call("test_log_likelihood", y, num_samples)


def held_out_split(train: torch.Tensor, share: float = 0.25) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    ``(fit, held_out)``: every ``1/share``-th training sequence held out, or, with fewer sequences
    than that, the last ``share`` of every sequence in time (one long series: its end).
    """
    every = round(1 / share)
    if len(train) >= every:
        held = torch.zeros(len(train), dtype=torch.bool)
        held[every - 1 :: every] = True
        return train[~held.to(train.device)], train[held.to(train.device)]
    cut = train.shape[1] - max(1, round(share * train.shape[1]))
    return train[:, :cut], train[:, cut:]


class AutoregressiveSAN:
    r"""
    SAN-LDS started from the VAR it contains (:func:`~pyro_sin.pgm.lds.autoregressive_start`), the
    data choosing its order and its training length:

    * the VAR's order by AIC on all the training sequences, up to ``max_order`` and no more than
      keeps the latent dimension ``pP`` at most ``max_latent_dim`` (the Kalman filter's cost grows
      as its cube);
    * a quarter of the training data held out (:func:`held_out_split`), SAN-LDS started from the VAR
      fitted to the rest and trained with ``fit(select=...)`` on the held-out log-likelihood per
      frame, evaluated on common random numbers; a trained checkpoint replaces step 0 only when it
      is better by more than ``margin`` nats per frame (smaller differences are the estimate's noise);
    * when step 0 wins, the start is fitted again to all the training sequences: the classic model
      itself; otherwise the chosen checkpoint is the model.

    It trains in float64 (see :func:`~pyro_sin.pgm.lds.autoregressive_start`) with the harness's
    ``max_iterations``, ``eval_every``, ``seconds``, ``batch_size``, ``num_particles``, ``hidden``
    and ``natural_lr``, its own Adam learning rate ``lr``, and stops after ``patience`` evaluations
    without a better held-out score.
    """

    def __init__(
        self,
        config: Config,
        name: str = "SAN-LDS",
        max_order: int = 12,
        max_latent_dim: int = 36,
        lr: float = 1e-3,
        margin: float = 0.02,
        patience: int = 4,
    ):
        self.name, self.config, self.max_order, self.max_latent_dim = name, config, max_order, max_latent_dim
        self.lr, self.margin, self.patience = lr, margin, patience

    def _model(self, start, num_data: int):
        model = DeepLatentSequence(start.prior, start.decoder, num_data)
        return model, model.make_guide(start.encoder, init_natural=start.natural)

    def train(self, task: SequenceTask, seed: int, progress: bool = True) -> Trained:
        config = replace(self.config, seed=seed)
        fresh_start(seed)
        train = task.train.double()
        P = train.shape[-1]
        order = order_by_aic(train, max(1, min(self.max_order, self.max_latent_dim // P))).order
        hidden = (config.hidden,) * 2
        fit_part, held_out = held_out_split(train)
        start = autoregressive_start(fit_part, order, hidden=hidden)
        model, guide = self._model(start, len(fit_part))
        svi = SVI(
            model,
            guide,
            NaturalAdam({"lr": self.lr}, natural_lr=config.natural_lr),
            SINELBO(num_particles=config.num_particles, max_plate_nesting=1),
        )
        evaluations = []

        def evaluate():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                score = model.test_log_likelihood(guide, held_out, config.eval_samples) / held_out.shape[1]
            evaluations.append(score)
            return {"held_out_log_likelihood": score}

        # step 0 wins unless a trained checkpoint is better by more than the margin
        selection_score = lambda: evaluations[-1] - (self.margin if len(evaluations) > 1 else 0.0)  # noqa: E731
        history = fit(
            svi,
            fit_part,
            iterations=config.max_iterations,
            batch_size=min(config.batch_size, len(fit_part)),
            generator=torch.Generator().manual_seed(seed),
            evaluate=evaluate,
            eval_every=config.eval_every,
            max_seconds=config.seconds,
            progress=progress,
            desc=self.name,
            select=selection_score,
            patience=self.patience,
        )
        if history.selected_step == 0:  # the classic model, fitted to all the training sequences
            model, guide = self._model(autoregressive_start(train, order, hidden=hidden), len(train))
        method = InDtype(DeepLatentMethod(model, guide), torch.float64)
        trained = _scored(Evaluator(task, config.eval_samples), method, history)
        trained.metrics.update(order=order, latent_dim=order * P, selected_step=history.selected_step)
        return trained


class UnstructuredGuide:
    """The same generative model as SAN-LDS with a bidirectional-GRU guide and point dynamics (``Trace_ELBO``, Adam)."""

    name = "unstructured guide"

    def __init__(self, config: Config):
        self.config = config

    def train(self, task: SequenceTask, seed: int, progress: bool = True) -> Trained:
        config = replace(self.config, seed=seed)
        fresh_start(config.seed)
        frames = task.train.reshape(-1, task.train.shape[-1])
        _, decoder = _networks(config, task.train)
        model = DeepLatentSequence(LinearDynamicalSystem(config.latent_dim).to(frames.device), decoder, len(task.train))
        rnn = SequenceEncoder(frames.shape[-1], config.latent_dim, (config.hidden,) * 2)
        encoder = StandardizedEncoder(rnn, Standardization.fit(frames, spread=config.spread)).to(frames.device)
        guide = UnstructuredLDSGuide(model, encoder)
        elbo = Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": config.lr}), elbo)
        evaluator = Evaluator(task, config.eval_samples)
        return _scored(evaluator, guide, _fit(config, svi, task.train, evaluator, guide, self.name, progress))


class FittedInClosedForm:
    """
    A baseline fitted in closed form (``fit(train) -> predictor``: a vector autoregression,
    the training mean); its history is one evaluation at step 0.
    """

    def __init__(self, name: str, config: Config, fit_predictor: Callable[[torch.Tensor], object]):
        self.name, self.config, self.fit_predictor = name, config, fit_predictor

    def train(self, task: SequenceTask, seed: int, progress: bool = True) -> Trained:
        method = self.fit_predictor(task.train)
        evaluator = Evaluator(task, self.config.eval_samples)
        return _scored(
            evaluator, method, History([], [0], [0.0], [{"forecast_mse": evaluator.forecast_error(method)}], [])
        )


def autoregression(order: int, config: Config) -> FittedInClosedForm:
    """VAR(``order``) by least squares (exact Kalman-smoother imputation)."""
    return FittedInClosedForm(f"VAR({order})", config, VectorAutoregression(order).fit)


def training_mean(config: Config) -> FittedInClosedForm:
    return FittedInClosedForm("training mean", config, TrainingMean)


def _scored(evaluator: Evaluator, method, history: History) -> Trained:
    """The evaluator's metrics of a trained method, with its training steps and time (and where it diverged)."""
    row = evaluator(method)
    row["iterations"] = float(history.eval_steps[-1])
    row["seconds"] = float(history.eval_seconds[-1])
    if "diverged_at" in history.evals[-1]:
        row["diverged_at"] = history.evals[-1]["diverged_at"]
    return Trained(row, history, method)


def standard_methods(config: Config) -> List[Method]:
    """Every method of the sequence experiments; ``config.methods`` chooses among them by name."""
    return [
        DeepLatent("SAN-LDS", config, make_lds),
        DeepLatent("latent HMM", config, make_hmm, "hmm_factor", hmm_natural_from_encoded),
        DeepLatent("SLDS (SAN)", config, make_slds, "slds_factor", slds_natural_from_encoded),
        # with the tied factor the switching LDS's SIN is the SVAE's local step (a structured mean
        # field against q(θ)'s expectations); the free factor gives the SIN its own parameters
        DeepLatent(
            "SLDS (free factor)", config, make_slds, "slds_factor", slds_natural_from_encoded, slds_factor="free"
        ),
        UnstructuredGuide(config),
        autoregression(1, config),
        autoregression(2, config),
        training_mean(config),
    ]


def run_methods(config: Config, task: SequenceTask, progress: bool = True, methods: Optional[Sequence[Method]] = None):
    """
    Trains and scores ``methods`` (default: those of :func:`standard_methods` named in ``config.methods``).

    A method whose training diverges (:class:`~pyro_sin.training.DivergenceError`) after its
    first evaluation is scored with the parameters of its last evaluation before the divergence,
    its row noting ``diverged_at``; one that diverges earlier is reported with ``{"diverged": 1}``
    and a warning. The others go on either way.

    :returns: ``(rows, trained, histories)``: metrics per method, the trained methods, their histories.
    """
    task = task.to(config.device)
    if methods is None:
        available = {method.name: method for method in standard_methods(config)}
        methods = [available[name] for name in config.methods]
    trained = compare(methods, task, config.seed, progress)
    rows = {name: t.metrics for name, t in trained.items()}
    models = {name: t.model for name, t in trained.items() if t.model is not None}
    return rows, models, {name: t.history for name, t in trained.items() if t.history is not None}


# ----- figures -----------------------------------------------------------------------------


def _matched_labels(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``pred`` relabelled by the best one-to-one matching to ``true`` (for display)."""
    from scipy.optimize import linear_sum_assignment

    K = max(pred.max(), true.max()) + 1
    table = np.zeros((K, K))
    np.add.at(table, (pred, true), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = dict(zip(rows, cols))
    return np.array([mapping.get(k, k) for k in pred.reshape(-1)]).reshape(pred.shape)


def plot_segmentation(results: Results, evaluator: Evaluator, methods: Dict[str, object], num_sequences: int = 4):
    """``segmentation.png``: the true regimes and each method's ``argmax_k q(z_t = k)`` in the first test sequences."""
    task = evaluator.task
    segmenting = {name: evaluator.segment(m) for name, m in methods.items()}
    segmenting = {name: s for name, s in segmenting.items() if s is not None}
    if task.regimes is None or not segmenting:
        return False
    K = int(max([task.regimes.max()] + [s.max() for s in segmenting.values()])) + 1
    colours = np.array(component_colours(K))
    rows = 1 + len(segmenting)
    fig = new_figure(ncols=1, width=9, height=0.55 * rows * num_sequences + 0.8)
    fig.clear()
    axes = fig.subplots(num_sequences, 1, sharex=True, squeeze=False)[:, 0]
    true = task.regimes.cpu().numpy()
    for i, ax in enumerate(axes):
        images = [colours[true[i]]]
        labels = ["true"]
        for name, states in segmenting.items():
            images.append(colours[_matched_labels(states.cpu().numpy(), true)[i]])
            labels.append(name)
        ax.imshow(np.stack(images), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(rows))
        ax.set_yticklabels(labels, fontsize="small")
        ax.set_ylabel(f"seq. {i}", fontsize="small")
    axes[-1].set_xlabel("time step (colour = regime; inferred labels matched to the true ones)")
    results.figure(fig, "segmentation.png", dpi=120)
    return True


def plot_forecasts(
    results: Results, evaluator: Evaluator, methods: Dict[str, object], channels=(0,), sequence: int = 0, samples=50
):
    """
    ``forecast_and_imputation.png``: a test sequence's observed frames (with the imputation gap),
    the true future and each method's forecast and imputation.
    """
    task = evaluator.task
    T, H = task.num_steps, task.horizon
    observed = evaluator.observed[sequence : sequence + 1]
    mask = evaluator.mask[sequence : sequence + 1]
    fig = new_figure(ncols=1, width=9, height=2.4 * len(channels))
    fig.clear()
    axes = fig.subplots(len(channels), 1, sharex=True, squeeze=False)[:, 0]
    steps = np.arange(T + H)
    for ax, c in zip(axes, channels):
        ax.plot(steps, task.targets[sequence, :, c].cpu().numpy(), "k-", lw=1, label="truth")
        seen = mask[0].bool().cpu().numpy()
        ax.plot(np.arange(T)[seen], task.test[sequence, :T, c].cpu().numpy()[seen], "k.", ms=2, label="observed")
        for name, method in methods.items():
            forecast = method.predict(observed, H, samples)[0, :, c].cpu().numpy()
            imputed = method.decode_posterior(observed * mask[..., None], mask, samples)[0, :, c].cpu().numpy()
            (line,) = ax.plot(np.arange(T, T + H), forecast, lw=1.2, label=name)
            gap = np.arange(task.gap[0], task.gap[1])
            ax.plot(gap, imputed[gap], lw=1.2, ls="--", color=line.get_color())
        ax.axvspan(task.gap[0] - 0.5, task.gap[1] - 0.5, color="0.9")
        ax.axvline(T - 0.5, color="tab:red", lw=0.8)
        ax.set_ylabel(f"channel {c}")
    axes[0].legend(fontsize="x-small", ncol=4, loc="upper left")
    axes[-1].set_xlabel("time step (grey: hidden frames, dashed: imputation; right of the red line: forecast)")
    results.figure(fig, "forecast_and_imputation.png", dpi=120)


def plot_training_curves(results: Results, histories: Dict[str, History], horizon: int):
    """``training_curves.png``: the test forecast error against training time."""
    fig = new_figure()
    curves = {
        n: (h.eval_seconds, [e["forecast_mse"] for e in h.evals]) for n, h in histories.items() if len(h.evals) > 1
    }
    if not curves:
        return False
    plot_curves(fig.axes[0], curves, ylabel=f"test forecast MSE (1..{horizon} steps)", xlabel="training time (s)")
    results.figure(fig, "training_curves.png", dpi=120)
    return True


def experiment_main(
    argv, description: str, make_task, config: Config, quick_config: Config, title: str, channels=(0,),
    default_out="results/sequences", methods: Callable[[Config], List[Method]] = standard_methods,
):
    """
    The command line of a sequence experiment: trains the methods of ``config.methods``
    (or ``--methods``), prints and writes the metrics table (``results.md``, ``results.json``)
    and the figures (``segmentation.png`` where the data have regimes,
    ``forecast_and_imputation.png``, ``training_curves.png``).

    :param make_task: ``(config, quick) -> SequenceTask``.
    :param methods: ``config -> methods`` to choose from (default :func:`standard_methods`).
    """
    names = [method.name for method in methods(config)]
    command = parser(description, default_out, seed=0, iterations=None, seconds=None, methods=names)
    command.add_argument("--factor", choices=["tied", "free"], help="SAN-LDS's SIN factor")
    command.add_argument("--latent-dim", type=int)
    args = command.parse_args(argv)
    config = quick_config if args.quick else config
    overrides = {"seed": args.seed, "device": args.device}
    for key in ("seconds", "factor", "latent_dim"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.iterations is not None:
        overrides["max_iterations"] = args.iterations
    config = replace(config, **overrides)
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    available = {method.name: method for method in methods(config)}
    chosen = [available[name] for name in config.methods]
    results = command.results(args)
    pyro.set_rng_seed(config.seed)
    task = make_task(config, args.quick).to(config.device)
    rows, trained, histories = run_methods(config, task, args.progress, chosen)
    curves = {n: [h.eval_seconds, [e["forecast_mse"] for e in h.evals]] for n, h in histories.items() if h.evals}
    evaluator = Evaluator(task, config.eval_samples)
    plot_segmentation(results, evaluator, trained)
    shown = {n: m for n, m in trained.items() if n != "training mean"}
    plot_forecasts(results, evaluator, shown, channels, samples=config.eval_samples)
    plot_training_curves(results, histories, task.horizon)
    results.write(
        title, [markdown_table(rows)], {"title": title, "config": asdict(config), "metrics": rows, "curves": curves}
    )
    return rows
