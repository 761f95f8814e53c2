"""Gaussian potentials emitted by recognition networks."""

from typing import NamedTuple, Optional

import torch


class GaussianPotential(NamedTuple):
    r"""
    An unnormalised Gaussian factor in information form with diagonal precision,

    .. math:: \psi(x) = \exp\big(h^\top x - \tfrac12 x^\top \mathrm{diag}(J)\, x\big).

    :param torch.Tensor info_vec: ``h``, shape ``(..., D)``.
    :param torch.Tensor precision: the diagonal of ``J``, non-negative, shape ``(..., D)``;
        zero means no evidence (e.g. a missing frame).
    :param torch.Tensor lengths: optional, for per-step potentials of sequences padded to
        one length (shape ``(..., T, D)``): the number of steps of each sequence, an integer
        tensor of shape ``(...)`` with values in ``[1, T]``. Steps after a sequence's end do not
        exist, and their potentials are ignored (read by sequence structures such as
        :class:`~pyro_sin.pgm.LinearDynamicalSystem`).
    """

    info_vec: torch.Tensor
    precision: torch.Tensor
    lengths: Optional[torch.Tensor] = None

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
        if self.lengths is not None:
            steps = self.info_vec.shape[-2] if self.info_vec.dim() >= 2 else None
            if steps is None or self.lengths.shape != self.info_vec.shape[:-2]:
                raise ValueError(
                    "GaussianPotential lengths need per-step potentials of shape (..., T, D) and "
                    f"shape (...), got {tuple(self.lengths.shape)} for potentials of shape "
                    f"{tuple(self.info_vec.shape)}"
                )
            if self.lengths.is_floating_point() or self.lengths.is_complex():
                raise ValueError(f"GaussianPotential lengths must be integers, got {self.lengths.dtype}")
            if not ((self.lengths >= 1) & (self.lengths <= steps)).all():
                raise ValueError(f"GaussianPotential lengths must lie in [1, {steps}], got {self.lengths}")
        return self
