import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba_array
from matplotlib.lines import Line2D

from pyro_sin.datasets import pinwheel as pinwheel_data

import pinwheel
from plotting import class_colours

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.rst"


def test_the_main_job_trains_san_in_two_processes(tmp_path):
    rows = pinwheel.main(["--quick", "--iterations", "20", "--nproc", "2", "--out", str(tmp_path), "--no-progress"])
    metrics = json.loads((tmp_path / "results.json").read_text())
    assert metrics["config"]["processes"] == 2 and set(rows) == {"SAN-GMM"}
    assert 0 <= rows["SAN-GMM"]["nmi"] <= 1 and (tmp_path / "generative_samples.png").stat().st_size > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """
    The quick main job on seed 1 (evaluated at steps 0, 50 and 60) in the script's own
    single precision: its rows, the figures it wrote, its JSON and its training labels.
    """
    out = tmp_path_factory.mktemp("pinwheel")
    figures = {}
    original = pinwheel.Results.figure

    def keep(results, fig, name, **kwargs):
        figures[name] = fig
        return original(results, fig, name, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pinwheel.Results, "figure", keep)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            rows = pinwheel.main(["--quick", "--iterations", "60", "--seed", "1", "--out", str(out), "--no-progress"])
            labels = pinwheel_data(seed=0).train_labels.numpy()
        finally:
            torch.set_default_dtype(old)
    return rows, figures, json.loads((out / "results.json").read_text()), labels


def _rgb(colours) -> np.ndarray:
    return np.round(to_rgba_array(colours)[:, :3], 6)


def test_the_main_job_colours_the_data_by_class_as_its_legend_says(quick_run):
    _, figures, _, labels = quick_run
    expected = _rgb(class_colours(5))[labels]
    fig = figures["generative_samples.png"]
    assert [ax.get_title() for ax in fig.axes] == [
        "SAN-GMM: samples of the learned model",
        "VAE: samples of the learned model",
    ]
    for ax in fig.axes:
        data = ax.collections[0]  # drawn first, under the samples
        assert len(data.get_offsets()) == len(labels)
        np.testing.assert_allclose(_rgb(data.get_facecolors()), expected)
        legend = ax.get_legend()
        assert "data (colour: true class)" in [text.get_text() for text in legend.get_texts()]
        # the legend shows every class's colour
        shown = {tuple(c) for c in _rgb([line.get_markerfacecolor() for line in legend.findobj(Line2D)])}
        assert {tuple(c) for c in expected} <= shown


def test_no_curve_of_the_main_job_spans_steps_that_were_not_evaluated(quick_run):
    _, figures, result, _ = quick_run
    evaluated = result["curves"]["SAN-GMM"][0]
    assert evaluated == [0, 50, 60]
    (ax,) = figures["test_mse.png"].axes
    assert len(ax.lines) == 2
    for line in ax.lines:
        steps = np.asarray(line.get_xdata(), dtype=float)
        assert line.get_marker() not in ("None", "", None)  # every evaluation is marked
        np.testing.assert_array_equal(steps[np.isfinite(steps)], evaluated)
        if line.get_linestyle() not in ("None", ""):
            joined = np.isfinite(steps[1:]) & np.isfinite(steps[:-1])
            assert np.all(np.diff(steps)[joined] <= 1)


def test_the_main_job_figures_say_they_show_one_seed(quick_run):
    _, figures, result, _ = quick_run
    assert result["figures_seed"] == 1
    samples, curves = figures["generative_samples.png"], figures["test_mse.png"]
    for caption in (samples.get_suptitle(), curves.axes[0].get_title()):
        assert "one seed (seed 1)" in caption


def test_the_quick_main_job_shrinks_the_run_but_keeps_the_documented_settings(quick_run):
    rows, _, result, _ = quick_run
    default, quick = asdict(pinwheel.Config()), asdict(pinwheel.Config.quick())
    shrunk = {name for name in default if quick[name] != default[name]}
    assert shrunk <= {"iterations", "warmup", "eval_every", "test_samples", "curve_samples"}  # the run's length only
    used = result["config"]
    for name in default.keys() - shrunk - {"seed"}:
        assert used[name] == default[name], name
    assert {"coverage", "sample_precision", "test_log_likelihood", "seconds"} <= set(rows["VAE"])
    assert set(rows["SAN-GMM"]) >= set(rows["VAE"]) | {"purity", "nmi"}


def test_the_main_job_runs_the_settings_its_results_document():
    """
    docs/results.rst (*The main job*) names the settings in which README command 1 differs from
    the paper's (``paper.Setting``); they are the defaults, and nothing else differs.
    """
    import paper

    section = RESULTS.read_text().split("The main job\n------------\n")[1].split("\n-----")[0]
    (listed,) = re.findall(r"``Config\((.*?)\)``", section, flags=re.S)
    documented = dict(item.split("=") for item in re.sub(r"\s+", "", listed).split(","))
    main_job, papers = asdict(pinwheel.Config()), asdict(paper.Setting())
    differing = {name for name in main_job if main_job[name] != papers[name]}
    assert differing == set(documented)
    for name, value in documented.items():
        assert main_job[name] == type(main_job[name])(value), name
    assert "python examples/pinwheel.py --seeds 5" in section  # the command behind the table
