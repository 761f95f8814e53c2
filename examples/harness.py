"""
The experiment harness of the example scripts, in one place:

* :func:`parser` — the command line every script shares (``--out``, ``--overwrite``,
  ``--device``, ``--quick``, ``--no-progress`` and, where the script has them, ``--seed``,
  ``--seeds``, ``--iterations``, ``--seconds``, ``--methods``), each value checked by the
  parser (counts at least 1, known method names) with argparse's error;
* :class:`Method` — the protocol of a compared method: a ``name`` and ``train(task,
  seed, progress)``, which returns :class:`Trained` (the metrics, the training
  history, the model); :func:`compare` runs several on one task and seed;
* :func:`fresh_start` and :func:`on_device` — how every method starts, and where its data go;
* :func:`fit_evaluating_at` — :func:`pyro_sin.training.fit` (the one training loop,
  with its divergence guard) evaluated at chosen steps;
* :class:`Results` — the one results writer: ``results.md`` (title, Markdown tables,
  settings), ``results.json`` (everything, curves included) and the figures, in ``--out``,
  which never replaces earlier results unless told to (``--overwrite``).
"""

import argparse
import json
import os
import statistics
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Protocol, Sequence, Union

import torch

import pyro

from pyro_sin.training import DivergenceError, History, fit

__all__ = [
    "ExperimentParser",
    "Method",
    "Results",
    "Trained",
    "compare",
    "fit_evaluating_at",
    "fresh_start",
    "markdown_table",
    "median_rows",
    "on_device",
    "parser",
]


# ----- the command line ----------------------------------------------------------------------


def _names(text: str) -> List[str]:
    return [name for name in text.split(",") if name]


def _at_least(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


_SHARED = {
    "seed": dict(type=_at_least(0), help="the seed"),
    "seeds": dict(type=_at_least(1), help="run seeds 0 .. N-1"),
    "iterations": dict(type=_at_least(1), help="training iterations"),
    "seconds": dict(type=_positive_float, help="a cap on the training time per method"),
    "methods": dict(
        type=_names, nargs="+", metavar="METHOD", help="a subset of the methods (spaces or commas between them)"
    ),
}


class ExperimentParser(argparse.ArgumentParser):
    """
    An :class:`argparse.ArgumentParser` that also settles the shared options:
    ``quick`` is true under ``--quick`` or when the environment sets ``CI``,
    ``progress`` is ``not --no-progress``, ``methods`` is one list of names
    (checked against the script's), and a CUDA device that is not there is refused.
    """

    def __init__(self, *args, method_names: Optional[Sequence[str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.method_names = method_names

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        parsed.quick = parsed.quick or "CI" in os.environ
        parsed.progress = not parsed.no_progress
        try:
            device = torch.device(parsed.device)
        except RuntimeError:
            self.error(f"--device: not a torch device: {parsed.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            self.error("--device cuda: no CUDA device is available")
        if getattr(parsed, "methods", None) is not None:
            parsed.methods = [name for group in parsed.methods for name in group]
            unknown = sorted(set(parsed.methods) - set(self.method_names or parsed.methods))
            if unknown:
                self.error(f"--methods: unknown {unknown}; choose from {list(self.method_names)}")
        return parsed

    def results(self, args, out: Union[None, str, Path] = None, stem: str = "results") -> "Results":
        """
        The :class:`Results` of this run, its folder created now (before any training), in
        ``out`` (default ``--out``). A folder that already holds this experiment's results is
        refused with the parser's error (exit code 2) unless ``--overwrite`` was given.
        """
        try:
            return Results(args.out if out is None else out, stem, overwrite=args.overwrite)
        except FileExistsError as error:
            self.error(str(error))


def parser(description: str, out: Optional[str], **options) -> ExperimentParser:
    """
    The command line of an experiment: ``--out`` (default ``out``), ``--device``
    (any torch device, default ``cpu``), ``--quick`` and ``--no-progress``, and each
    shared option named in ``options`` with its default: ``seed``, ``seeds``,
    ``iterations``, ``seconds`` (``None``: the experiment's own setting, shorter under
    ``--quick``) and ``methods`` (the names to choose from; default: all of them).
    The script adds its own options to the parser returned.

    :param str description: the script's docstring, shown by ``--help``.
    :param str out: the default results folder, or ``None`` (the script decides).
    """
    unknown = sorted(set(options) - set(_SHARED))
    if unknown:
        raise ValueError(f"unknown shared options {unknown}; choose from {sorted(_SHARED)}")
    methods = options.pop("methods", None)
    result = ExperimentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, method_names=methods
    )
    for name, default in options.items():
        spec = dict(_SHARED[name])
        shown = "the experiment's setting" if default is None else default
        spec["help"] = f"{spec['help']} (default: {shown})"
        result.add_argument(f"--{name}", default=default, **spec)
    if methods is not None:
        spec = dict(_SHARED["methods"])
        spec["help"] = f"{spec['help']}: {', '.join(methods)} (default: the experiment's)"
        result.add_argument("--methods", **spec)
    result.add_argument(
        "--out", type=Path, default=None if out is None else Path(out), help=f"results folder (default: {out})"
    )
    result.add_argument("--overwrite", action="store_true", help="replace results already in the results folder")
    result.add_argument("--device", default="cpu", help="where to train and evaluate: cpu, cuda or cuda:N")
    result.add_argument("--quick", action="store_true", help="a short run (also when CI is set)")
    result.add_argument("--no-progress", action="store_true", help="no progress bars")
    return result


# ----- the methods ---------------------------------------------------------------------------


class Trained(NamedTuple):
    """What a :class:`Method` returns from training on a task with a seed."""

    metrics: Dict[str, float]  # its row in the results table
    history: Optional[History] = None  # what fit recorded; None for a method fitted in closed form
    model: Any = None  # the trained model, for the figures
    per_point: Optional[Dict[str, torch.Tensor]] = None  # per test point scores, for paired differences


class Method(Protocol):
    """One method of a comparison (SAN, a baseline): it trains on a task with a seed."""

    name: str

    def train(self, task, seed: int, progress: bool = True) -> Trained:
        """Trains from scratch on ``task`` (the experiment's data) with ``seed`` and scores the result."""
        ...


def compare(
    methods: Iterable[Method], task, seed: int = 0, progress: bool = True, keep_going: bool = True
) -> Dict[str, Trained]:
    """
    Every method trained on ``task`` with ``seed``, in order.

    :param bool keep_going: a method whose training diverges
        (:class:`~pyro_sin.training.DivergenceError`) gets the row ``{"diverged": 1}``
        and a warning, and the others go on; ``False`` re-raises.
    """
    results = {}
    for method in methods:
        try:
            results[method.name] = method.train(task, seed, progress)
        except DivergenceError as error:  # one method's failure is a result, not the end of the experiment
            if not keep_going:
                raise
            warnings.warn(str(error), RuntimeWarning)
            results[method.name] = Trained({"diverged": 1.0})
    return results


def median_rows(per_seed: Sequence[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """
    The median over seeds of every number every row of a method has; seeds on which
    the method diverged are left out and counted in ``diverged``.

    :param per_seed: one ``{method: metrics}`` per seed.
    """
    medians = {}
    for method in per_seed[0]:
        rows = [seed_rows[method] for seed_rows in per_seed]
        diverged = sum(1 for row in rows if row.get("diverged"))
        rows = [row for row in rows if not row.get("diverged")]
        if not rows:
            medians[method] = {"diverged": diverged}
            continue
        medians[method] = {
            key: statistics.median(row[key] for row in rows)
            for key in rows[0]
            if all(isinstance(row.get(key), (int, float)) for row in rows)
        }
        if diverged:
            medians[method]["diverged"] = diverged
    return medians


# ----- training ------------------------------------------------------------------------------


def fresh_start(seed: int):
    """
    A method starts from nothing: Pyro's parameter store emptied (parameters are looked up
    by name), every RNG seeded.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)


def on_device(data, device):
    """A NamedTuple of data (a split, a task) with its tensors on ``device``, its other fields as they are."""
    return data._replace(**{k: v.to(device) for k, v in data._asdict().items() if torch.is_tensor(v)})


class _EvaluateAt:
    """
    ``evaluate()`` at the chosen steps only, the last metrics in between; ``fit`` calls it
    at every step, in order.
    """

    def __init__(self, evaluate: Callable[[], Dict[str, float]], steps: Iterable[int]):
        self.evaluate, self.steps, self.step, self.last = evaluate, set(steps), 0, {}

    def __call__(self) -> Dict[str, float]:
        if self.step in self.steps:
            self.last = self.evaluate()
        self.step += 1
        return self.last


def fit_evaluating_at(svi, data, steps: Iterable[int], evaluate: Callable[[], Dict[str, float]], **options) -> History:
    """
    :func:`pyro_sin.training.fit` with ``evaluate`` at ``steps`` (e.g. a logarithmic
    grid) instead of every ``eval_every`` steps; the history keeps those evaluations.

    :param options: the other keyword arguments of :func:`~pyro_sin.training.fit`.
    """
    steps = sorted(set(steps))
    history = fit(svi, data, evaluate=_EvaluateAt(evaluate, steps), eval_every=1, **options)
    chosen = [i for i, step in enumerate(history.eval_steps) if step in steps]
    return history._replace(
        eval_steps=[history.eval_steps[i] for i in chosen],
        eval_seconds=[history.eval_seconds[i] for i in chosen],
        evals=[history.evals[i] for i in chosen],
    )


# ----- results -------------------------------------------------------------------------------


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    if isinstance(value, int):
        return str(value)
    stderr = row.get(f"{key}_stderr")
    return f"{value:.4g}" + (f" ± {stderr:.2g}" if isinstance(stderr, float) else "")


def markdown_table(
    rows: Dict[str, Dict[str, Any]],
    columns: Optional[Sequence[Union[str, tuple]]] = None,
    formats: Optional[Dict[str, Callable[[dict], str]]] = None,
    label: str = "method",
) -> str:
    """
    One row per entry of ``rows``; numbers to 4 significant digits (``± s.e.`` where the
    row has ``<column>_stderr``), ``—`` where a row has no number.

    :param columns: keys, or ``(key, title)`` pairs, of the columns; columns no row has are
        left out. Default: every key of every row, in order.
    :param formats: ``{key: row -> text}`` for cells written otherwise.
    """
    columns = columns or list(dict.fromkeys(key for row in rows.values() for key in row))
    columns = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]
    columns = [(key, title) for key, title in columns if any(key in row for row in rows.values())]
    formats = formats or {}
    lines = [f"| {label} | " + " | ".join(title for _, title in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [formats[key](row) if key in formats and key in row else _cell(row, key) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Results:
    """
    Where an experiment writes its results: the folder ``out``, created at once (before
    any training), with ``<stem>.md`` (the title, the tables and notes, and the
    settings), ``<stem>.json`` (the record: settings, metrics, curves) and the figures.

    :param out: the results folder (``--out``).
    :param str stem: the name of the Markdown and JSON files.
    :param bool overwrite: replace results already there (``<stem>.md`` or ``<stem>.json``);
        otherwise they are refused with :class:`FileExistsError`.
    """

    def __init__(self, out: Union[str, Path], stem: str = "results", overwrite: bool = False):
        self.out, self.stem = Path(out), stem
        existing = [p.name for p in (self.out / f"{stem}.md", self.out / f"{stem}.json") if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"--out {self.out} already holds results ({', '.join(existing)}): pass --overwrite to replace "
                "them, or choose another folder"
            )
        self.out.mkdir(parents=True, exist_ok=True)

    def figure(self, fig, name: str, dpi: int = 150) -> Path:
        """Saves a matplotlib figure as ``out / name``."""
        path = self.out / name
        fig.savefig(path, dpi=dpi)
        return path

    def write(self, title: str, sections: Sequence[str], record: Dict[str, Any]) -> str:
        """
        Prints and writes ``<stem>.md``: ``# title``, the ``sections`` (tables, notes) and the
        settings (``record["config"]``, where given); and ``<stem>.json``: the record.

        :returns: the Markdown text.
        """
        parts = list(sections)
        if "config" in record:
            parts.append(f"Settings: `{json.dumps(record['config'], default=str)}`")
        text = f"# {title}\n\n" + "\n\n".join(parts) + "\n"
        print(f"\n{text}", flush=True)
        (self.out / f"{self.stem}.md").write_text(text)
        (self.out / f"{self.stem}.json").write_text(json.dumps(record, indent=2, default=str))
        print(f"results written to {self.out}/")
        return text
