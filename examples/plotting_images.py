"""
Figures for models of images, drawn with matplotlib's object API (no pyplot, no
display needed): images tiled into a grid, one row per mixture component, and a
2-D embedding of latent points coloured by cluster.
"""

from typing import Optional, Sequence

import numpy as np

from plotting import _as_array, component_colours


def tile_images(images, image_shape: Sequence[int], ncols: int, pad: int = 1, fill: float = np.nan) -> np.ndarray:
    """
    Images laid out row by row into one array, ``pad`` pixels of ``fill`` between them.

    :param images: ``(N, H * W)`` (or ``(N, H, W)``) pixel values.
    :param image_shape: ``(H, W)``.
    :param int ncols: images per row; the last row is filled with ``fill``.
    :returns: an array of shape ``(rows (H + pad) - pad, ncols (W + pad) - pad)``.
    """
    height, width = image_shape
    images = _as_array(images).reshape(-1, height, width)
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    nrows = max(1, -(-len(images) // ncols))
    canvas = np.full((nrows * (height + pad) - pad, ncols * (width + pad) - pad), fill, dtype=float)
    for i, image in enumerate(images):
        top, left = (i // ncols) * (height + pad), (i % ncols) * (width + pad)
        canvas[top : top + height, left : left + width] = image
    return canvas


def _show(ax, canvas, vmin=None, vmax=None, cmap="gray_r"):
    finite = canvas[np.isfinite(canvas)]
    vmin = float(finite.min()) if vmin is None and finite.size else vmin
    vmax = float(finite.max()) if vmax is None and finite.size else vmax
    colours = _masked_cmap(cmap)
    ax.imshow(np.ma.masked_invalid(canvas), cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _masked_cmap(name):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="white")


def plot_image_rows(
    ax,
    rows,
    image_shape: Sequence[int],
    row_labels: Optional[Sequence[str]] = None,
    title: str = "",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    label_colours=None,
):
    """
    Images in rows, e.g. the samples of each mixture component.

    :param rows: ``(R, C, H * W)``: ``R`` rows of ``C`` images each.
    :param row_labels: a label at the left of each row (e.g. the component and its weight).
    :param label_colours: a colour per row label (e.g. :func:`plotting.component_colours`).
    """
    rows = _as_array(rows)
    if rows.ndim != 3:
        raise ValueError(f"rows must have shape (R, C, H * W), got {rows.shape}")
    num_rows, num_cols = rows.shape[:2]
    height, width = image_shape
    _show(ax, tile_images(rows.reshape(num_rows * num_cols, -1), image_shape, num_cols), vmin, vmax)
    if row_labels is not None:
        ax.set_yticks([(height + 1) * r + (height - 1) / 2 for r in range(num_rows)])
        ax.set_yticklabels(row_labels, fontsize="small")
        ax.tick_params(axis="y", length=0)
        if label_colours is not None:
            for tick, colour in zip(ax.get_yticklabels(), label_colours):
                tick.set_color(colour)
    ax.set_title(title)


def plot_component_means(ax, means, weights, image_shape: Sequence[int], title: str = "", ncols: Optional[int] = None):
    """
    The decoded mean image of every component, sorted by mixture weight (largest first),
    each titled with its component id and weight.

    :param means: ``(K, H * W)``.
    :param weights: ``(K,)`` mixture weights.
    """
    means, weights = _as_array(means), _as_array(weights)
    order = np.argsort(-weights)
    ncols = ncols or len(means)
    height, width = image_shape
    _show(ax, tile_images(means[order], image_shape, ncols))
    colours = component_colours(len(weights))
    for i, k in enumerate(order):
        x, y = (i % ncols) * (width + 1) + (width - 1) / 2, (i // ncols) * (height + 1) - 0.8
        ax.text(x, y, f"{k}: {weights[k]:.2f}", ha="center", va="bottom", fontsize="x-small", color=colours[k])
    ax.set_title(title, pad=12)


def principal_components_2d(points) -> np.ndarray:
    """The first two principal-component scores of ``points`` ``(N, D)`` (padded with zeros if ``D < 2``)."""
    points = _as_array(points).astype(float)
    centred = points - points.mean(0)
    _, _, vh = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vh[:2].T
    if scores.shape[1] < 2:
        scores = np.concatenate([scores, np.zeros((len(scores), 2 - scores.shape[1]))], 1)
    return scores


def embed_2d(points, method: str = "pca", seed: int = 0) -> np.ndarray:
    """
    Points ``(N, D)`` in two dimensions: their first two principal components
    (``"pca"``), or scikit-learn's t-SNE (``"tsne"``, ``pip install 'pyro-sin[data]'``),
    which keeps neighbourhoods rather than distances and separates clusters that no
    linear projection shows apart.
    """
    if method == "pca":
        return principal_components_2d(points)
    if method != "tsne":
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    try:
        from sklearn.manifold import TSNE
    except ImportError as error:
        raise ImportError("t-SNE needs scikit-learn: pip install 'pyro-sin[data]'") from error
    points = _as_array(points).astype(float)
    perplexity = min(30.0, max(2.0, (len(points) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def plot_embedding(ax, points, clusters, num_clusters: Optional[int] = None, title: str = "", labels=None):
    """
    Points in 2-D (their first two principal components when ``D > 2``; see
    :func:`embed_2d` for t-SNE), coloured by cluster; with ``labels`` (e.g. the
    true digit), each label's median position is marked by its name.

    :param points: ``(N, D)``, e.g. the latent means of the test set, or their 2-D embedding.
    :param clusters: ``(N,)`` cluster ids.
    """
    clusters = _as_array(clusters).astype(int)
    xy = principal_components_2d(points) if _as_array(points).shape[-1] != 2 else _as_array(points)
    num_clusters = num_clusters or int(clusters.max()) + 1
    colours = np.array(component_colours(num_clusters))
    ax.scatter(xy[:, 0], xy[:, 1], s=4, c=colours[clusters], linewidths=0)
    if labels is not None:
        labels = _as_array(labels)
        for value in np.unique(labels):
            centre = np.median(xy[labels == value], 0)
            ax.text(*centre, str(value), ha="center", va="center", fontsize="large", weight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0})
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])

