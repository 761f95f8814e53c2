"""
The interface between a structured prior (a PGM) and the generic machinery.

:class:`~pyro_sin.SINGuide`, :class:`~pyro_sin.SINELBO` and
:class:`~pyro_sin.optim.NaturalAdam` know nothing about mixtures or chains;
they talk to a PGM only through the methods below. Each PGM module owns all
of its structure-specific mathematics.

Vocabulary used throughout:

* *natural* -- a ``dict`` of tensors: the natural parameters ``λ`` of the
  conjugate posterior ``q(θ_PGM | λ)`` over the PGM's global parameters. The
  guide owns them; the natural-gradient step moves them by convex combination.
* *factor* -- the SIN's PGM factor ``q(x | φ_PGM)``, either *tied* (the
  mean-field message of ``q(θ | λ)``) or *free* (its own parameters).
* *posterior* -- the closed-form SIN posterior of the local latents of one
  minibatch, combining the encoder's potentials with the factor.
"""

import numbers
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch.distributions import constraints

import pyro
from pyro.nn import PyroModule
from pyro.poutine.runtime import effectful

from ..distributions.natural import NaturalDomain


class SINRecord(NamedTuple):
    """What a guide leaves on its local latent site for :class:`~pyro_sin.SINELBO`."""

    pgm: "StructuredPrior"
    natural_domain: NaturalDomain  # how λ is packed into natural_param
    natural_param: torch.Tensor  # λ packed, as the param store hands it (with .unconstrained)
    global_posterior: Any  # q(θ | λ), without gradient to λ
    posterior: Any  # the SIN posterior of the minibatch

    @property
    def natural(self) -> Dict[str, torch.Tensor]:
        """``λ`` as a dict of tensors (views of :attr:`natural_param`)."""
        return self.natural_domain.unpack(self.natural_param)


def shares_in_use(counts: torch.Tensor, min_share: float) -> int:
    """
    How many of the expected counts ``(K,)`` (e.g. ``α - α₀`` of a Dirichlet) hold at least
    ``min_share`` of their total; all ``K`` while the total is zero (nothing assigned yet).
    """
    counts = counts.clamp(min=0)
    total = counts.sum()
    if total <= 0:
        return len(counts)
    return int((counts >= min_share * total).sum())


# The PGM's own sample statements run as effects, so that SINELBO, which
# integrates the PGM's sites in closed form, can skip them (no sampling of θ,
# no densities built for x) while every other handler sees ordinary sites.


@effectful(type="sin_prior_params")
def _prior_params(pgm):
    return pgm._sample_params()


@effectful(type="sin_prior_latent")
def _prior_latent(pgm, params, *args, **kwargs):
    return pgm._sample_latent(params, *args, **kwargs)


@effectful(type="sin_posterior_params")
def _posterior_params(pgm, natural):
    return pgm._sample_global_posterior(natural)


class StructuredPrior(PyroModule):
    """
    Base class of a PGM prior ``p(x | θ) p(θ)`` with a conjugate posterior
    ``q(θ | λ)`` and a closed-form structured inference network.

    :param str name: the name of the local latent site; other sites derive
        their names from it.
    """

    #: the SIN factors this structure offers (see :class:`~pyro_sin.SINGuide`)
    factor_modes = ("tied", "free")

    #: the roles of the sites besides the latent site ``name`` (e.g. ``"weights"``) that
    #: :meth:`~pyro_sin.pgm.base.StructuredPrior.site_name` names
    site_roles: Tuple[str, ...] = ()

    def __init__(self, name: str, **sizes: int):
        super().__init__()
        self.name = name
        for key, size in sizes.items():
            if isinstance(size, bool) or not isinstance(size, numbers.Integral):
                raise TypeError(f"{type(self).__name__} {key} must be a whole number, got {size!r}")
        self._site_names = {}
        if any(size < 1 for size in sizes.values()):
            wanted = " and ".join(f"{key} >= 1" for key in sizes)
            given = ", ".join(f"{key}={size}" for key, size in sizes.items())
            raise ValueError(f"{type(self).__name__}: need {wanted}, got {given}")
        for key, size in sizes.items():
            setattr(self, key, size)

    @staticmethod
    def _finite(value, what: str):
        """``value`` (a number or a tensor), refused unless finite; ``what`` names it in the error."""
        if not torch.isfinite(torch.as_tensor(value)).all():
            raise ValueError(f"{what} must be finite, got {value}")
        return value

    @classmethod
    def _as_tensor(cls, value, shape, what: str = "a hyperparameter") -> torch.Tensor:
        """A finite hyperparameter (a number or a tensor) in the default dtype, broadcast to ``shape`` and owned."""
        value = torch.as_tensor(cls._finite(value, what), dtype=torch.get_default_dtype())
        try:
            return value.expand(shape).clone()
        except RuntimeError:
            raise ValueError(
                f"{what} must be a number or a tensor that broadcasts to shape {tuple(shape)}, "
                f"got shape {tuple(value.shape)}"
            ) from None

    def _memoized(self, key: str, tensors, build):
        """
        ``build()``, computed again only when one of ``tensors`` (e.g. the prior's
        buffers) is replaced (``.to()``, ``.double()``) or modified in place.
        """
        stamp = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        memo = self.__dict__.setdefault("_memo", {})
        if key not in memo or memo[key][0] != stamp:
            memo[key] = (stamp, build())
        return memo[key][1]

    @staticmethod
    def _check_concentration(concentration: torch.Tensor, what: str) -> torch.Tensor:
        """A Dirichlet's natural parameter (its concentration), refused unless positive."""
        if not (concentration > 0).all():
            raise ValueError(
                f"the Dirichlet natural parameter of the {what} must stay positive, got {concentration}; "
                "natural parameters should only move by convex combinations (NaturalAdam)"
            )
        return concentration

    @staticmethod
    def _sample_conjugate(family, sites: Tuple[str, str], event_dims: int = 0):
        """
        ``Λ`` then the location ``L | Λ`` from a (Matrix-)Normal-Wishart ``family`` at the sites
        ``(precision, location)``, its batch dimensions (``event_dims``) as event; returns ``(Λ, L)``.
        """
        precision = pyro.sample(sites[0], family.precision_dist().to_event(event_dims))
        return precision, pyro.sample(sites[1], family.loc_dist(precision).to_event(event_dims))

    def _conjugate_prior(self, family, buffers, validate_args=False):
        """
        ``family(*buffers)``, the conjugate prior ``p(θ)``: built and validated when asked
        (once, at construction), else built once per version of the buffers.
        """
        if validate_args:
            return family(*buffers, validate_args=True)
        return self._memoized("prior", buffers, lambda: family(*buffers, validate_args=False))

    # ----- model side ---------------------------------------------------------

    def site_name(self, role: str) -> str:
        """The name of the site of ``role``: ``"<name>_<role>"``, or the name :meth:`rename_sites` gave it."""
        return self._site_names.get(role, f"{self.name}_{role}")

    def rename_sites(self, **names: str) -> "StructuredPrior":
        """
        Names the sites of the given roles after a model's own sample sites (e.g.
        ``weights="pi"``), so that the family's sample statements and a guide built on it
        match a model written with plain ``pyro.sample`` statements (:mod:`pyro_sin.recognize`).

        :returns: ``self``.
        """
        unknown = sorted(set(names) - set(self.site_roles))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} names no site(s) of role(s) {unknown}; its roles: {self.site_roles}"
            )
        self._site_names.update(names)
        return self

    @property
    def global_sites(self) -> Tuple[str, ...]:
        """Names of the sample sites of ``θ``, emitted outside any data plate."""
        raise NotImplementedError

    @property
    def local_sites(self) -> Tuple[str, ...]:
        """Names of the local sample sites, emitted inside the data plate."""
        raise NotImplementedError

    @property
    def decoupled_sites(self) -> Tuple[str, ...]:
        """
        Local sites on which the guide's draw of the latent site ``name`` does not
        depend (the discrete block of a mean-field posterior). The model's terms outside
        the PGM read only that draw, so :class:`~pyro_sin.SINELBO` adds no score-function
        term for these sites: its expectation is zero, its variance is not.
        """
        return ()

    def global_values(self, global_posterior) -> Dict[str, torch.Tensor]:
        """
        Values for the global sites of a model that writes them as plain ``pyro.sample``
        statements (a recognised model, :mod:`pyro_sin.recognize`), by site name: what the
        model computes with while :class:`~pyro_sin.SINELBO` integrates ``θ`` in closed form.
        By default not offered.
        """
        raise NotImplementedError(f"{type(self).__name__} gives no values for plainly written global sites")

    def sample_params(self):
        """Emits ``θ ~ p(θ)`` as Pyro sample sites; returns the sampled values."""
        return _prior_params(self)

    def sample_latent(self, params, *args, **kwargs) -> torch.Tensor:
        """Emits the local sites ``x ~ p(x | θ)`` inside the user's data plate."""
        return _prior_latent(self, params, *args, **kwargs)

    def _sample_params(self):
        raise NotImplementedError

    def _sample_latent(self, params, *args, **kwargs):
        raise NotImplementedError

    # ----- conjugate posterior over θ -------------------------------------------

    def prior_natural(self) -> Dict[str, torch.Tensor]:
        """Natural parameters ``λ₀`` of the conjugate prior ``p(θ)``."""
        raise NotImplementedError

    def init_natural(self) -> Dict[str, torch.Tensor]:
        """Initial natural parameters ``λ`` of ``q(θ | λ)``; by default the prior's."""
        return self.prior_natural()

    def natural_domain(self) -> NaturalDomain:
        """The domain of ``λ``, one block per conjugate family, with its bijection from ``ℝⁿ``."""
        raise NotImplementedError

    def global_posterior(self, natural: Dict[str, torch.Tensor]):
        """``q(θ | λ)`` as an object the methods below take (computed once per step)."""
        raise NotImplementedError

    def sample_global_posterior(self, natural: Dict[str, torch.Tensor]):
        """Emits ``θ ~ q(θ | λ)`` under the same site names as :meth:`sample_params`."""
        return _posterior_params(self, natural)

    def _sample_global_posterior(self, natural):
        raise NotImplementedError

    def kl(self, global_posterior) -> torch.Tensor:
        """``KL(q(θ | λ) ‖ p(θ))`` in closed form (a scalar)."""
        raise NotImplementedError

    def cross_entropy(self, global_posterior) -> torch.Tensor:
        """``-E_q(θ|λ)[log p(θ)]`` in closed form (a scalar); needed only when the model's
        global sites are scaled differently from the guide's."""
        raise NotImplementedError

    # ----- the structured inference network ------------------------------------

    def tied_factor(self, global_posterior):
        """The SIN factor as the mean-field message ``exp E_q(θ)[log p(x | θ)]``."""
        raise NotImplementedError

    def init_free_factor(
        self, natural: Dict[str, torch.Tensor]
    ) -> Dict[str, Tuple[torch.Tensor, constraints.Constraint]]:
        """Initial values and constraints of a free SIN factor's parameters."""
        raise NotImplementedError

    def free_factor(self, params: Dict[str, torch.Tensor]):
        """The SIN factor built from free parameters."""
        raise NotImplementedError

    def posterior(self, potential, factor):
        """Closed-form SIN posterior from the encoder's potentials and the factor."""
        raise NotImplementedError

    def check_potential(self, potential):
        """Refuses (in :meth:`posterior`) potentials that are not over the ``latent_dim`` coordinates of one latent."""
        if potential.info_vec.shape[-1] != self.latent_dim:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' has latent_dim={self.latent_dim} but the "
                f"encoder emitted potentials of size {potential.info_vec.shape[-1]}"
            )

    def sample_local_posterior(self, record: SINRecord) -> torch.Tensor:
        """Emits the local sites from the SIN posterior in ``record``."""
        raise NotImplementedError

    def expected_log_prior(self, global_posterior, posterior) -> torch.Tensor:
        """``E_q(θ) E_q(x) [log p(x | θ)]`` per data point, batch shape of the data plate."""
        raise NotImplementedError

    def local_entropy(self, posterior) -> torch.Tensor:
        """``H[q(x)]`` per data point, batch shape of the data plate."""
        return posterior.entropy()

    def local_elbo(self, global_posterior, posterior) -> torch.Tensor:
        """
        Per-data-point closed-form part of the bound,
        ``E_q(θ) E_q(x) [log p(x | θ)] + H[q(x)]``, batch shape of the data plate.
        """
        return self.expected_log_prior(global_posterior, posterior) + self.local_entropy(posterior)

    def natural_target(self, posterior, scale: float) -> Dict[str, torch.Tensor]:
        """
        The conjugate update ``λ* = λ₀ + scale · Σ E[t(x)]`` from the exact
        expected statistics of the minibatch (``scale = N / |B|``).
        """
        raise NotImplementedError

    # ----- data-driven start and diagnostics --------------------------------------------

    def encoded_start(self, encoder, data, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """
        The initial ``λ`` of ``q(θ | λ)`` from the training data as the encoder sees them:
        the family's data-driven start (e.g. mixture components on the clusters of the
        encoded data), for ``SINGuide(..., init_natural=...)`` or
        :meth:`~pyro_sin.guide.SINGuide.set_natural`. By default :meth:`init_natural`, which
        ignores the data.

        :param torch.nn.Module encoder: maps the data to a :class:`~pyro_sin.potential.GaussianPotential`.
        :param data: the training data (a tensor, or a tuple of encoder inputs).
        :param torch.Generator generator: the random stream of the start's clustering and draws.
        """
        return self.init_natural()

    def in_use(self, natural: Dict[str, torch.Tensor], min_share: float = 0.01) -> Optional[int]:
        """
        The number of the structure's units (mixture components, states, regimes) that hold
        at least ``min_share`` of the data under ``q(θ | λ)``; None (the default) where the
        structure has no such units.
        """
        return None

    def in_use_warning(self, in_use: int) -> Optional[str]:
        """
        Advice when training ends with ``in_use`` units in use (e.g. every point in one
        mixture component), or None (the default) when that count is no cause for concern.
        """
        return None
