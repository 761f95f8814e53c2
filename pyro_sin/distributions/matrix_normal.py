"""The matrix normal distribution in precision form."""

import math

import torch
from torch.distributions import constraints

import pyro.distributions as dist
from pyro.distributions.util import broadcast_shape


class MatrixNormal(dist.TorchDistribution):
    r"""
    ``X ~ MN(M, U, V)`` with row covariance ``U = R⁻¹`` and column covariance
    ``V = C⁻¹``, i.e. ``vec(X) ~ N(vec(M), V ⊗ U)``:

    .. math:: \log p(X) = -\tfrac12\operatorname{tr}\big(R (X - M) C (X - M)^\top\big)
              + \tfrac P2\log|R| + \tfrac D2\log|C| - \tfrac{DP}2\log 2\pi

    :param torch.Tensor loc: ``M``, shape ``(..., D, P)``.
    :param torch.Tensor row_precision: ``R``, shape ``(..., D, D)``.
    :param torch.Tensor col_precision: ``C``, shape ``(..., P, P)``.
    """

    arg_constraints = {
        "loc": constraints.real,
        "row_precision": constraints.positive_definite,
        "col_precision": constraints.positive_definite,
    }
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, row_precision, col_precision, validate_args=None):
        D, P = loc.shape[-2:]
        batch_shape = broadcast_shape(loc.shape[:-2], row_precision.shape[:-2], col_precision.shape[:-2])
        self.loc = loc.expand(batch_shape + (D, P))
        self.row_precision = row_precision.expand(batch_shape + (D, D))
        self.col_precision = col_precision.expand(batch_shape + (P, P))
        super().__init__(batch_shape, torch.Size((D, P)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MatrixNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        D, P = self.event_shape
        new.loc = self.loc.expand(batch_shape + (D, P))
        new.row_precision = self.row_precision.expand(batch_shape + (D, D))
        new.col_precision = self.col_precision.expand(batch_shape + (P, P))
        super(MatrixNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        return self.loc

    def rsample(self, sample_shape=torch.Size()):
        # X = M + L_R⁻ᵀ E L_C⁻¹ has row covariance R⁻¹ and column covariance C⁻¹
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        row_tril = torch.linalg.cholesky(self.row_precision)
        col_tril = torch.linalg.cholesky(self.col_precision)
        left = torch.linalg.solve_triangular(row_tril.transpose(-1, -2), noise, upper=True)
        right = torch.linalg.solve_triangular(col_tril, left, upper=False, left=False)
        return self.loc + right

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        D, P = self.event_shape
        diff = value - self.loc
        quad = (self.row_precision @ diff @ self.col_precision * diff).sum((-1, -2))
        return (
            -0.5 * quad
            + 0.5 * P * torch.logdet(self.row_precision)
            + 0.5 * D * torch.logdet(self.col_precision)
            - 0.5 * D * P * math.log(2 * math.pi)
        )
