r"""
The natural-parameter domain of a conjugate posterior ``q(θ | λ)``, and a
bijection onto it from unconstrained space.

A guide stores the natural parameters ``λ`` of its PGM's conjugate posterior
as ONE parameter-store tensor whose constraint is a :class:`NaturalDomain`.
Pyro keeps the *unconstrained* value ``u`` and hands the model ``λ = T(u)``,
where ``T`` maps every real vector into the domain:

.. math:: u \mapsto \big(\log\alpha,\ \ M,\ \mathrm{chol}^\flat K,\
          \mathrm{chol}^\flat\Psi,\ \log(\nu - D + 1)\big)^{-1}
          \mapsto \lambda = \big(\alpha,\ MK,\ K,\ \Psi + MKM^\top,\ \nu - D - 1 + P\big)

(``chol♭`` is the lower Cholesky factor with its diagonal on the log scale).
So *any* optimiser keeps ``λ`` valid, while
:class:`~pyro_sin.optim.NaturalStep` still steps in natural coordinates,
``λ ← (1 - β)λ + βλ*``, and maps back with ``T⁻¹``. Each unconstrained
coordinate has the shape of the natural one it stands for, so ``u`` and ``λ``
have the same length and the gradient slot of ``u`` can hold ``λ - λ*``.

The constraint is not a subclass of ``constraints._Real``: Pyro's
``ParamStoreDict.set_state`` replaces such constraints by ``constraints.real``,
which would forget that the tensor holds natural parameters after a
checkpoint is loaded.

Each block of the domain corresponds to one conjugate family; a PGM lists its
blocks (see :meth:`~pyro_sin.pgm.StructuredPrior.natural_domain`).
"""

import math
from typing import Dict, Sequence, Tuple

import torch
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import LowerCholeskyTransform, Transform

_lower_cholesky = LowerCholeskyTransform()


class NaturalBlock:
    """
    One conjugate family's share of a natural-parameter vector: the natural
    tensors under ``keys`` with their ``shapes``, and a bijection from
    unconstrained tensors of the same shapes.
    """

    keys: Tuple[str, ...] = ()

    def __init__(self, shapes: Dict[str, Tuple[int, ...]]):
        self.shapes = {key: torch.Size(shapes[key]) for key in self.keys}

    def from_unconstrained(self, raw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Natural parameters from unconstrained tensors (differentiable)."""
        raise NotImplementedError

    def to_unconstrained(self, natural: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Inverse of :meth:`from_unconstrained`; raises if ``natural`` is outside the domain."""
        raise NotImplementedError

    def base_offset(self, key: str) -> float:
        """
        ``λ - η`` for the key, where ``η`` are the natural parameters of the density
        with respect to a unit base measure (zero unless the stored coordinate is shifted).
        """
        return 0.0


class DirichletBlock(NaturalBlock):
    r"""
    The concentrations ``α > 0`` of a batch of Dirichlets, stored as ``log α``. The
    stored coordinate is ``α = η + 1`` (``η`` pairs with ``log π``), hence the offset 1.

    :param int num_components: ``K``, the size of each Dirichlet.
    :param batch_shape: the batch of Dirichlets (default: one), e.g. ``(K,)`` for the
        rows of a transition matrix.
    :param str key: the name of the natural parameter (distinct per block of a domain).
    """

    def __init__(self, num_components: int, batch_shape: Sequence[int] = (), key: str = "concentration"):
        self.keys = (key,)
        super().__init__({key: tuple(batch_shape) + (num_components,)})

    def from_unconstrained(self, raw):
        (key,) = self.keys
        return {key: raw[key].exp()}

    def to_unconstrained(self, natural):
        (key,) = self.keys
        concentration = natural[key]
        if not (concentration > 0).all():
            raise ValueError(f"Dirichlet natural parameter {key!r} must stay positive, got {concentration}")
        return {key: concentration.log()}

    def base_offset(self, key):
        return 1.0


class MatrixNormalWishartBlock(NaturalBlock):
    r"""
    A batch of Matrix-Normal-Wishart natural parameters
    ``(M K, K, Ψ + M K Mᵀ, ν - D - 1 + P)`` under the keys
    ``cross, col_precision, scale, df``, stored as ``(M, chol♭ K, chol♭ Ψ, log(ν - D + 1))``.

    :param batch_shape: the family's batch shape.
    :param int dim: ``D``.
    :param int input_dim: ``P``.
    """

    keys = ("cross", "col_precision", "scale", "df")

    def __init__(self, batch_shape: Sequence[int], dim: int, input_dim: int):
        batch = tuple(batch_shape)
        D, P = dim, input_dim
        self.dim, self.input_dim = D, P
        super().__init__(
            {"cross": batch + (D, P), "col_precision": batch + (P, P), "scale": batch + (D, D), "df": batch}
        )

    def from_unconstrained(self, raw):
        D, P = self.dim, self.input_dim
        loc = raw["cross"]
        col_tril = _lower_cholesky(raw["col_precision"])
        scale_tril = _lower_cholesky(raw["scale"])
        col_precision = col_tril @ col_tril.transpose(-1, -2)
        cross = loc @ col_precision
        scale = scale_tril @ scale_tril.transpose(-1, -2) + cross @ loc.transpose(-1, -2)
        df = raw["df"].exp() + (D - 1)
        return {"cross": cross, "col_precision": col_precision, "scale": scale, "df": df - D - 1 + P}

    def to_unconstrained(self, natural):
        from .matrix_normal_wishart import MatrixNormalWishart, MatrixNormalWishartNatural

        D, P = self.dim, self.input_dim
        natural = MatrixNormalWishartNatural(**{k: natural[k] for k in self.keys})
        if not (natural.df > P - 2).all():  # ν > D - 1
            raise ValueError(f"Matrix-Normal-Wishart natural df must exceed P - 2 = {P - 2}, got {natural.df}")
        # the Cholesky factorisations refuse non-positive-definite matrices
        q = MatrixNormalWishart.from_natural(natural, validate_args=False)
        return {
            "cross": q.loc,
            "col_precision": _lower_cholesky.inv(q._col_precision_tril),
            "scale": _lower_cholesky.inv(q._scale_inv_tril),
            "df": (q.df - (D - 1)).log(),
        }


class NormalWishartBlock(NaturalBlock):
    r"""
    A batch of Normal-Wishart natural parameters ``(κm, κ, Ψ + κ m mᵀ, ν - D)`` under
    the keys ``loc, kappa, scale, df``: the single-column Matrix-Normal-Wishart block.

    :param batch_shape: the family's batch shape.
    :param int dim: ``D``.
    """

    keys = ("loc", "kappa", "scale", "df")

    def __init__(self, batch_shape: Sequence[int], dim: int):
        batch = tuple(batch_shape)
        self._matrix = MatrixNormalWishartBlock(batch, dim, 1)
        super().__init__({"loc": batch + (dim,), "kappa": batch, "scale": batch + (dim, dim), "df": batch})

    @staticmethod
    def _as_matrix(values):
        return {
            "cross": values["loc"][..., None],
            "col_precision": values["kappa"][..., None, None],
            "scale": values["scale"],
            "df": values["df"],
        }

    @staticmethod
    def _from_matrix(values):
        return {
            "loc": values["cross"][..., 0],
            "kappa": values["col_precision"][..., 0, 0],
            "scale": values["scale"],
            "df": values["df"],
        }

    def from_unconstrained(self, raw):
        return self._from_matrix(self._matrix.from_unconstrained(self._as_matrix(raw)))

    def to_unconstrained(self, natural):
        if not (natural["kappa"] > 0).all():
            raise ValueError(f"NormalWishart natural parameter κ must be positive, got {natural['kappa']}")
        return self._from_matrix(self._matrix.to_unconstrained(self._as_matrix(natural)))


class NaturalDomain(constraints.Constraint):
    r"""
    The domain of a packed vector of natural parameters made of
    :class:`NaturalBlock` s, flattened key by key in order. ``biject_to`` and
    ``transform_to`` map unconstrained vectors of the same length onto it.

    :param blocks: the blocks, with distinct keys.
    """

    event_dim = 1

    def __init__(self, blocks: Sequence[NaturalBlock]):
        self.blocks = tuple(blocks)
        self.shapes = {}
        for block in self.blocks:
            for key, shape in block.shapes.items():
                if key in self.shapes:
                    raise ValueError(f"NaturalDomain: the key {key!r} appears in two blocks")
                self.shapes[key] = shape
        self.size = sum(math.prod(shape) for shape in self.shapes.values())
        super().__init__()

    def __repr__(self):
        return f"NaturalDomain({', '.join(self.shapes)})"

    # ----- packing --------------------------------------------------------------------

    def pack(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Flattens a dict of tensors with the domain's keys and shapes into one vector."""
        missing = set(self.shapes) - set(values)
        if missing:
            raise ValueError(f"NaturalDomain.pack: missing natural parameters {sorted(missing)}")
        parts = []
        for key, shape in self.shapes.items():
            value = values[key]
            if value.shape[value.dim() - len(shape):] != shape:
                raise ValueError(
                    f"natural parameter {key!r} must have shape {tuple(shape)}, got {tuple(value.shape)}"
                )
            parts.append(value.reshape(value.shape[: value.dim() - len(shape)] + (-1,)))
        return torch.cat(parts, -1)

    def unpack(self, packed: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Inverse of :meth:`pack` (views, no copies)."""
        if packed.shape[-1] != self.size:
            raise ValueError(
                f"a packed vector of {self!r} has {self.size} entries, got shape {tuple(packed.shape)}"
            )
        values, start = {}, 0
        for key, shape in self.shapes.items():
            size = math.prod(shape)
            values[key] = packed[..., start : start + size].reshape(packed.shape[:-1] + shape)
            start += size
        return values

    # ----- the bijection -------------------------------------------------------------------

    def from_unconstrained(self, raw: torch.Tensor) -> torch.Tensor:
        parts = self.unpack(raw)
        natural = {}
        for block in self.blocks:
            natural.update(block.from_unconstrained({k: parts[k] for k in block.keys}))
        return self.pack(natural)

    def to_unconstrained(self, packed: torch.Tensor) -> torch.Tensor:
        natural = self.unpack(packed)
        raw = {}
        for block in self.blocks:
            raw.update(block.to_unconstrained({k: natural[k] for k in block.keys}))
        return self.pack(raw)

    def base_offset(self, like: torch.Tensor) -> torch.Tensor:
        """The packed offsets of :meth:`NaturalBlock.base_offset`, dtype and device of ``like``."""
        offsets = {
            key: torch.full(block.shapes[key], block.base_offset(key), dtype=like.dtype, device=like.device)
            for block in self.blocks
            for key in block.keys
        }
        return self.pack(offsets)

    def check(self, value):
        try:
            self.to_unconstrained(value)
        except (ValueError, RuntimeError):
            return torch.zeros(value.shape[:-1], dtype=torch.bool, device=value.device)
        return torch.isfinite(value).all(-1)


class NaturalTransform(Transform):
    """``u ↦ λ``: unconstrained vectors onto a :class:`NaturalDomain`."""

    domain = constraints.real_vector
    bijective = True

    def __init__(self, natural_domain: NaturalDomain, cache_size=0):
        self.natural_domain = natural_domain
        super().__init__(cache_size=cache_size)

    @property
    def codomain(self):
        return self.natural_domain

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return NaturalTransform(self.natural_domain, cache_size=cache_size)

    def __eq__(self, other):
        return isinstance(other, NaturalTransform) and other.natural_domain is self.natural_domain

    def _call(self, u):
        return self.natural_domain.from_unconstrained(u)

    def _inverse(self, natural):
        return self.natural_domain.to_unconstrained(natural)


biject_to.register(NaturalDomain)(NaturalTransform)
transform_to.register(NaturalDomain)(NaturalTransform)


def is_natural_domain(constraint) -> bool:
    return isinstance(constraint, NaturalDomain)
