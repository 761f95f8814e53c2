"""
The segmentation benchmark (examples/segmentation_benchmark.py) in its short mode, and its
hmmlearn baseline (examples/baselines/hmm.py).
"""

import json

import pytest
import torch
from torch.testing import assert_close

from tests.pgm.test_classic_regimes import sample_gaussian_hmm


def test_hmmlearn_baseline_segments_padded_sequences():
    pytest.importorskip("hmmlearn")
    from baselines import HMMLearnGaussianHMM

    y, z, _ = sample_gaussian_hmm(6, 40, torch.Generator().manual_seed(0))
    lengths = torch.tensor([40, 25, 40, 10, 40, 33])
    model = HMMLearnGaussianHMM(3, seed=0).fit(y, lengths)
    states = model.segment(y, lengths)
    probs = model.state_probs(y, lengths)
    exists = torch.arange(40) < lengths[:, None]
    assert (states[~exists] == -1).all() and (probs[~exists] == 0).all()
    assert_close(probs[exists].sum(-1), torch.ones(int(lengths.sum())))
    # well-separated states: the Viterbi path is the truth, up to the states' names
    matches = [(states[exists] == k) == (z[exists] == 0) for k in range(3)]
    assert max(float(m.double().mean()) for m in matches) > 0.99
    # padding does not count in a sequence's likelihood
    assert_close(model.log_likelihood(y, lengths)[3], model.log_likelihood(y[3:4, :10])[0])


def test_segmentation_benchmark_short_run(tmp_path):
    """
    The sequence benchmark's segmentation section (the segmentation benchmark) in its short run: every
    method once on BasicMotions; the deep models end no lower than they start on the held-out bound.
    """
    pytest.importorskip("sktime")
    pytest.importorskip("hmmlearn")
    import segmentation_benchmark
    import sequence_benchmark

    sequence_benchmark.main(["--sections", "segmentation", "--quick", "--no-progress", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["segmentation"]
    assert set(rows) == {f"basic_motions / {m}" for m in segmentation_benchmark.QUICK.methods}
    assert "hmmlearn GaussianHMM" in (tmp_path / "results.md").read_text()
    for name, row in rows.items():
        assert 0 <= row["nmi"] <= 1 and 0 < row["seconds"]
        if "hmmlearn" not in name:
            assert row["heldout_bound"] >= row["heldout_bound_start"]
    task = segmentation_benchmark.basic_motions_task(0)
    assert task.train.shape == (10, 400, 6) and task.test.shape == (10, 400, 6)
    # each test sequence holds every activity for 100 frames
    assert (torch.stack([torch.bincount(r, minlength=4) for r in task.regimes]) == 100).all()
