"""
The tabular benchmark: SAN's mixtures beside the classic tools a user already has, on real
labelled tables nobody tuned for (``examples/tabular_data.py``):
``python examples/tabular.py [--seeds 5] [--data iris,wine] [--quick] [--out results/tabular]``
(extra ``[examples]``; ``--quick`` or ``CI``: one seed on two small tables, a few SAN iterations).

Per table and seed: a stratified 70/30 split (seeded), every feature standardised with the
training split's mean and standard deviation, the same arrays for every method. Each method is
fitted on the training split with ``random_state=seed``; clustering scores (NMI, ARI, accuracy
under the best matching of clusters to classes) are taken on all points, the held-out
log-likelihood per point on the test split, in standardised units for every method. Methods:

* SAN-GMM, SAN-TMM: ``pyro_sin.sklearn.DeepGaussianMixture`` / ``DeepStudentTMixture`` with
  their default settings; SAN-GMM (K = classes): ``n_components`` = the number of classes;
* KMeans: ``n_clusters`` = the number of classes, ``n_init=10``; no density;
* BGMM: ``BayesianGaussianMixture``, ``n_components`` = the number of classes, ``max_iter=1000``;
* BIC-GMM: ``GaussianMixture`` (full covariances) with 1 to 10 components, the least BIC on
  the training split.
"""

import importlib
import math
import statistics
import time
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from pyro_sin.metrics import clustering_scores

from harness import Trained, compare, markdown_table, parser
from tabular_data import TABLES, Table, load

METHODS = ("SAN-GMM", "SAN-TMM", "SAN-GMM (K = classes)", "KMeans", "BGMM", "BIC-GMM")
CLASSIC = ("KMeans", "BGMM", "BIC-GMM")
QUICK_TABLES = ("iris", "crabs")
QUICK_SAN_ITERATIONS = 20  # SAN's max_iter in the short run: it checks the pipeline, not the numbers
SEEDS = 5
TEST_SIZE = 0.3
MAX_BIC_COMPONENTS = 10

# the targets (issue 17): SAN-GMM's median NMI at least the best classic one's minus 0.02,
# its median held-out log-likelihood per point at least BGMM's
NMI_MARGIN = -0.02
LOG_LIKELIHOOD_MARGIN = 0.0


# ----- the data ------------------------------------------------------------------------------


class Split(NamedTuple):
    """One table split and standardised for one seed: what every method sees."""

    table: str
    num_classes: int
    train: np.ndarray  # (N_train, P) standardised
    test: np.ndarray  # (N_test, P) standardised with the training split's statistics
    every: np.ndarray  # (N, P) all rows, in the table's order, standardised the same way
    labels: np.ndarray  # (N,) the class of every row of ``every``
    train_rows: np.ndarray  # (N_train,) the rows of the table in ``train``, in its order
    test_rows: np.ndarray  # (N_test,)
    log_scale: float  # Σ_p log s_p: a log-density in the table's units is the standardised one minus this


def split(table: Table, seed: int, test_size: float = TEST_SIZE) -> Split:
    """
    A stratified split (``test_size`` of every class held out, seeded by ``seed``) and the
    per-feature standardisation ``(y - m) / s`` with ``m``, ``s`` the training split's mean
    and standard deviation (``s = 1`` for a feature constant on it).
    """
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(table.data))
    train_rows, test_rows = train_test_split(rows, test_size=test_size, stratify=table.labels, random_state=seed)
    train = table.data[train_rows]
    mean, scale = train.mean(0), train.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    every = (table.data - mean) / scale
    return Split(
        table.name,
        table.num_classes,
        every[train_rows],
        every[test_rows],
        every,
        table.labels,
        train_rows,
        test_rows,
        float(np.log(scale).sum()),
    )


# ----- the methods ---------------------------------------------------------------------------


class BICGaussianMixture:
    """
    scikit-learn's ``GaussianMixture`` (full covariances) with the number of components that
    has the least BIC on the data it is fitted to, from 1 to ``max_components``.
    """

    def __init__(self, max_components: int = MAX_BIC_COMPONENTS, random_state: Optional[int] = None):
        self.max_components, self.random_state = max_components, random_state

    def fit(self, X):
        from sklearn.mixture import GaussianMixture

        fits = [
            GaussianMixture(k, covariance_type="full", random_state=self.random_state).fit(X)
            for k in range(1, min(self.max_components, len(X)) + 1)
        ]
        self.bic_ = [fit.bic(X) for fit in fits]
        self.best_ = fits[int(np.argmin(self.bic_))]
        self.n_components_ = self.best_.n_components
        self.converged_, self.n_iter_ = self.best_.converged_, self.best_.n_iter_
        return self

    def predict(self, X):
        return self.best_.predict(X)

    def score(self, X):
        return self.best_.score(X)


def _classic(name: str, num_classes: int, seed: int):
    from sklearn.cluster import KMeans
    from sklearn.mixture import BayesianGaussianMixture

    if name == "KMeans":
        return KMeans(n_clusters=num_classes, n_init=10, random_state=seed)
    if name == "BGMM":
        return BayesianGaussianMixture(n_components=num_classes, max_iter=1000, random_state=seed)
    if name == "BIC-GMM":
        return BICGaussianMixture(MAX_BIC_COMPONENTS, random_state=seed)
    raise ValueError(f"unknown classic method {name!r}")


def san_estimator(class_name: str) -> Optional[type]:
    """
    ``pyro_sin.sklearn.<class_name>``, or ``None`` while the package has none (a row that
    reads "not available"); any other failure to import it is raised.
    """
    try:
        module = importlib.import_module("pyro_sin.sklearn")
    except ModuleNotFoundError as error:
        if error.name != "pyro_sin.sklearn":
            raise
        return None
    return getattr(module, class_name, None)


def scores(estimator, data: Split, seconds: float, density: bool) -> Dict[str, float]:
    """
    A fitted estimator's row: clustering scores on every row, the number of clusters it
    uses there, the held-out log-likelihood per test point (``density``: where it has one;
    KMeans's ``score`` is its negative inertia, not a likelihood), the fit's seconds, and what
    it reports of itself (components in use, iterations, convergence).
    """
    predicted = np.asarray(estimator.predict(data.every))
    row = {
        **clustering_scores(torch.as_tensor(predicted), torch.as_tensor(data.labels)),
        "clusters": int(len(np.unique(predicted))),
    }
    if density:
        row["test_log_likelihood"] = float(estimator.score(data.test))
    row["seconds"] = seconds
    for attribute, key in (("n_components_", "components"), ("n_iter_", "iterations")):
        value = getattr(estimator, attribute, None)
        if value is not None:
            row[key] = int(value)
    if getattr(estimator, "converged_", None) is not None:
        row["converged"] = int(bool(estimator.converged_))
    return row


class EstimatorMethod:
    """
    A method of the benchmark in the harness's protocol (:class:`harness.Method`): an
    estimator with scikit-learn's interface, built for each split and seed by ``build``,
    fitted on the training split and scored by :func:`scores`.

    :param str name: its row.
    :param build: ``(split, seed) -> estimator``, or ``None`` when the estimator is not
        available (its row then says so).
    :param bool density: whether ``estimator.score`` is a log-likelihood per point.
    """

    def __init__(self, name: str, build: Optional[Callable], density: bool = True):
        self.name, self.build, self.density = name, build, density

    def train(self, data: Split, seed: int, progress: bool = True) -> Trained:
        if self.build is None:
            return Trained({"status": "not available"})
        from sklearn.exceptions import ConvergenceWarning

        estimator = self.build(data, seed)
        with warnings.catch_warnings():
            # an iteration cap reached is a result (its row says converged = 0), not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            estimator.fit(data.train)
            seconds = time.perf_counter() - start
        row = scores(estimator, data, seconds, self.density)
        if progress:
            print(f"  {data.table}, seed {seed}, {self.name}: NMI {row['nmi']:.3f}, {seconds:.2f} s", flush=True)
        return Trained(row, model=estimator)


def methods(names: Sequence[str] = METHODS, san_options: Optional[dict] = None) -> List[EstimatorMethod]:
    """
    The benchmark's methods called ``names``.

    :param dict san_options: settings every SAN estimator gets beside ``random_state``
        (the short run's ``max_iter``); none by default: SAN runs with its defaults.
    """
    san_options = dict(san_options or {})
    gmm, tmm = san_estimator("DeepGaussianMixture"), san_estimator("DeepStudentTMixture")

    def san(estimator, classes: bool = False):
        if estimator is None:
            return None

        def build(data: Split, seed: int):
            components = {"n_components": data.num_classes} if classes else {}
            return estimator(random_state=seed, **components, **san_options)

        return build

    builders = {
        "SAN-GMM": EstimatorMethod("SAN-GMM", san(gmm)),
        "SAN-TMM": EstimatorMethod("SAN-TMM", san(tmm)),
        "SAN-GMM (K = classes)": EstimatorMethod("SAN-GMM (K = classes)", san(gmm, classes=True)),
    }
    for name in CLASSIC:
        builders[name] = EstimatorMethod(
            name, lambda data, seed, name=name: _classic(name, data.num_classes, seed), density=name != "KMeans"
        )
    return [builders[name] for name in names]


# ----- the summaries -------------------------------------------------------------------------

# higher is better for every metric but these
LOWER_IS_BETTER = ("seconds",)
SUMMARISED = ("nmi", "ari", "accuracy", "test_log_likelihood", "seconds", "clusters", "components")


def summarise(rows: Sequence[Dict[str, float]]) -> Dict[str, object]:
    """
    One method on one table over seeds: for every metric the median and the worst seed
    (the least, or the most seconds), over the seeds that gave a row; the least and most
    clusters; the seeds that diverged; ``status`` where the method did not run.
    """
    status = next((row["status"] for row in rows if "status" in row), None)
    if status is not None:
        return {"status": status}
    diverged = sum(1 for row in rows if row.get("diverged"))
    rows = [row for row in rows if not row.get("diverged")]
    summary: Dict[str, object] = {"seeds": len(rows)}
    if diverged:
        summary["diverged"] = diverged
    for key in SUMMARISED:
        values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
        if not values:
            continue
        worst = max(values) if key in LOWER_IS_BETTER else min(values)
        summary[key] = {"median": statistics.median(values), "worst": worst, "max": max(values)}
    if "converged" in (rows[0] if rows else {}):
        summary["converged"] = sum(row["converged"] for row in rows)
    return summary


def san_against_classic(summary: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """
    On one table, SAN-GMM's median NMI minus the best median NMI of KMeans, BGMM and BIC-GMM,
    and its median held-out log-likelihood per point minus BGMM's, with the issue's targets.
    """

    def median(method: str, key: str) -> Optional[float]:
        cell = summary.get(method, {}).get(key)
        return cell["median"] if isinstance(cell, dict) else None

    classic = {name: median(name, "nmi") for name in CLASSIC if median(name, "nmi") is not None}
    best = max(classic, key=classic.get) if classic else None
    result: Dict[str, object] = {"best_classic": best, "best_classic_nmi": classic.get(best)}
    result["bgmm_log_likelihood"] = median("BGMM", "test_log_likelihood")
    san_nmi, san_ll = median("SAN-GMM", "nmi"), median("SAN-GMM", "test_log_likelihood")
    if "status" in summary.get("SAN-GMM", {}):
        result["status"] = summary["SAN-GMM"]["status"]
    if san_nmi is not None and best is not None:
        result["nmi_difference"] = san_nmi - classic[best]
        result["nmi_target_met"] = result["nmi_difference"] >= NMI_MARGIN
    if san_ll is not None and result["bgmm_log_likelihood"] is not None:
        result["log_likelihood_difference"] = san_ll - result["bgmm_log_likelihood"]
        result["log_likelihood_target_met"] = result["log_likelihood_difference"] >= LOG_LIKELIHOOD_MARGIN
    result["san_nmi"], result["san_log_likelihood"] = san_nmi, san_ll
    return result


# ----- the tables ----------------------------------------------------------------------------


def _number(value: Optional[float], digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _median_and_worst(key: str, digits: int = 3) -> Callable[[dict], str]:
    def cell(row: dict) -> str:
        value = row[key]
        return f"{_number(value['median'], digits)} ({_number(value['worst'], digits)})"

    return cell


def _count(key: str) -> Callable[[dict], str]:
    def cell(row: dict) -> str:
        low, high = row[key]["worst"], row[key]["max"]
        return f"{row[key]['median']:g}" + (f" ({low:g}–{high:g})" if low != high else "")

    return cell


def _seconds(row: dict) -> str:
    return f"{row['seconds']['median']:.2g} ({row['seconds']['worst']:.2g})"


COLUMNS = (
    ("nmi", "NMI"),
    ("ari", "ARI"),
    ("accuracy", "accuracy"),
    ("test_log_likelihood", "test log-lik. / point"),
    ("clusters", "clusters"),
    ("components", "components"),
    ("seconds", "seconds / fit"),
    ("status", "status"),
)
FORMATS = {
    "nmi": _median_and_worst("nmi"),
    "ari": _median_and_worst("ari"),
    "accuracy": _median_and_worst("accuracy"),
    "test_log_likelihood": _median_and_worst("test_log_likelihood"),
    "clusters": _count("clusters"),
    "components": _count("components"),
    "seconds": _seconds,
    "status": lambda row: str(row["status"]),
}


def tables_table(tables: Sequence[Table], splits: Dict[str, Split]) -> str:
    lines = ["| table | source | N | P | classes | train / test |", "|---|---|---|---|---|---|"]
    for table in tables:
        data = splits[table.name]
        lines.append(
            f"| {table.name} | {table.source} | {len(table.data)} | {table.data.shape[1]} | {table.num_classes} "
            f"| {len(data.train)} / {len(data.test)} |"
        )
    return "\n".join(lines)


def comparison_table(comparisons: Dict[str, Dict[str, object]]) -> str:
    lines = [
        "| table | SAN-GMM NMI | best classic NMI | NMI difference (target ≥ −0.02) "
        "| SAN-GMM log-lik. | BGMM log-lik. | log-lik. difference (target ≥ 0) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in comparisons.items():
        best = f"{_number(c['best_classic_nmi'])} ({c['best_classic']})" if c["best_classic"] else "—"

        def difference(key: str, met: str) -> str:
            if key in c:
                return f"{_number(c[key], sign=True)} {'met' if c[met] else 'MISSED'}"
            return str(c.get("status", "—"))

        lines.append(
            f"| {name} | {_number(c['san_nmi'])} | {best} | {difference('nmi_difference', 'nmi_target_met')} "
            f"| {_number(c['san_log_likelihood'])} | {_number(c['bgmm_log_likelihood'])} "
            f"| {difference('log_likelihood_difference', 'log_likelihood_target_met')} |"
        )
    return "\n".join(lines)


NOTES = """\
Per table and seed: a stratified 70/30 split seeded by the seed; every feature standardised with the \
training split's mean and standard deviation; every method fitted on the same standardised training \
split with `random_state` = the seed, the SAN rows with their estimator's default settings (but \
`san_options` in the settings below). NMI, ARI and accuracy (best one-to-one matching of clusters to \
classes) on all rows (fitted on the training split, predicted on all); the test log-likelihood is the mean \
log-density per point of the test split, in the same standardised units for every method, so the numbers \
compare as they stand (subtract a seed's `log_scale` in the JSON for the table's own units). KMeans has no \
density. Each cell: the median over seeds (the worst seed for that metric); clusters: the median (least–most) \
number of clusters used on all rows; components: those the fitted model reports in use (BIC-GMM: the number \
chosen); seconds: one fit on the training split, median (slowest), BIC-GMM's ten fits counted together, \
on `--threads` CPU threads."""


# ----- the command ---------------------------------------------------------------------------


def _names(text: str) -> List[str]:
    return [name for name in text.split(",") if name]


def main(argv=None):
    command = parser(__doc__, "results/tabular", seeds=None, methods=METHODS)
    command.add_argument(
        "--data", type=_names, nargs="+", metavar="TABLE",
        help=f"a subset of the tables: {', '.join(TABLES)} (default: all; short run: {', '.join(QUICK_TABLES)})",
    )
    command.add_argument("--threads", type=int, default=1, help="CPU threads for every method (default: 1)")
    args = command.parse_args(argv)
    names = [name for group in args.data for name in group] if args.data else None
    unknown = sorted(set(names or ()) - set(TABLES))
    if unknown:
        command.error(f"--data: unknown {unknown}; choose from {list(TABLES)}")
    names = names or list(QUICK_TABLES if args.quick else TABLES)
    seeds = args.seeds if args.seeds is not None else 1 if args.quick else SEEDS
    san_options = {"max_iter": QUICK_SAN_ITERATIONS} if args.quick else {}
    chosen = methods(args.methods or METHODS, san_options)
    results = command.results(args)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    tables = [load(name) for name in names]
    per_seed: Dict[str, Dict[int, Dict[str, dict]]] = {}
    first_splits, log_scales = {}, {}
    start = time.perf_counter()
    with threadpool_limits(args.threads):
        for table in tables:
            per_seed[table.name] = {}
            for seed in range(seeds):
                data = split(table, seed)
                first_splits.setdefault(table.name, data)
                log_scales.setdefault(table.name, []).append(data.log_scale)
                trained = compare(chosen, data, seed, args.progress)
                per_seed[table.name][seed] = {name: t.metrics for name, t in trained.items()}
    seconds = time.perf_counter() - start

    summary = {
        table: {m.name: summarise([rows[m.name] for rows in by_seed.values()]) for m in chosen}
        for table, by_seed in per_seed.items()
    }
    comparisons = {table: san_against_classic(rows) for table, rows in summary.items()}
    sections = [
        NOTES,
        "## Tables\n\n" + tables_table(tables, first_splits),
        "## SAN-GMM against the best classic method (medians over seeds)\n\n" + comparison_table(comparisons),
    ]
    for table in tables:
        sections.append(
            f"## {table.name} ({table.source}; N = {len(table.data)}, P = {table.data.shape[1]}, "
            f"{table.num_classes} classes)\n\n" + markdown_table(summary[table.name], COLUMNS, FORMATS)
        )
    config = {
        "seeds": seeds,
        "tables": names,
        "methods": [m.name for m in chosen],
        "test_size": TEST_SIZE,
        "max_bic_components": MAX_BIC_COMPONENTS,
        "san_options": san_options,
        "threads": args.threads,
        "quick": args.quick,
        "seconds": seconds,
    }
    tables_record = {
        t.name: {
            "source": t.source, "N": len(t.data), "P": t.data.shape[1], "classes": list(t.classes),
            "features": list(t.features), "log_scale": log_scales[t.name],
        }
        for t in tables
    }
    results.write(
        f"Tabular benchmark: median (worst) over {seeds} seed(s)",
        sections,
        {
            "config": config,
            "tables": tables_record,
            "summary": summary,
            "san_against_classic": comparisons,
            "per_seed": per_seed,
        },
    )
    return summary, per_seed


if __name__ == "__main__":
    main()
