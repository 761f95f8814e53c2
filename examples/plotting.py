"""
Figures of the paper, drawn with matplotlib's object API (no pyplot, no display needed).

Curves over iterations use a symmetric-log axis, linear on ``[0, 1]`` and
logarithmic above, so that the untrained model (iteration 0) sits at ``x = 0``
with its own tick instead of being moved onto iteration 1. A curve is drawn as
a marker at every evaluation, joined by a line only to an evaluation at the next
step: no line passes through steps that were not evaluated. Results over seeds
are drawn as the median with a bar from the smallest to the largest seed at each
evaluation; the legend says how many seeds.
"""

from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

#: generated samples: tab10 without its grey (kept for nothing, so no component looks like background)
_COMPONENT_BASE = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7] + [(0.0, 0.0, 0.0)]


def component_colours(num_components: int):
    """Distinct, saturated colours for mixture components (no grey); they repeat beyond 10."""
    if num_components <= len(_COMPONENT_BASE):
        return [(*c, 1.0) for c in _COMPONENT_BASE[:num_components]]
    cmap = colormaps["tab20"]
    colours = [cmap(k) for k in range(cmap.N) if k not in (14, 15)]  # without tab20's greys
    return [colours[k % len(colours)] for k in range(num_components)]


def class_colours(num_classes: int):
    """Light colours for the data's true classes, drawn under the samples."""
    cmap = colormaps["Pastel1" if num_classes <= 9 else "tab20"]
    return [cmap(k % cmap.N) for k in range(num_classes)]


def _as_array(values) -> np.ndarray:
    """A NumPy array of ``values``, which may be a tensor on any device."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values)


def shared_limits(*point_sets, pad: float = 0.05):
    """``(xlim, ylim)`` around all the ``(N, 2)`` point sets, for panels that must match."""
    points = np.concatenate([_as_array(p) for p in point_sets])
    low, high = points.min(0), points.max(0)
    margin = pad * (high - low).max()
    return (low[0] - margin, high[0] + margin), (low[1] - margin, high[1] + margin)


def plot_generative_samples(
    ax,
    data,
    samples,
    components,
    weights,
    title="",
    labels=None,
    limits=None,
    axis_labels=("$y_1$", "$y_2$"),
    legend=True,
):
    """
    The paper's Fig. 3: samples of a learned generative model over the data.

    The data are drawn as large pale discs coloured by their true class (grey
    when no ``labels`` are given); the samples on top as small dots coloured by the mixture component that generated
    them, fainter for components of smaller weight (a model without components,
    e.g. a VAE, draws them all in black). Samples outside ``limits`` are counted
    in the corner of the panel instead of stretching it. Each legend entry shows
    the colours its points are drawn in.

    :param data: ``(N, 2)`` data points.
    :param samples: ``(S, 2)`` generated points.
    :param components: ``(S,)`` component of each generated point.
    :param weights: ``(K,)`` mixture weights.
    :param labels: ``(N,)`` true classes of the data (integers), or None.
    :param limits: ``(xlim, ylim)`` shared by the panels of a row (default: this panel's data).
    """
    data, samples, components, weights = map(_as_array, (data, samples, components, weights))
    if len(weights) == 1:
        colours = np.array([(0.0, 0.0, 0.0, 1.0)])
    else:
        colours = np.array(component_colours(len(weights)))
    alpha = np.clip(0.2 + 0.8 * weights / weights.max(), 0.0, 1.0)
    rgba = colours[components].copy()
    rgba[:, 3] = alpha[components]
    if labels is None:
        class_palette = [(0.75, 0.75, 0.75, 1.0)]
        data_colour = np.tile(class_palette[0], (len(data), 1))
    else:
        labels = _as_array(labels)
        if len(labels) != len(data):
            raise ValueError(f"need one label per data point, got {len(labels)} labels for {len(data)} points")
        classes, index = np.unique(labels, return_inverse=True)
        class_palette = class_colours(len(classes))
        data_colour = np.array(class_palette)[index]
    ax.scatter(data[:, 0], data[:, 1], s=16, c=data_colour, alpha=0.9, linewidths=0, zorder=1)
    ax.scatter(samples[:, 0], samples[:, 1], s=3, c=rgba, linewidths=0, zorder=2)
    xlim, ylim = limits if limits is not None else shared_limits(data)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    inside_x = (samples[:, 0] >= xlim[0]) & (samples[:, 0] <= xlim[1])
    outside = ~(inside_x & (samples[:, 1] >= ylim[0]) & (samples[:, 1] <= ylim[1]))
    if outside.any():
        note = f"{outside.sum()} of {len(samples)} samples outside"
        ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize="x-small")
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if legend:
        # each entry shows the colours its points are drawn in
        data_label = "data" if labels is None else "data (colour: true class)"
        used = [colours[k] for k in np.unique(components)]
        sample_label = "samples" if len(weights) == 1 else "samples (colour: component; faint: low weight)"
        entries = [
            (_markers(class_palette, ms=6, alpha=0.9), data_label),
            (_markers(used, ms=2.5), sample_label),
        ]
        ax.legend(
            [handle for handle, _ in entries],
            [label for _, label in entries],
            handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)},
            loc="upper left",
            fontsize="x-small",
            framealpha=0.8,
        )


def _markers(colours, ms: float, alpha: float = 1.0):
    """A legend handle: one round marker per colour, side by side."""
    return tuple(Line2D([], [], ls="", marker="o", ms=ms, mfc=c, mec="none", alpha=alpha) for c in colours)


def _iteration_axis(ax, last: float):
    """Symmetric-log x axis: linear on [0, 1] (so iteration 0 is at 0), logarithmic above."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    ticks = [0.0] + [10.0**e for e in range(0, int(np.floor(np.log10(max(last, 1.0)))) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v < 1e4 else f"$10^{{{np.log10(v):.0f}}}$"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(0.0, last * 1.05)


def _break_gaps(steps: np.ndarray, values: np.ndarray, join_within: Optional[float]):
    """``steps`` and ``values`` with a NaN between evaluations more than ``join_within`` apart (a break in the line)."""
    if join_within is None or len(steps) < 2:
        return steps, values
    gaps = np.flatnonzero(np.diff(steps) > join_within) + 1
    return np.insert(steps, gaps, np.nan), np.insert(values, gaps, np.nan)


def plot_curves(
    ax,
    curves,
    ylabel="test MSE",
    log=True,
    xlabel="iteration",
    seeds: Optional[int] = None,
    join_within: Optional[float] = 1.0,
):
    """
    A marker at every evaluation; a line joins two evaluations only where they are at most
    ``join_within`` apart on the x axis, so that no line passes through steps that were not
    evaluated.

    :param curves: ``{label: (iterations, values)}``, or ``{label: (iterations, median, low, high)}``
        to draw a bar from ``low`` to ``high`` at each evaluation.
    :param bool log: a symmetric-log iteration axis (0 at 0) and a log value axis.
    :param int seeds: the number of seeds behind each median, named in the legend.
    :param float join_within: the largest gap a line spans: 1 (the default) joins evaluations
        at consecutive iterations only; ``None`` joins every evaluation to the next.
    """
    last = 1.0
    for label, curve in curves.items():
        steps = np.asarray(curve[0], dtype=float)
        values = np.asarray(curve[1], dtype=float)
        last = max(last, steps.max())
        name = label if seeds is None else f"{label} (median of {seeds} seeds)"
        x, y = _break_gaps(steps, values, join_within)
        joined = bool(np.any(np.isfinite(x[1:]) & np.isfinite(x[:-1])))
        # markers alone where no two evaluations are joined, so that the legend shows no line either
        (line,) = ax.plot(x, y, label=name, marker="o", ms=3, ls="-" if joined else "none")
        if len(curve) == 4:
            ax.vlines(steps, curve[2], curve[3], color=line.get_color(), alpha=0.35, linewidth=1.5)
    if log:
        _iteration_axis(ax, last)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    if any(len(curve) == 4 for curve in curves.values()):
        ax.vlines([], [], [], color="grey", alpha=0.35, linewidth=1.5, label="bars: min to max over seeds")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def plot_points_with_range(ax, x, runs: Sequence[Sequence[float]], label: str, **kwargs):
    """
    The median over seeds at each ``x`` with error bars from the smallest to the largest seed.

    :param runs: ``runs[i]`` holds every seed's value at ``x[i]``.
    """
    runs = [np.asarray(r, dtype=float) for r in runs]
    median = np.array([np.median(r) for r in runs])
    low = median - np.array([r.min() for r in runs])
    high = np.array([r.max() for r in runs]) - median
    return ax.errorbar(x, median, yerr=[low, high], marker="o", capsize=3, label=label, **kwargs)


def new_figure(ncols=1, width=5.0, height=4.5, nrows=1) -> Figure:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False)
    return fig
