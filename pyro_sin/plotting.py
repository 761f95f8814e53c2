"""Figures of the paper, drawn with matplotlib's object API (no pyplot, no display needed)."""

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure


def component_colours(num_components: int):
    cmap = colormaps["tab10" if num_components <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(num_components)]


def _as_array(values) -> np.ndarray:
    """A NumPy array of ``values``, which may be a tensor on any device."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values)


def plot_generative_samples(ax, data, samples, components, weights, title=""):
    """
    The paper's Fig. 3: samples of the learned generative model, coloured by
    mixture component with intensity by the component's weight, and the data on top.

    :param data: ``(N, 2)`` array of data points.
    :param samples: ``(S, 2)`` generated points.
    :param components: ``(S,)`` component of each generated point.
    :param weights: ``(K,)`` mixture weights.
    """
    data, samples, components, weights = map(_as_array, (data, samples, components, weights))
    colours = np.array(component_colours(len(weights)))
    alpha = 0.15 + 0.85 * weights / weights.max()
    rgba = colours[components].copy()
    rgba[:, 3] = alpha[components]
    ax.scatter(samples[:, 0], samples[:, 1], s=6, c=rgba, linewidths=0, label="generated")
    ax.scatter(data[:, 0], data[:, 1], s=3, c="k", alpha=0.6, linewidths=0, label="data")
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="lower right", fontsize="small", markerscale=2)


def plot_curves(ax, curves, ylabel="test MSE", log=True, xlabel="iteration", xmin=1.0):
    """
    :param curves: ``{label: (iterations, values)}``, or ``{label: (iterations, median, low, high)}``
        to draw a band.
    :param float xmin: where the log axis shows ``x = 0`` (the untrained model).
    """
    for label, curve in curves.items():
        steps = np.maximum(np.asarray(curve[0], dtype=float), xmin)
        (line,) = ax.plot(steps, curve[1], label=label)
        if len(curve) == 4:
            ax.fill_between(steps, curve[2], curve[3], color=line.get_color(), alpha=0.2)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def new_figure(ncols=1, width=5.0, height=4.5) -> Figure:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    fig.subplots(1, ncols)
    return fig
