r"""
The Matrix-Normal-Wishart family over the weights and noise precision of a
linear-Gaussian regression ``x = B u + ε, ε ~ N(0, Λ⁻¹)``.

.. math::

    \Lambda \sim \mathcal W(W, \nu),\qquad
    B \mid \Lambda \sim \mathcal{MN}\big(M, \Lambda^{-1}, K^{-1}\big)
    \quad (B \in \mathbb R^{D\times P}).

This is the conjugate prior of an LDS's dynamics ``x_t = A x_{t-1} + b + ε``
(``B = [A b]``, ``u = [x_{t-1}; 1]``), and with ``P = 1, u = 1`` it is the
Normal-Wishart over a Gaussian's mean and precision
(:class:`~pyro_sin.distributions.NormalWishart` is that special case).

As an exponential family with sufficient statistics

.. math:: T(B, \Lambda) = \big(\Lambda B,\ -\tfrac12 B^\top\Lambda B,\
          -\tfrac12\Lambda,\ \tfrac12\log|\Lambda|\big)

the natural parameters are ``(M K, K, Ψ + M K Mᵀ, ν - D - 1 + P)`` with
``Ψ = W⁻¹``. One observation ``(u, x)`` contributes ``t = (x uᵀ, u uᵀ, x xᵀ, 1)``,
and ``log N(x; B u, Λ⁻¹) = <t, T(B, Λ)> - (D/2) log 2π``.
"""

import functools
import math
from typing import NamedTuple

import torch

from .matrix_normal import MatrixNormal
from .wishart import Wishart


class MatrixNormalWishartNatural(NamedTuple):
    """Natural parameters ``(M K, K, Ψ + M K Mᵀ, ν - D - 1 + P)``."""

    cross: torch.Tensor  # (..., D, P)  M K
    col_precision: torch.Tensor  # (..., P, P)  K
    scale: torch.Tensor  # (..., D, D)  Ψ + M K Mᵀ
    df: torch.Tensor  # (...)  ν - D - 1 + P


class MatrixNormalWishartExpectations(NamedTuple):
    """Expected sufficient statistics under a Matrix-Normal-Wishart."""

    precision: torch.Tensor  # (..., D, D)  E[Λ]
    precision_loc: torch.Tensor  # (..., D, P)  E[Λ B]
    loc_precision_loc: torch.Tensor  # (..., P, P)  E[Bᵀ Λ B]
    log_det_precision: torch.Tensor  # (...)  E[log |Λ|]


class RegressionStats(NamedTuple):
    """Weighted statistics of regression pairs ``Σ w (1, x uᵀ, u uᵀ, x xᵀ)``."""

    count: torch.Tensor  # (...)
    cross: torch.Tensor  # (..., D, P)
    input_outer: torch.Tensor  # (..., P, P)
    output_outer: torch.Tensor  # (..., D, D)


def symmetrize(matrix: torch.Tensor) -> torch.Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def describe_matrices(matrix: torch.Tensor) -> str:
    """A short account of a batch of matrices for an error message (not the whole tensor)."""
    finite = torch.isfinite(matrix).all()
    if matrix.numel() <= 16:
        return f"{matrix.tolist()}"
    if not finite:
        return f"a tensor of shape {tuple(matrix.shape)} with NaN or inf entries"
    eigenvalues = torch.linalg.eigvalsh(symmetrize(matrix.detach()))
    return (
        f"a tensor of shape {tuple(matrix.shape)} with eigenvalues from {eigenvalues.min().item():.3g} "
        f"to {eigenvalues.max().item():.3g}"
    )


def checked_cholesky(matrix: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factor, or a ``ValueError`` naming ``what`` if not positive definite."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if (info != 0).any():
        raise ValueError(f"{what} must be symmetric positive definite, got {describe_matrices(matrix)}")
    return chol


def spd_matrix(value, dim: int, batch_shape=(), what: str = "matrix", dtype=None) -> torch.Tensor:
    """
    A batch of symmetric positive definite ``dim × dim`` matrices from a user's value:
    a scalar ``c`` means ``c I``; anything else must end in ``(dim, dim)``. Raises a
    ``ValueError`` naming ``what`` unless symmetric and well inside the PD cone.
    """
    dtype = dtype or torch.get_default_dtype()
    value = torch.as_tensor(value, dtype=dtype)
    eye = torch.eye(dim, dtype=dtype, device=value.device)
    if value.dim() == 0:
        value = value * eye
    if value.shape[-2:] != (dim, dim):
        raise ValueError(f"{what} must be a scalar or have shape (..., {dim}, {dim}), got {tuple(value.shape)}")
    try:
        value = value.expand(tuple(batch_shape) + (dim, dim)).clone()
    except RuntimeError:
        raise ValueError(
            f"{what} must broadcast to shape {tuple(batch_shape) + (dim, dim)}, got {tuple(value.shape)}"
        ) from None
    if not torch.isfinite(value).all() or not torch.allclose(value, value.transpose(-1, -2)):
        raise ValueError(f"{what} must be finite and symmetric, got {describe_matrices(value)}")
    eigenvalues = torch.linalg.eigvalsh(value)
    floor = dim * torch.finfo(dtype).eps * eigenvalues.abs().amax(-1, keepdim=True)
    if not (eigenvalues > floor).all():
        raise ValueError(f"{what} must be symmetric positive definite, got {describe_matrices(value)}")
    return value


def _half_log_det(tril: torch.Tensor) -> torch.Tensor:
    return tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class MatrixNormalWishart:
    r"""
    A batch of Matrix-Normal-Wishart distributions.

    :param torch.Tensor loc: ``M``, shape ``(..., D, P)``.
    :param torch.Tensor col_precision: ``K``, positive definite, shape ``(..., P, P)``.
    :param torch.Tensor scale_inv: ``Ψ = W⁻¹``, positive definite, shape ``(..., D, D)``.
    :param torch.Tensor df: ``ν > D - 1``, shape ``(...)``.
    :param bool validate_args: check finiteness, symmetry and the domain.
    :param torch.Tensor col_precision_tril: the Cholesky factor of ``K`` when the
        caller already has it (it is not factorised again).
    """

    def __init__(self, loc, col_precision, scale_inv, df, validate_args=True, col_precision_tril=None):
        D, P = loc.shape[-2:]
        batch_shape = torch.broadcast_shapes(
            loc.shape[:-2], col_precision.shape[:-2], scale_inv.shape[:-2], df.shape
        )
        self.loc = loc.expand(batch_shape + (D, P))
        self.col_precision = col_precision.expand(batch_shape + (P, P))
        self.scale_inv = scale_inv.expand(batch_shape + (D, D))
        self.df = df.expand(batch_shape)
        self.batch_shape = batch_shape
        self.dim, self.input_dim = D, P
        if validate_args:
            self._validate()
        name = type(self).__name__
        self._scale_inv_tril = checked_cholesky(self.scale_inv, f"{name} scale_inv (Ψ = W⁻¹)")
        if col_precision_tril is None:
            col_precision_tril = checked_cholesky(self.col_precision, f"{name} column precision")
        self._col_precision_tril = col_precision_tril.expand(batch_shape + (P, P))

    def _validate(self):
        name = type(self).__name__
        for what, value in (
            ("loc", self.loc),
            ("column precision", self.col_precision),
            ("scale_inv", self.scale_inv),
            ("df", self.df),
        ):
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} {what} must be finite, got {value}")
        if not (self.df > self.dim - 1).all():
            raise ValueError(f"{name} df must exceed D - 1 = {self.dim - 1}, got {self.df}")
        for what, value in (("scale_inv", self.scale_inv), ("column precision", self.col_precision)):
            if not torch.allclose(value, value.transpose(-1, -2), rtol=1e-5, atol=1e-8):
                raise ValueError(f"{name} {what} must be symmetric")

    # ----- natural parameterisation -------------------------------------------------

    # An instance is immutable, so its derived quantities are computed once: a step
    # reads them several times (bound, KL, tied factor).

    @functools.cached_property
    def natural_params(self) -> MatrixNormalWishartNatural:
        """The natural parameters ``(cross, col_precision, scale, df)``; :meth:`from_natural` inverts them."""
        cross = self.loc @ self.col_precision
        scale = self.scale_inv + cross @ self.loc.transpose(-1, -2)
        return MatrixNormalWishartNatural(
            cross, self.col_precision, scale, self.df - self.dim - 1 + self.input_dim
        )

    @classmethod
    def from_natural(cls, natural: MatrixNormalWishartNatural, validate_args=True):
        """Inverse of :attr:`natural_params`; raises if they leave the valid domain."""
        cross, col_precision, scale, df_nat = natural
        D, P = cross.shape[-2:]
        if P == 1:  # a scalar column precision (the Normal-Wishart): no factorisation needed
            if not (col_precision > 0).all():
                raise ValueError(f"{cls.__name__} natural column precision must be positive, got {col_precision}")
            col_tril, loc = col_precision.sqrt(), cross / col_precision
        else:
            col_tril = checked_cholesky(col_precision, f"{cls.__name__} natural column precision")
            loc = torch.cholesky_solve(cross.transpose(-1, -2), col_tril).transpose(-1, -2)
        scale_inv = symmetrize(scale - cross @ loc.transpose(-1, -2))
        return cls(
            loc, col_precision, scale_inv, df_nat + D + 1 - P, validate_args=validate_args, col_precision_tril=col_tril
        )

    @staticmethod
    def log_normalizer_natural(natural: MatrixNormalWishartNatural) -> torch.Tensor:
        r"""
        Log normaliser as a function of the natural parameters,

        .. math:: A = \tfrac{DP}2\log 2\pi - \tfrac D2\log|K| + \tfrac{\nu D}2\log 2
                      - \tfrac\nu2\log|\Psi| + \log\Gamma_D(\nu/2),

        with ``Ψ = η₃ - η₁ K⁻¹ η₁ᵀ``; its gradient is the expected statistics.
        """
        cross, col_precision, scale, df_nat = natural
        D, P = cross.shape[-2:]
        df = df_nat + D + 1 - P
        col_tril = torch.linalg.cholesky(col_precision)
        half = torch.linalg.solve_triangular(col_tril, cross.transpose(-1, -2), upper=False)
        scale_inv = scale - half.transpose(-1, -2) @ half
        scale_inv_tril = torch.linalg.cholesky(scale_inv)
        return (
            0.5 * D * P * math.log(2 * math.pi)
            - D * _half_log_det(col_tril)
            + 0.5 * df * D * math.log(2.0)
            - df * _half_log_det(scale_inv_tril)
            + torch.mvlgamma(0.5 * df, D)
        )

    def log_normalizer(self) -> torch.Tensor:
        """:meth:`log_normalizer_natural` at this instance's parameters, from its Cholesky factors."""
        if "_log_normalizer" not in self.__dict__:
            D, P = self.dim, self.input_dim
            self.__dict__["_log_normalizer"] = (
                0.5 * D * P * math.log(2 * math.pi)
                - D * _half_log_det(self._col_precision_tril)
                + 0.5 * self.df * D * math.log(2.0)
                - self.df * _half_log_det(self._scale_inv_tril)
                + torch.mvlgamma(0.5 * self.df, D)
            )
        return self.__dict__["_log_normalizer"]

    # ----- expectations ----------------------------------------------------------

    def expectations(self) -> MatrixNormalWishartExpectations:
        r"""
        .. math::
            E[\Lambda] = \nu W,\quad E[\Lambda B] = \nu W M,\quad
            E[B^\top\Lambda B] = D K^{-1} + \nu M^\top W M,\quad
            E[\log|\Lambda|] = \textstyle\sum_i \psi\big(\tfrac{\nu+1-i}2\big) + D\log 2 - \log|\Psi|
        """
        if "_expectations" in self.__dict__:
            return self.__dict__["_expectations"]
        D = self.dim
        W = torch.cholesky_inverse(self._scale_inv_tril)
        E_prec = self.df[..., None, None] * W
        E_prec_loc = E_prec @ self.loc
        E_quad = D * torch.cholesky_inverse(self._col_precision_tril) + self.loc.transpose(-1, -2) @ E_prec_loc
        i = torch.arange(D, dtype=self.df.dtype, device=self.df.device)
        E_logdet = (
            torch.special.digamma(0.5 * (self.df[..., None] - i)).sum(-1)
            + D * math.log(2.0)
            - 2 * _half_log_det(self._scale_inv_tril)
        )
        self.__dict__["_expectations"] = MatrixNormalWishartExpectations(E_prec, E_prec_loc, E_quad, E_logdet)
        return self.__dict__["_expectations"]

    def expected_log_likelihood(self, stats: RegressionStats) -> torch.Tensor:
        """``E_q(B,Λ)[Σ w log N(x; B u, Λ⁻¹)]`` for weighted regression statistics."""
        return expected_regression_log_likelihood(self.expectations(), stats)

    def _expected_inner(self, natural: MatrixNormalWishartNatural) -> torch.Tensor:
        """``<η, E_self[T]>`` for natural parameters ``η`` of the same family."""
        E = self.expectations()
        return (
            (natural.cross * E.precision_loc).sum((-1, -2))
            - 0.5 * (natural.col_precision * E.loc_precision_loc).sum((-1, -2))
            - 0.5 * (natural.scale * E.precision).sum((-1, -2))
            + 0.5 * natural.df * E.log_det_precision
        )

    def cross_entropy(self, other: "MatrixNormalWishart") -> torch.Tensor:
        r"""
        ``-E_self[log other]`` in closed form (the base measure is Lebesgue's, so
        ``log p = <η, T> - A(η)``):

        .. math:: A(\eta_p) - \langle \eta_p, E_q[T]\rangle
        """
        return other.log_normalizer() - self._expected_inner(other.natural_params)

    def entropy(self) -> torch.Tensor:
        """``-E[log self]``."""
        return self.cross_entropy(self)

    def kl_divergence(self, other: "MatrixNormalWishart") -> torch.Tensor:
        r"""
        ``KL(self ‖ other)`` in closed form for exponential families,

        .. math:: A(\eta_p) - A(\eta_q) - \langle \eta_p - \eta_q, E_q[T]\rangle
        """
        eta_q, eta_p = self.natural_params, other.natural_params
        difference = MatrixNormalWishartNatural(*(p - q for p, q in zip(eta_p, eta_q)))
        return other.log_normalizer() - self.log_normalizer() - self._expected_inner(difference)

    # ----- sampling and density -------------------------------------------------

    def precision_dist(self) -> Wishart:
        """``Λ ~ W(W, ν)`` as a Pyro distribution."""
        return Wishart(self.df, precision_matrix=self.scale_inv, validate_args=False)

    def loc_dist(self, precision) -> MatrixNormal:
        """``B | Λ ~ MN(M, Λ⁻¹, K⁻¹)`` as a Pyro distribution."""
        return MatrixNormal(self.loc, precision, self.col_precision, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        """Returns a reparameterised pair ``(B, Λ)``."""
        precision = self.precision_dist().rsample(sample_shape)
        return self.loc_dist(precision).rsample(), precision

    def log_prob(self, loc, precision) -> torch.Tensor:
        return self.precision_dist().log_prob(precision) + self.loc_dist(precision).log_prob(loc)


def expected_regression_log_likelihood(
    E: MatrixNormalWishartExpectations, stats: RegressionStats
) -> torch.Tensor:
    """
    ``Σ w E[log N(x; B u, Λ⁻¹)]`` from Matrix-Normal-Wishart expectations and
    weighted statistics: the single source of every expected Gaussian log-likelihood.
    """
    D = E.precision.shape[-1]
    return (
        (stats.cross * E.precision_loc).sum((-1, -2))
        - 0.5 * (stats.input_outer * E.loc_precision_loc).sum((-1, -2))
        - 0.5 * (stats.output_outer * E.precision).sum((-1, -2))
        + 0.5 * stats.count * (E.log_det_precision - D * math.log(2 * math.pi))
    )


def regression_conjugate_update(
    prior: MatrixNormalWishartNatural, stats: RegressionStats
) -> MatrixNormalWishartNatural:
    """Natural parameters of the posterior after observing weighted statistics."""
    return MatrixNormalWishartNatural(
        prior.cross + stats.cross,
        prior.col_precision + stats.input_outer,
        prior.scale + stats.output_outer,
        prior.df + stats.count,
    )
