import pytest
import torch

from pyro_sin.datasets import BASIC_MOTIONS_CHANNELS, basic_motions

pytest.importorskip("sktime")


def test_basic_motions_shapes_labels_and_standardisation():
    data = basic_motions()
    assert data.train.shape == data.test.shape == (40, 100, len(BASIC_MOTIONS_CHANNELS))
    assert len(data.classes) == 4
    # 10 recordings of every activity in each split
    assert torch.equal(torch.bincount(data.train_labels), torch.full((4,), 10))
    assert torch.equal(torch.bincount(data.test_labels), torch.full((4,), 10))
    frames = data.train.reshape(-1, 6)
    assert torch.allclose(frames.mean(0), torch.zeros(6), atol=1e-10)
    assert torch.allclose(frames.std(0), torch.ones(6))
    raw = basic_motions(standardize=False)
    assert torch.allclose(raw.test, data.test * data.scale + data.loc)


def test_bad_split_raises():
    from pyro_sin.datasets import load_basic_motions

    with pytest.raises(ValueError, match="split"):
        load_basic_motions("validation")
