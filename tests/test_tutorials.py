from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))

# Checks run in the tutorial's kernel after its last cell: what its text promises.
CHECKS = {
    # the shared x-axis of the figure shows the prediction frames after the 40 observed ones
    "lds_bouncing_dot": "assert all(ax.get_xlim()[1] >= test.clean.shape[1] - 0.5 for ax in fig.axes), "
    "[ax.get_xlim() for ax in fig.axes]",
    # a run is reproducible: building a model draws the same initial values every time
    # the segmentation is scored and drawn for four test sequences, true against inferred
    "regime_segmentation": "assert 0 <= final['nmi'] <= 1 and 0 <= final['accuracy'] <= 1\n"
    "assert len(fig.axes) == 4 and all(len(ax.get_yticklabels()) == 2 for ax in fig.axes)",
    # SAN's held-out log-likelihood is not below the Bayesian mixture's; the same clusters and a
    # log-likelihood shifted by the change of units in the table's own units; labelled panels
    "tabular_clustering": "held_out = results['held-out log-lik. / point']\n"
    "assert held_out['SAN-GMM'] >= held_out['BayesianGaussianMixture'], held_out\n"
    "assert same == 1 and abs(shift - np.log(std).sum()) < 1e-6, (same, shift)\n"
    "assert all(ax.get_xlabel() and ax.get_legend() for ax in fig.axes) and axes[0].get_ylabel()",
    # the mixture and the HMM were recognised from the models as written, the wrong model refused at its latent
    "bring_your_own_model": "assert recognition.family == 'gmm' and prior.local_sites == ('assignment', 'x')\n"
    "assert message.startswith(\"recognize: site 'x': found a covariance\"), message\n"
    "assert hmm_recognition.family == 'hmm' and hmm_guide.pgm.local_sites[:2] == ('z_0', 'x_0')",
    "student_t_outliers": "first, again = build(priors['SAN-TMM'])[0], build(priors['SAN-TMM'])[0]\n"
    "assert torch.equal(first.locs, again.locs) and torch.equal(first.scale_tril, again.scale_tril)",
}


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_short_mode(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CI", "1")
    # one thread in the kernel: the short runs' tensors are small, and on a shared machine several threads
    # per operation spin against each other (the regime tutorial: 139 s with two threads, 12 s with one)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    if path.stem in CHECKS:
        notebook.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors
