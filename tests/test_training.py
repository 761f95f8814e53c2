import pytest
import torch

from pyro_sin.training import fit


class RecordingSVI:
    """Stands in for pyro.infer.SVI: records each step's arguments."""

    def __init__(self):
        self.calls = []

    def step(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return 1.0


def test_fit_indexes_every_tensor_of_tuple_data_by_the_same_minibatch():
    y = torch.arange(10.0)[:, None].expand(10, 3)
    mask = torch.arange(10.0)[:, None].expand(10, 4) + 100
    lengths = torch.arange(10) + 1000
    svi = RecordingSVI()
    fit(svi, (y, mask, lengths), iterations=7, batch_size=4, progress=False)
    assert len(svi.calls) == 7
    for args, kwargs in svi.calls:
        idx = kwargs["indices"]
        assert len(args) == 3 and len(idx.unique()) == 4
        torch.testing.assert_close(args[0], y[idx])
        torch.testing.assert_close(args[1], mask[idx])
        torch.testing.assert_close(args[2], lengths[idx])


def test_fit_passes_a_single_tensor_as_before():
    y = torch.randn(6, 2)
    svi = RecordingSVI()
    fit(svi, y, iterations=3, batch_size=3, progress=False)
    for args, kwargs in svi.calls:
        assert len(args) == 1
        torch.testing.assert_close(args[0], y[kwargs["indices"]])


def test_fit_rejects_tuple_data_of_different_lengths():
    with pytest.raises(ValueError, match="first dimension"):
        fit(RecordingSVI(), (torch.zeros(5, 2), torch.zeros(4)), iterations=1, batch_size=2, progress=False)


def test_fit_trains_a_deep_lds_on_padded_sequences_with_mask_and_lengths():
    """The lengths reach the model and the guide: one full natural step counts only real transitions."""
    from pyro.infer import SVI

    import pyro_sin
    from pyro_sin.models import DeepLatentLDS
    from pyro_sin.nn import GaussianDecoder, GaussianEncoder
    from pyro_sin.pgm import LinearDynamicalSystem

    N, T, P = 6, 10, 3
    y = torch.randn(N, T, P)
    mask = torch.ones(N, T)
    mask[:, 2] = 0
    lengths = torch.tensor([10, 3, 7, 1, 5, 9])
    lds = LinearDynamicalSystem(2)
    model = DeepLatentLDS(lds, GaussianDecoder(2, P, (8,)), N)
    guide = model.make_guide(GaussianEncoder(P, 2, (8,)))
    optim = pyro_sin.NaturalAdam({"lr": 0.01}, natural_lr=1.0)
    svi = SVI(model, guide, optim, pyro_sin.SINELBO(max_plate_nesting=1))

    class FirstBatch:
        def step(self, *args, indices):
            self.indices = indices
            return svi.step(*args, indices=indices)

    recorder = FirstBatch()
    fit(recorder, (y, mask, lengths), iterations=1, batch_size=3, progress=False)
    transitions = (lengths[recorder.indices] - 1).sum()
    df = guide.global_posterior().matrix_normal_wishart.df
    torch.testing.assert_close(df - lds.prior().df, N / 3 * transitions.to(df.dtype))
