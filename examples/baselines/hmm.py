"""
hmmlearn's Gaussian HMM with full covariances, the segmentation baseline a time-series user
already has: fitted by EM (Baum-Welch) on the training sequences, then the most probable
state path of each test sequence (Viterbi, its ``predict``). Needs ``hmmlearn`` (extra
``[examples]``).
"""

from typing import Optional

import numpy as np
import torch


def _frames_and_lengths(y: torch.Tensor, lengths: Optional[torch.Tensor]):
    """hmmlearn's input: the frames of every sequence stacked (padding dropped) and their lengths."""
    y = y.detach().cpu().double().numpy()
    if lengths is None:
        return y.reshape(-1, y.shape[-1]), [y.shape[1]] * len(y)
    lengths = [int(n) for n in lengths]
    return np.concatenate([seq[:n] for seq, n in zip(y, lengths)]), lengths


def _padded(values: np.ndarray, lengths, num_steps: int, fill=0) -> np.ndarray:
    """Per-frame ``values`` of concatenated sequences back to ``(N, T, ...)``, ``fill`` after each end."""
    out = np.full((len(lengths), num_steps) + values.shape[1:], fill, dtype=values.dtype)
    start = 0
    for n, length in enumerate(lengths):
        out[n, :length] = values[start : start + length]
        start += length
    return out


class HMMLearnGaussianHMM:
    """
    :param int num_states: ``K``.
    :param int iterations: the most EM iterations (hmmlearn's ``n_iter``; its default of 10 rarely
        converges on a few thousand frames); its other settings are hmmlearn's defaults
        (k-means start with 10 restarts, ``tol=1e-2``, ``covars_prior=1e-2``, ``min_covar=1e-3``).
    :param int seed: hmmlearn's ``random_state``.
    """

    def __init__(self, num_states: int, iterations: int = 100, seed: int = 0):
        from hmmlearn.hmm import GaussianHMM

        self.model = GaussianHMM(num_states, covariance_type="full", n_iter=iterations, random_state=seed)

    def fit(self, y: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> "HMMLearnGaussianHMM":
        """EM on sequences ``y`` ``(N, T, P)`` (padded ones with their ``lengths``)."""
        self.model.fit(*_frames_and_lengths(y, lengths))
        return self

    @property
    def iterations(self) -> int:
        """The EM iterations the last fit ran."""
        return self.model.monitor_.iter

    def segment(self, y: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The most probable state paths (Viterbi), ``(N, T)`` (``-1`` after each sequence's end)."""
        frames, sizes = _frames_and_lengths(y, lengths)
        return torch.as_tensor(_padded(self.model.predict(frames, sizes), sizes, y.shape[1], fill=-1))

    def state_probs(self, y: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``p(z_t = k | y_{1:T})``, ``(N, T, K)`` (zeros after each sequence's end)."""
        frames, sizes = _frames_and_lengths(y, lengths)
        probs = _padded(self.model.predict_proba(frames, sizes), sizes, y.shape[1])
        return torch.as_tensor(probs, dtype=y.dtype, device=y.device)

    def log_likelihood(self, y: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p(y_{1:T})`` of each sequence, ``(N,)``."""
        frames, sizes = _frames_and_lengths(y, lengths)
        starts = np.cumsum([0] + sizes)
        return torch.tensor([self.model.score(frames[a:b]) for a, b in zip(starts[:-1], starts[1:])])
