"""Synthetic sequences with (near-)linear latent dynamics."""

from typing import NamedTuple

import torch

from ._device import built_on_cpu


class SequenceData(NamedTuple):
    """Noisy frames, their noise-free renders, and the latent positions."""

    frames: torch.Tensor  # (N, T, P)
    clean: torch.Tensor  # (N, T, P)
    positions: torch.Tensor  # (N, T)


@built_on_cpu
def bouncing_dot(
    num_sequences: int,
    num_steps: int,
    num_pixels: int = 16,
    speed: float = 1.0,
    width: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
    dtype=None,
) -> SequenceData:
    r"""
    A dot moving at constant speed between two reflecting walls, rendered as a
    1-D image of ``num_pixels`` pixels: pixel ``i`` shows ``exp(-(i - p_t)² / 2w²)``
    plus Gaussian noise. The state (position, direction) moves around a loop at
    a constant rate, so a 2-D rotation is an exact linear latent dynamics and
    the rendering is what a decoder must learn.

    :returns: :class:`SequenceData` with shapes ``(N, T, P)`` and ``(N, T)``.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.get_default_dtype()
    length = num_pixels - 1
    start = torch.rand(num_sequences, 1, generator=gen, dtype=dtype) * length
    direction = torch.where(torch.rand(num_sequences, 1, generator=gen) < 0.5, -1.0, 1.0).to(dtype)
    # unfold the walls: travel on a circle of circumference 2L, then fold back
    travelled = start + direction * speed * torch.arange(num_steps, dtype=dtype)
    phase = torch.remainder(travelled, 2 * length)
    positions = torch.where(phase <= length, phase, 2 * length - phase)
    pixels = torch.arange(num_pixels, dtype=dtype)
    clean = torch.exp(-0.5 * ((pixels - positions[..., None]) / width) ** 2)
    frames = clean + noise * torch.randn(clean.shape, generator=gen, dtype=dtype)
    return SequenceData(frames, clean, positions)
