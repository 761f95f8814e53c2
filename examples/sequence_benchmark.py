r"""
The real-sequence benchmark, one command::

    python examples/sequence_benchmark.py                      # every section, 5 seeds
    python examples/sequence_benchmark.py --sections forecasting --datasets sunspots macro

**Forecasting and imputation** (section ``forecasting``), on the real sequences of
:func:`real_sequences.benchmark_tasks` (BasicMotions, sunspots, macro, El Niño; standardised by
their training part): from a context of 40 frames, the mean squared error of the forecast over
horizons 1..8, and of the imputation of a 5-step gap (frames 20..24 of the context). Methods:

* ``SAN-LDS``: :class:`sequence_harness.AutoregressiveSAN` at its default settings: started from
  the VAR it contains, the order by AIC, the training length by the held-out log-likelihood;
* ``statsmodels AR/VAR (AIC)``: statsmodels' ``AutoReg`` / ``VAR``, the order by its own AIC up to
  12, its forecasts, and gap imputation by statsmodels' Kalman smoother of that model (``SARIMAX`` /
  ``VARMAX``) (:class:`baselines.statsmodels_ar.StatsmodelsAutoregression`);
* ``VAR (AIC)``: our least-squares VAR, each training sequence predicted from its own past (the
  classic model SAN-LDS starts from, without its latent-dimension cap);
* ``training mean``.

SAN-LDS runs ``--seeds`` seeds (median and worst seed); the other methods are deterministic (one
run: a seed changes none of their numbers). Seconds are training time per method and seed.

**Segmentation** (section ``segmentation``): the latent HMM and the switching LDS from their
classic starts against hmmlearn's ``GaussianHMM`` on BasicMotions activities and JapaneseVowels
speakers joined end to end (:mod:`segmentation_benchmark`, which also runs alone).

The benchmark is a list of sections (:data:`SECTIONS`), each a name, a title and a function that
runs it and returns its Markdown and its record; ``results.md`` / ``results.json`` hold them all.
``--quick`` (or ``CI``) runs one seed on a few windows with a few training steps.
"""

import statistics
import time
from dataclasses import asdict, replace
from typing import Callable, Dict, List, NamedTuple, Tuple

from baselines import VectorAutoregression
from baselines.statsmodels_ar import StatsmodelsAutoregression
from harness import Results, markdown_table, parser
from real_sequences import BENCHMARK_SETS, benchmark_tasks
from sequence_harness import AutoregressiveSAN, Config, FittedInClosedForm, SequenceTask, TrainingMean

FORECAST, IMPUTATION = "forecast_mse_1..8", "imputation_mse"
SAN = "SAN-LDS"
CLASSIC = "statsmodels AR/VAR (AIC)"

CONFIG = Config(hidden=50, batch_size=8, num_particles=2, max_iterations=300, eval_every=20, eval_samples=50)
QUICK = replace(CONFIG, max_iterations=4, eval_every=2, eval_samples=8)
QUICK_LATENT_DIM = 12  # the short run's cap on SAN-LDS's latent dimension (BasicMotions: a VAR(2))


class Section(NamedTuple):
    """One part of the benchmark: ``run(args, config, results) -> (markdown, record)``."""

    name: str
    title: str
    run: Callable


# ----- forecasting and imputation --------------------------------------------------------------


def forecasting_methods(config: Config, quick: bool = False) -> List:
    """The compared methods: SAN-LDS (seeded) first, then the deterministic ones."""
    cap = {"max_latent_dim": QUICK_LATENT_DIM} if quick else {}
    return [
        AutoregressiveSAN(config, name=SAN, **cap),
        FittedInClosedForm(CLASSIC, config, lambda train: StatsmodelsAutoregression(max_order=12).fit(train)),
        FittedInClosedForm("VAR (AIC)", config, lambda train: VectorAutoregression(None, max_order=12).fit(train)),
        FittedInClosedForm("training mean", config, TrainingMean),
    ]


def _timed(method, task: SequenceTask, seed: int, progress: bool) -> Dict[str, float]:
    start = time.perf_counter()
    row = dict(method.train(task, seed, progress).metrics)
    row["seconds"] = time.perf_counter() - start  # fitting and scoring, for every method alike
    return row


def summarise(per_seed: List[Dict[str, float]]) -> Dict[str, float]:
    """Median over seeds of every metric, the worst seed's forecast and imputation errors, and the number of seeds."""
    row = {key: statistics.median(r[key] for r in per_seed) for key in per_seed[0]}
    row[f"{FORECAST} worst"] = max(r[FORECAST] for r in per_seed)
    row[f"{IMPUTATION} worst"] = max(r[IMPUTATION] for r in per_seed)
    row["seeds"] = len(per_seed)
    return row


def target_lines(name: str, rows: Dict[str, Dict[str, float]]) -> List[str]:
    """Whether SAN-LDS's median is at or below the statsmodels baseline's, on forecasting and on imputation."""
    lines = []
    for key, what in ((FORECAST, "forecast"), (IMPUTATION, "imputation")):
        ours, theirs = rows[SAN][key], rows[CLASSIC][key]
        verdict = "met" if ours <= theirs else f"missed by {ours - theirs:.4g} ({100 * (ours / theirs - 1):.2f}%)"
        lines.append(f"- {name}, {what}: SAN-LDS {ours:.4g} against {theirs:.4g}: {verdict}")
    return lines


def run_forecasting(args, config: Config, results: Results) -> Tuple[str, dict]:
    tasks = benchmark_tasks(args.datasets, args.quick)
    seeds = 1 if args.quick else args.seeds
    tables, verdicts, record = [], [], {}
    for name, task in tasks.items():
        rows = {}
        for method in forecasting_methods(config, args.quick):
            runs = seeds if method.name == SAN else 1
            rows[method.name] = summarise([_timed(method, task, seed, args.progress) for seed in range(runs)])
            print(f"{name} / {method.name}: {FORECAST} {rows[method.name][FORECAST]:.4g}, "
                  f"{IMPUTATION} {rows[method.name][IMPUTATION]:.4g}", flush=True)
        columns = [
            (FORECAST, "forecast MSE 1..8 (median)"),
            (f"{FORECAST} worst", "worst seed"),
            (IMPUTATION, "5-step gap MSE (median)"),
            (f"{IMPUTATION} worst", "worst seed"),
            ("seconds", "seconds"),
            ("seeds", "seeds"),
            ("order", "VAR order"),
            ("latent_dim", "latent dim"),
            ("selected_step", "selected step"),
        ]
        shape = "×".join(str(s) for s in task.train.shape)
        tables.append(f"### {name} (train {shape}, {len(task.test)} test windows)\n\n" + markdown_table(rows, columns))
        verdicts += target_lines(name, rows)
        record[name] = rows
    text = "\n\n".join(tables + ["Targets (SAN-LDS's median at or below statsmodels'):\n\n" + "\n".join(verdicts)])
    return text, record


def run_segmentation(args, config: Config, results: Results) -> Tuple[str, dict]:
    """The segmentation benchmark (:mod:`segmentation_benchmark`) at its own settings, with ``--seeds`` seeds."""
    import segmentation_benchmark

    if args.quick:  # one seed on BasicMotions
        settings = replace(segmentation_benchmark.QUICK, seeds=1, tasks=("basic_motions",))
    else:
        settings = replace(segmentation_benchmark.SegmentationConfig(), seeds=args.seeds)
    rows = segmentation_benchmark.run(settings, args.quick, args.progress)
    return segmentation_benchmark.markdown(rows), rows


SECTIONS = [
    Section("forecasting", "Forecasting (context 40, horizons 1..8) and 5-step gap imputation", run_forecasting),
    Section("segmentation", "Segmentation of real multi-regime sequences (latent HMM, switching LDS, hmmlearn)",
            run_segmentation),
]


def main(argv=None):
    names = [section.name for section in SECTIONS]
    command = parser(__doc__, "results/sequence_benchmark", seeds=5, iterations=None, seconds=None)
    command.add_argument("--sections", nargs="+", choices=names, default=names, help="the sections to run")
    command.add_argument("--datasets", nargs="+", choices=BENCHMARK_SETS, default=list(BENCHMARK_SETS))
    args = command.parse_args(argv)
    config = QUICK if args.quick else CONFIG
    overrides = {"device": args.device}
    if args.iterations is not None:
        overrides["max_iterations"] = args.iterations
    if args.seconds is not None:
        overrides["seconds"] = args.seconds
    config = replace(config, **overrides)
    results = command.results(args)
    parts, record = [], {"config": asdict(config), "seeds": 1 if args.quick else args.seeds}
    for section in SECTIONS:
        if section.name in args.sections:
            text, record[section.name] = section.run(args, config, results)
            parts.append(f"## {section.title}\n\n{text}")
    results.write("Real-sequence benchmark", parts, record)
    return record


if __name__ == "__main__":
    main()
