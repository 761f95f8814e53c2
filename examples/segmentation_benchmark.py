"""
Unsupervised segmentation of real multi-regime sequences: every method fits the training
sequences without their labels, then segments the test sequences (``argmax_k q(z_t = k)``, or
hmmlearn's Viterbi path), scored against the true regimes by NMI, the adjusted Rand index and
the Hungarian accuracy over all test frames; seconds are the wall time of the whole fit (starts,
training, held-out evaluations) and the segmentation, on one CPU thread::

    python examples/segmentation_benchmark.py --out results/segmentation [--seeds 5] [--quick]

Data sets (labelled recordings of the UEA archive that ship with ``sktime``, so nothing is
downloaded), each recording of one regime, joined end to end:

* ``basic_motions`` — *BasicMotions*: a smart watch's 3-axis accelerometer and gyroscope (6
  channels, 10 Hz) while a person stands, walks, runs or plays badminton; each sequence is one
  recording of each activity in random order (T = 400, K = 4), 10 training sequences from the
  training recordings and 10 test sequences from the test recordings;
* ``japanese_vowels`` — *JapaneseVowels*: 12 LPC cepstral coefficients of the vowel /ae/ uttered
  by nine speakers; each sequence is a block of 60 frames (consecutive utterances) of each of
  speakers 1-4 in random order (T = 240, K = 4, speaker segmentation), 7 training and 8 test
  sequences.

Methods: the latent HMM and the switching LDS (:mod:`sequence_harness`'s networks and priors,
the latent dimension the data's up to 8, a precise encoder at the start; started from their
classic fits on every training sequence, then trained on four fifths of them with best-checkpoint
selection on the held-out bound of the last fifth) and hmmlearn's ``GaussianHMM`` (full
covariances, 100 EM iterations at most, its other defaults). Each runs
with ``--seeds`` seeds (the joins are the same for all); the table gives the median and the worst
seed. The number of regimes is the task's (4 in both), or with ``--num-states bic`` the one of 2..8
whose Gaussian HMM has the lowest BIC on the training sequences. :func:`run` is the section of the
sequence benchmark; ``--quick`` (or ``CI``) shrinks it.
"""

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from pyro.infer import SVI

from pyro_sin.elbo import SINELBO
from pyro_sin.metrics import clustering_scores
from pyro_sin.models import DeepLatentSequence
from pyro_sin.optim import NaturalAdam
from pyro_sin.training import fit

from baselines.hmm import HMMLearnGaussianHMM
from harness import fresh_start, markdown_table, parser
from sequence_harness import Config, _networks, make_hmm, make_slds

SCORES = ("nmi", "ari", "accuracy", "seconds")


class SegmentationTask(NamedTuple):
    """Training sequences and labelled test sequences of regimes joined end to end."""

    name: str
    train: torch.Tensor  # (N, T, P)
    test: torch.Tensor  # (M, T, P)
    regimes: torch.Tensor  # (M, T) the true regime of every test frame
    num_states: int  # the number of regimes (given to every method)


# ----- data ----------------------------------------------------------------------------------------


def _join(blocks: List[List[np.ndarray]], generator: np.random.Generator):
    """Sequences of one block of each regime in random order, ``blocks[k][i]`` the ``i``-th block of regime ``k``."""
    K, count = len(blocks), min(len(b) for b in blocks)
    picks = [generator.permutation(len(b))[:count] for b in blocks]
    sequences, regimes = [], []
    for i in range(count):
        order = generator.permutation(K)
        sequences.append(np.concatenate([blocks[k][picks[k][i]] for k in order]))
        regimes.append(np.concatenate([np.full(len(blocks[k][picks[k][i]]), k) for k in order]))
    return torch.as_tensor(np.stack(sequences), dtype=torch.get_default_dtype()), torch.as_tensor(np.stack(regimes))


def _standardised(train: torch.Tensor, test: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both splits standardised channel by channel by the training frames' mean and spread."""
    frames = train.reshape(-1, train.shape[-1])
    loc, scale = frames.mean(0), frames.std(0)
    return (train - loc) / scale, (test - loc) / scale


def basic_motions_task(seed: int = 0) -> SegmentationTask:
    """BasicMotions recordings of the four activities joined end to end (see the module's docstring)."""
    from pyro_sin.datasets import load_basic_motions

    generator = np.random.default_rng(seed)
    splits = []
    for split in ("train", "test"):
        X, y = load_basic_motions(split)  # (40, 6, 100), class names
        classes = sorted(set(y))
        blocks = [[x.T for x, label in zip(X, y) if label == c] for c in classes]
        splits.append(_join(blocks, generator))
    (train, _), (test, regimes) = splits
    train, test = _standardised(train, test)
    return SegmentationTask("basic_motions", train, test, regimes, 4)


def _vowel_blocks(X, y, speakers, length: int) -> List[List[np.ndarray]]:
    """Blocks of ``length`` frames of each speaker: consecutive utterances joined, then cut."""
    blocks = []
    for speaker in speakers:
        frames = np.concatenate([np.stack(list(row), -1) for row, label in zip(X, y) if label == speaker])
        blocks.append([frames[i : i + length] for i in range(0, len(frames) - length + 1, length)])
    return blocks


def japanese_vowels_task(seed: int = 0, speakers=("1", "2", "3", "4"), block: int = 60) -> SegmentationTask:
    """JapaneseVowels speakers' utterances joined end to end (see the module's docstring)."""
    from sktime.datasets import load_UCR_UEA_dataset

    generator = np.random.default_rng(seed)
    splits = []
    for split in ("train", "test"):
        X, y = load_UCR_UEA_dataset("JapaneseVowels", split=split, return_X_y=True)
        rows = [[np.asarray(X.iloc[i, c], dtype=np.float64) for c in range(X.shape[1])] for i in range(len(X))]
        splits.append(_join(_vowel_blocks(rows, np.asarray(y).astype(str), speakers, block), generator))
    (train, _), (test, regimes) = splits
    train, test = _standardised(train, test)
    return SegmentationTask("japanese_vowels", train, test, regimes, len(speakers))


TASKS: Dict[str, Callable[[int], SegmentationTask]] = {
    "basic_motions": basic_motions_task,
    "japanese_vowels": japanese_vowels_task,
}


def scores(segmentation: torch.Tensor, task: SegmentationTask) -> Dict[str, float]:
    """NMI, ARI and Hungarian accuracy of a segmentation ``(M, T)`` of the test sequences."""
    found = clustering_scores(segmentation.reshape(-1).cpu(), task.regimes.reshape(-1))
    return {key: found[key] for key in ("nmi", "ari", "accuracy")}


# ----- methods ---------------------------------------------------------------------------------------


@dataclass
class SegmentationConfig:
    """Settings of the benchmark; ``deep`` those of the deep models (:class:`sequence_harness.Config`)."""

    seeds: int = 5
    tasks: Tuple[str, ...] = tuple(TASKS)
    methods: Tuple[str, ...] = ("latent HMM", "SLDS (SAN)", "hmmlearn GaussianHMM")
    hmmlearn_iterations: int = 100
    heldout: float = 0.2  # the share of the training sequences that scores the checkpoints
    num_states: str = "task"  # "task": the number of regimes the task has; "bic": the Gaussian HMM's BIC over 2..8
    max_latent_dim: int = 8  # the deep models' latent dimension: the data's, up to this
    # a precise encoder (init_noise = the decoder's floor), so that q(z) at the start is the classic fit's
    deep: Config = field(
        default_factory=lambda: Config(
            max_iterations=50, eval_every=10, seconds=600.0, num_particles=1, init_noise=0.05
        )
    )


def hmmlearn_method(task: SegmentationTask, config: SegmentationConfig, seed: int) -> Dict[str, float]:
    start = time.perf_counter()
    model = HMMLearnGaussianHMM(task.num_states, config.hmmlearn_iterations, seed).fit(task.train)
    segmentation = model.segment(task.test)
    row = scores(segmentation, task)
    row.update(seconds=time.perf_counter() - start, iterations=float(model.iterations))
    return row


def deep_method(make_prior) -> Callable[[SegmentationTask, SegmentationConfig, int], Dict[str, float]]:
    """A latent regime model (``make_prior(config, task)``) from its classic start, with best-checkpoint selection."""

    def train(task: SegmentationTask, config: SegmentationConfig, seed: int) -> Dict[str, float]:
        start = time.perf_counter()
        latent_dim = min(task.train.shape[-1], config.max_latent_dim)
        deep = replace(config.deep, seed=seed, num_states=task.num_states, latent_dim=latent_dim)
        fresh_start(seed)
        num_heldout = max(1, round(config.heldout * len(task.train)))
        train, heldout = task.train[:-num_heldout], task.train[-num_heldout:]
        encoder, decoder = _networks(deep, train)
        prior = make_prior(deep, None)
        model = DeepLatentSequence(prior, decoder, len(train))
        # the classic fit sees every training sequence, as hmmlearn's does; the held-out ones then
        # score the checkpoints of the deep model's training, which does not see them
        natural = prior.encoded_start(encoder, task.train, torch.Generator().manual_seed(seed))
        guide = model.make_guide(encoder, init_natural=natural)
        elbo = SINELBO(num_particles=deep.num_particles, max_plate_nesting=1)
        svi = SVI(model, guide, NaturalAdam({"lr": deep.lr}, natural_lr=deep.natural_lr), elbo)
        frames = heldout.shape[0] * heldout.shape[1] * len(train) / len(heldout)

        def evaluate():
            return {"heldout_bound": -elbo.loss(model, guide, heldout) / frames}

        history = fit(
            svi, train, iterations=deep.max_iterations, batch_size=min(deep.batch_size, len(train)),
            generator=torch.Generator().manual_seed(seed), evaluate=evaluate, eval_every=deep.eval_every,
            max_seconds=deep.seconds, progress=False, select="heldout_bound",
        )
        segmentation = model.posterior(guide, task.test).state_probs.argmax(-1)
        row = scores(segmentation, task)
        row.update(
            seconds=time.perf_counter() - start,
            iterations=float(len(history.losses)),
            selected_step=float(history.selected_step),
            heldout_bound_start=history.evals[0]["heldout_bound"],
            heldout_bound=max(e["heldout_bound"] for e in history.evals),
        )
        return row

    return train


METHODS = {
    "latent HMM": deep_method(make_hmm),
    "SLDS (SAN)": deep_method(make_slds),
    "hmmlearn GaussianHMM": hmmlearn_method,
}


# ----- the benchmark ---------------------------------------------------------------------------------


def summary(per_seed: List[Dict[str, float]]) -> Dict[str, float]:
    """The median over seeds of every number, and the worst seed's NMI and accuracy (the lowest) and seconds."""
    row = {key: float(np.median([r[key] for r in per_seed])) for key in per_seed[0]}
    row.update(
        worst_nmi=min(r["nmi"] for r in per_seed),
        worst_accuracy=min(r["accuracy"] for r in per_seed),
        worst_seconds=max(r["seconds"] for r in per_seed),
    )
    return row


def run(config: Optional[SegmentationConfig] = None, quick: bool = False, progress: bool = True):
    """
    Every method on every data set with every seed: the section of the sequence benchmark.

    :returns: ``{"<data set> / <method>": summary}`` (:func:`summary`; :func:`markdown` writes the table).
    """
    return run_seeds(config, quick, progress)[0]


def run_seeds(config: Optional[SegmentationConfig] = None, quick: bool = False, progress: bool = True):
    """:func:`run`'s rows, and every seed's row of every method."""
    config = config or (QUICK if quick else SegmentationConfig())
    rows, per_seed = {}, {}
    for task_name in config.tasks:
        task = TASKS[task_name](0)
        if config.num_states == "bic":
            from pyro_sin.pgm.classic_regimes import select_num_states

            chosen = select_num_states(task.train, range(2, 9), generator=torch.Generator().manual_seed(0))
            task = task._replace(num_states=chosen.num_states)
        for method in config.methods:
            results = []
            for seed in range(config.seeds):
                results.append(METHODS[method](task, config, seed))
                if progress:
                    shown = ", ".join(f"{k} {results[-1][k]:.3g}" for k in SCORES)
                    print(f"{task_name} / {method} / seed {seed}: {shown}", flush=True)
            per_seed[f"{task_name} / {method}"] = results
            rows[f"{task_name} / {method}"] = {**summary(results), "num_states": task.num_states}
    return rows, per_seed


COLUMNS = [
    ("num_states", "K"), ("nmi", "NMI"), ("worst_nmi", "worst NMI"), ("ari", "ARI"), ("accuracy", "accuracy"),
    ("worst_accuracy", "worst accuracy"), ("seconds", "seconds"), ("worst_seconds", "worst seconds"),
    ("iterations", "iterations"), ("selected_step", "selected step"),
]


def markdown(rows) -> str:
    """The table of :func:`run`'s rows (medians over seeds, and the worst seed)."""
    return markdown_table(rows, COLUMNS, label="data set / method")


QUICK = SegmentationConfig(
    seeds=1,
    deep=Config(max_iterations=10, eval_every=5, seconds=60.0, num_particles=1, init_noise=0.05),
)


def main(argv=None):
    command = parser(__doc__, "results/segmentation", seeds=None, iterations=None)
    command.add_argument("--tasks", nargs="+", choices=list(TASKS), help="data sets (default: all)")
    command.add_argument("--methods", nargs="+", choices=list(METHODS), help="methods (default: all)")
    command.add_argument(
        "--num-states", choices=["task", "bic"], help="the regimes each task has (default) or the Gaussian HMM's BIC"
    )
    args = command.parse_args(argv)
    config = QUICK if args.quick else SegmentationConfig()
    if args.seeds is not None:
        config = replace(config, seeds=args.seeds)
    if args.iterations is not None:
        config = replace(config, deep=replace(config.deep, max_iterations=args.iterations))
    if args.tasks:
        config = replace(config, tasks=tuple(args.tasks))
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    if args.num_states:
        config = replace(config, num_states=args.num_states)
    torch.set_num_threads(1)
    results = command.results(args)
    rows, per_seed = run_seeds(config, args.quick, args.progress)
    record = {"title": "Segmentation", "config": asdict(config), "metrics": rows, "per_seed": per_seed}
    results.write("Segmentation of real multi-regime sequences", [markdown(rows)], record)
    return rows


if __name__ == "__main__":
    main()
