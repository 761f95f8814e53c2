"""Gaussian potentials emitted by recognition networks."""

from typing import NamedTuple

import torch


class GaussianPotential(NamedTuple):
    r"""
    An unnormalised Gaussian factor in information form with diagonal precision,

    .. math:: \psi(x) = \exp\big(h^\top x - \tfrac12 x^\top \mathrm{diag}(J)\, x\big).

    :param torch.Tensor info_vec: ``h``, shape ``(..., D)``.
    :param torch.Tensor precision: the diagonal of ``J``, non-negative, shape ``(..., D)``;
        zero means no evidence (e.g. a missing frame).
    """

    info_vec: torch.Tensor
    precision: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.info_vec / self.precision

    def validate(self) -> "GaussianPotential":
        """Raises ``ValueError`` unless the potential is finite with non-negative precision."""
        if self.info_vec.shape != self.precision.shape:
            raise ValueError(
                "GaussianPotential info_vec and precision must share a shape, got "
                f"{tuple(self.info_vec.shape)} and {tuple(self.precision.shape)}"
            )
        if not (torch.isfinite(self.info_vec).all() and torch.isfinite(self.precision).all()):
            raise ValueError(
                "the recognition network produced a non-finite Gaussian potential "
                "(NaN or inf in the data, or a diverged encoder)"
            )
        if not (self.precision >= 0).all():
            raise ValueError("GaussianPotential precision must be non-negative")
        return self
