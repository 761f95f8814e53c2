r"""
The structured prior of a model written with plain Pyro statements, recognised from the model itself.

:func:`recognize` runs the model twice, with the random stream left as it was: once as written,
and once with the candidate structure's values replaced (other assignments, other component
parameters, the same values everywhere else), and reads off both traces the distributions, the
plates and how values flow between the sites. It then builds the family's structured prior with
the hyperparameters read from the model's prior sites, renames its sites after the model's own
(:meth:`~pyro_sin.pgm.base.StructuredPrior.rename_sites`) and checks that the family's own sample
statements reproduce the model: the same sites, shapes and log density on the traced values. What
it cannot recognise it refuses, naming the site, what it found and what it expected.

A Gaussian mixture (:class:`~pyro_sin.pgm.GaussianMixture`) is recognised in a model of the form::

    weights = pyro.sample("weights", dist.Dirichlet(alpha))                    # outside every plate
    with pyro.plate("components", K):                                          # or .to_event(1)
        precisions = pyro.sample("precisions", dist.Wishart(df, covariance_matrix=V))
        locs = pyro.sample("locs", dist.MultivariateNormal(m, precision_matrix=kappa * precisions))
    with pyro.plate("data", N, subsample=idx):
        z = pyro.sample("assignment", dist.Categorical(weights))
        x = pyro.sample("x", dist.MultivariateNormal(locs[z], precision_matrix=precisions[z]))  # or Vindex
        ...                                                                    # the decoder, as written

(any site names; the location and precision may be given in any parametrisation that gives
these values), or with the assignments summed out by the model, as one site
``x ~ MixtureSameFamily(Categorical(weights), MultivariateNormal(locs, precision_matrix=precisions))``
(the guide then samples the assignments at the site ``"<x>_assignment"``, which only
:class:`~pyro_sin.SINELBO` accounts for). The decoder and every site outside the mixture stay
as written, but may read the mixture only through ``x``: :class:`~pyro_sin.SINELBO` integrates
the weights, components and assignments in closed form.

A latent HMM (:class:`~pyro_sin.pgm.LatentHMM`) is recognised in a model of the form::

    init = pyro.sample("init", dist.Dirichlet(alpha))                          # outside every plate
    with pyro.plate("states", K):                                              # or .to_event(1)
        transitions = pyro.sample("transitions", dist.Dirichlet(beta))         # row j: out of state j
        precisions = pyro.sample("precisions", dist.Wishart(df, covariance_matrix=V))
        locs = pyro.sample("locs", dist.MultivariateNormal(m, precision_matrix=kappa * precisions))
    with pyro.plate("sequences", N, subsample=idx):
        z = None
        for t in pyro.markov(range(T)):
            probs = init if z is None else Vindex(transitions)[..., z, :]
            z = pyro.sample(f"z_{t}", dist.Categorical(probs))
            x = pyro.sample(f"x_{t}", dist.MultivariateNormal(Vindex(locs)[..., z, :],
                                                              precision_matrix=Vindex(precisions)[..., z, :, :]))
            ...                                                                # the decoder of step t

(any site names; sequences of equal length: a chain under a mask, e.g. padded sequences, is
refused for now). Its set-up check adds the model's per-step log densities over the steps and
compares them with the family's density of whole paths. The guide draws each sequence's path as
the family's guide does, then emits it one step at a time with the conditionals
``q(z_t | z_{t-1})`` and ``q(x_t | z_t)`` (:meth:`~pyro_sin.pgm.LatentHMM.unroll_sites`), so that
Pyro's own ELBOs see a correct guide too.

A latent linear dynamical system (:class:`~pyro_sin.pgm.LinearDynamicalSystem`) is recognised in
a model of the form::

    dynamics = MatrixNormalWishart(M0, K0, scale_inv, df)                      # pyro_sin.distributions
    noise_precision = pyro.sample("noise_precision", dynamics.precision_dist())   # Λ ~ Wishart
    transition = pyro.sample("transition", dynamics.loc_dist(noise_precision))   # [A b] | Λ, shape (D, D + 1)
    A, b = transition[:, :D], transition[:, D]
    with pyro.plate("sequences", N, subsample=idx):
        x = None
        for t in pyro.markov(range(T)):
            if x is None:
                x = pyro.sample("x_0", dist.MultivariateNormal(m0, precision_matrix=P0))  # constants
            else:
                loc = (A @ x[..., None])[..., 0] + b
                x = pyro.sample(f"x_{t}", dist.MultivariateNormal(loc, precision_matrix=noise_precision))
            ...                                                                # the decoder of step t

(any site names, any parametrisation of the steps' Gaussians; sequences of equal length). The
location must be the same affine map of the previous state at every traced pair of steps and
follow other dynamics substituted in the second trace; the set-up check compares the per-step
densities, summed, with the family's density of whole paths. The guide draws each sequence's
path as the family's guide does, then emits it one step at a time with the Kalman smoother's
conditionals ``q(x_t | x_{t-1})`` (:meth:`~pyro_sin.pgm.LinearDynamicalSystem.unroll_sites`).
Pyro's ``GaussianHMM`` family, which sums the chain out within one site, is refused with the
per-step form as the way to write it.
"""

import warnings
from typing import TYPE_CHECKING, Dict, NamedTuple, Optional, Tuple

import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites

from ._pyro_compat import isolated
from .pgm.base import StructuredPrior
from .pgm.mixture import GaussianMixture, take_component

if TYPE_CHECKING:
    from .pgm.hmm import LatentHMM


class InModelPlates(Messenger):
    """
    Emits the named sites of a family's global sample statements, which hold ``K`` parameters
    as one event (``.to_event(1)``), inside the model's plate of the ``K`` components instead,
    as the model writes them, so that a guide's sites match the model's for every ELBO.

    :param dict frames: site name -> the model's plate frame of that site.
    """

    def __init__(self, frames):
        super().__init__()
        self.frames = frames

    def _pyro_sample(self, msg):
        frame = self.frames.get(msg["name"])
        if frame is not None:
            fn = msg["fn"]  # an Independent over the K parameters
            ndims = fn.reinterpreted_batch_ndims - 1
            msg["fn"] = dist.Independent(fn.base_dist, ndims) if ndims else fn.base_dist
            msg["cond_indep_stack"] = (frame,) + msg["cond_indep_stack"]


class NotRecognizedError(ValueError):
    """A model whose structure :func:`recognize` cannot map onto a family (the message says where and why)."""


class Recognition(NamedTuple):
    """What :func:`recognize` found."""

    family: str  # the family's key in pyro_sin.pgm.FAMILIES
    prior: StructuredPrior  # its structured prior, its sites named after the model's
    sites: Dict[str, str]  # role (e.g. "weights") -> the model's site name
    data_plate: str  # the name of the model's plate over data points
    trace: Trace  # the model's trace as written (random values), which recognition read
    marginalised: Tuple[str, ...] = ()  # the family's sites the model sums out (a MixtureSameFamily's assignments)
    steps: Tuple[Tuple[str, ...], ...] = ()  # a chain's sites per step: (states z_t, latents x_t)


def _refuse(site: Optional[str], found: str, expected: str):
    where = f"site '{site}'" if site is not None else "the model"
    raise NotRecognizedError(f"recognize: {where}: found {found}; expected {expected}")


def _base(fn):
    """The distribution under ``.to_event`` and ``.expand`` wrappers."""
    while isinstance(fn, (torch.distributions.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def _describe(site) -> str:
    fn = site["fn"]
    return (
        f"a {type(_base(fn)).__name__} of batch shape {tuple(fn.batch_shape)} and event shape {tuple(fn.event_shape)}"
    )


def _refuse_unless_untouched(first: Trace, again: Trace, structure, varied: str, depends: str, reads: str):
    """
    Every sample site outside ``structure`` exists in both traces with the same log density: the second trace
    changed only ``varied``, so a site that moved reads the structure other than as the model's latents may.
    """
    for name, site in first.nodes.items():
        if site["type"] != "sample" or name in structure:
            continue
        other = again.nodes.get(name)
        if other is None or other["type"] != "sample":
            _refuse(name, f"a site that exists only for some {varied}", "a model of fixed structure")
        if not _close(site["fn"].log_prob(site["value"]), other["fn"].log_prob(other["value"])):
            _refuse(name, f"a site that depends on {depends}", reads)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to rounding (a relative tolerance of the dtype's), broadcasting; False where shapes do not broadcast."""
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return False
    a, b = a.expand(shape), b.expand(shape)
    rtol = 1e-8 if a.dtype == torch.float64 else 1e-4
    scale = torch.maximum(a.abs().max(), b.abs().max()).clamp(min=1)
    return bool(((a - b).abs() <= rtol * scale).all())


def _data_frames(site):
    return [frame for frame in site["cond_indep_stack"] if frame.vectorized]


def _trace(model, args, kwargs, data=None) -> Trace:
    """The model's trace at top level, without consuming random numbers; ``data`` conditions sites."""
    with isolated(), warnings.catch_warnings():
        # torch's Wishart.rsample reports every draw as singular (see pyro_sin.distributions.Wishart)
        warnings.filterwarnings("ignore", message="Singular sample detected")
        fn = poutine.condition(model, data=data) if data else model
        trace = poutine.trace(fn).get_trace(*args, **kwargs)
    return prune_subsample_sites(trace)


def recognize(model, *args, **kwargs) -> Recognition:
    """
    The family of the structured prior in ``model``, a Pyro program written with plain
    ``pyro.sample`` statements, and that prior built with the model's hyperparameters.

    :param callable model: the model.
    :param args: the model's arguments (e.g. a minibatch and its indices).
    :raises NotRecognizedError: naming the site the model differs from every family at.
    :returns: a :class:`Recognition`.
    """
    trace = _trace(model, args, kwargs)
    _refuse_summed_gaussian_chains(trace)
    latent = dict(trace.iter_stochastic_nodes())
    discrete = [name for name, site in latent.items() if site["fn"].support.is_discrete]
    mixtures = [name for name, site in latent.items() if isinstance(_base(site["fn"]), dist.MixtureSameFamily)]
    if mixtures and not discrete:
        return _MarginalMixtureRecognizer(model, args, kwargs, trace, mixtures[0]).recognize()
    if not discrete:
        chain = [name for name, site in latent.items() if "_markov_scope" in site["infer"] and _data_frames(site)]
        if chain:
            return _LDSRecognizer(model, args, kwargs, trace, chain).recognize()
        _refuse_unmarked_chain(trace, latent)
        found = ", ".join(f"'{name}' ({type(_base(site['fn'])).__name__})" for name, site in latent.items())
        _refuse(
            None,
            f"no discrete latent site (latent sites: {found or 'none'})",
            "a Gaussian mixture: Categorical assignments inside a pyro.plate over data points; or a latent LDS: "
            "a MultivariateNormal chain under pyro.markov",
        )
    chain = [name for name in discrete if "_markov_scope" in latent[name]["infer"]]  # set by pyro.markov
    if chain:
        outside_chain = [name for name in discrete if name not in chain]
        if outside_chain:
            _refuse(
                outside_chain[0],
                f"a discrete latent site outside the pyro.markov chain of '{chain[0]}' "
                f"({_describe(latent[outside_chain[0]])})",
                "a latent HMM, whose only discrete latents are the chain's states",
            )
        return _HMMRecognizer(model, args, kwargs, trace, chain).recognize()
    if len(discrete) > 1:
        _refuse(
            discrete[1],
            f"a second discrete latent site besides '{discrete[0]}', outside any pyro.markov context "
            f"({_describe(latent[discrete[1]])})",
            "a Gaussian mixture, with one Categorical assignment site, or a latent HMM, whose chain of "
            "Categorical states is written under pyro.markov",
        )
    return _MixtureRecognizer(model, args, kwargs, trace, discrete[0]).recognize()


def _refuse_unmarked_chain(trace: Trace, latent):
    """A second continuous latent in a plate of observations, no pyro.markov around them: a chain not marked as one."""
    observed = {frame for site in trace.nodes.values() if site.get("is_observed") for frame in _data_frames(site)}
    local = [name for name, site in latent.items() if observed & set(_data_frames(site))]
    if len(local) > 1:
        _refuse(
            local[1],
            f"a second continuous latent site besides '{local[0]}' in the plate of the observations, outside any "
            f"pyro.markov context ({_describe(latent[local[1]])})",
            "a latent LDS, whose chain of MultivariateNormal states is written under pyro.markov",
        )


class _MixtureRecognizer:
    """Recognises a latent Gaussian mixture with a Dirichlet / Normal-Wishart prior around the assignment site."""

    def __init__(self, model, args, kwargs, trace, assignment):
        self.model, self.args, self.kwargs, self.trace = model, args, kwargs, trace
        self.sites = {"assignment": assignment}
        self.marginalised = ()

    def site(self, role, trace=None):
        return (trace or self.trace).nodes[self.sites[role]]

    def recognize(self) -> Recognition:
        self._assignment()
        self._weights(_base(self.site("assignment")["fn"]).probs, self.sites["assignment"])
        self._latent()
        return self._finish()

    def _finish(self) -> Recognition:
        self._components()
        prior = self._prior()
        self._check_dependence()
        _check_reproduces(prior, self.trace, self.frame, self.marginalised)
        return Recognition("gmm", prior, dict(self.sites), self.frame.name, self.trace, self.marginalised)

    # ----- the assignments and the weights ----------------------------------------------

    def _assignment(self):
        name, site = self.sites["assignment"], self.site("assignment")
        base = _base(site["fn"])
        if not isinstance(base, torch.distributions.Categorical):
            _refuse(name, _describe(site), "Categorical assignments of a Gaussian mixture")
        frames = _data_frames(site)
        if len(frames) != 1:
            _refuse(
                name,
                f"a Categorical inside the plates {[f.name for f in frames]}",
                "the assignments inside exactly one pyro.plate over data points",
            )
        self.frame = frames[0]
        self.K = base.probs.shape[-1]

    def _global_candidates(self, trace=None):
        """Sample sites and parameters outside the data plate: what the mixture's parameters can be."""
        for name, site in (trace or self.trace).nodes.items():
            if site["type"] == "param" or (
                site["type"] == "sample"
                and not site["is_observed"]
                and self.frame not in site["cond_indep_stack"]
                and name != self.sites.get("assignment")
            ):
                yield name, site

    def _weights(self, probs, name, role="weights", what="mixture weights", written="Categorical(weights)"):
        """
        The Dirichlet site whose value is ``probs``, the probabilities of the Categorical at site
        ``name``; it becomes the site of ``role``, its concentration :attr:`concentration`.
        """
        for candidate, site in self._global_candidates():
            value = site["value"]
            if value.shape[-1:] != (self.K,) or not value.is_floating_point():
                continue
            # a weight vector written as probabilities or logits, normalised or not
            readings = [value]
            if (value > 0).all():
                readings.append(value / value.sum(-1, keepdim=True))
            readings.append(torch.softmax(value, -1))
            if any(_close(probs, reading) for reading in readings):
                break
        else:
            _refuse(name, "probabilities that are no sample site's value", f"{written} with Dirichlet {what}")
        self.sites[role] = candidate
        if site["type"] == "param":
            _refuse(candidate, f"{what} fixed by pyro.param", f"Dirichlet {what} sampled by pyro.sample")
        base = _base(site["fn"])
        if not isinstance(base, torch.distributions.Dirichlet):
            _refuse(candidate, f"{_describe(site)} as the prior of the {what}", "a Dirichlet (conjugate)")
        if not _close(probs, value):
            _refuse(name, f"probabilities that are a transform of the Dirichlet site '{candidate}'", written)
        if site["cond_indep_stack"] or site["fn"].batch_shape != ():
            _refuse(candidate, _describe(site), f"one Dirichlet over {self.K} {what} outside every plate")
        self.concentration = base.concentration

    # ----- the latent Gaussian and its component parameters -------------------------------

    def _latent(self):
        """The continuous latent in the data plate whose location is a component mean indexed by the assignment."""
        z_name = self.sites["assignment"]
        z = self.site("assignment")["value"]
        candidates = [
            (name, site)
            for name, site in self.trace.iter_stochastic_nodes()
            if self.frame in site["cond_indep_stack"] and not site["fn"].support.is_discrete
        ]
        if not candidates:
            _refuse(z_name, "no continuous latent site in its plate", "a MultivariateNormal latent indexed by it")
        found = []
        for name, site in candidates:
            base = _base(site["fn"])
            if not isinstance(base, torch.distributions.MultivariateNormal):
                found.append((name, f"{_describe(site)}"))
                continue
            if _data_frames(site) != [self.frame]:
                found.append((name, f"a MultivariateNormal inside the plates {[f.name for f in _data_frames(site)]}"))
                continue
            locs = self._indexed(base.loc, z, 1)
            if locs is None:
                found.append((name, f"a location that is not a component mean indexed by '{z_name}'"))
                continue
            self.sites["locs"], self.latent = locs, name
            precisions = self._indexed(base.precision_matrix, z, 2)
            if precisions is None:
                covariance = self._indexed(base.covariance_matrix, z, 2)
                others = ", ".join(
                    f"'{other}' ({type(_base(site['fn'])).__name__})"
                    for other, site in self._global_candidates()
                    if site["type"] == "sample" and other not in (locs, self.sites["weights"])
                )
                what = (
                    f"a covariance (not a precision) that is the component parameter '{covariance}' "
                    f"indexed by '{z_name}'"
                    if covariance is not None
                    else f"a precision that is not a component precision indexed by '{z_name}' (the other global "
                    f"sites: {others or 'none'})"
                )
                _refuse(
                    name,
                    what,
                    f"MultivariateNormal({locs}[{z_name}], precision_matrix=precisions[{z_name}]), "
                    "precisions ~ Wishart",
                )
            self.sites["precisions"] = precisions
            return
        name, what = found[0]
        _refuse(
            name,
            what,
            f"a MultivariateNormal latent in the plate '{self.frame.name}' with location locs[{z_name}] and "
            f"precision precisions[{z_name}] (Vindex or plain indexing)",
        )

    def _indexed(self, parameter, z, event_dim, trace=None) -> Optional[str]:
        """The global site or parameter whose value indexed by ``z`` is ``parameter``, or None."""
        for name, site in self._global_candidates(trace):
            value = site["value"]
            if not torch.is_tensor(value) or value.dim() < 1 + event_dim or value.shape[-1 - event_dim] != self.K:
                continue
            if value.shape[value.dim() - event_dim :] != parameter.shape[parameter.dim() - event_dim :]:
                continue
            if value.dim() == 1 + event_dim and _close(parameter, take_component(value, z, event_dim)):
                return name
        return None

    def _components(self):
        locs_name, prec_name = self.sites["locs"], self.sites["precisions"]
        locs, prec = self.trace.nodes[locs_name], self.trace.nodes[prec_name]
        fixed = [name for name, site in ((locs_name, locs), (prec_name, prec)) if site["type"] == "param"]
        if fixed:
            _refuse(
                fixed[0],
                "component parameters fixed by pyro.param",
                "component means and precisions sampled from a Normal-Wishart prior (fixed components are not "
                "recognised yet)",
            )
        K, D = self.K, locs["value"].shape[-1]
        self.D = D
        for name, site in ((prec_name, prec), (locs_name, locs)):
            extra = [f.name for f in _data_frames(site) if f.size != K]
            if extra:
                _refuse(
                    name, f"component parameters inside the plates {extra}", f"at most one plate, of the {K} components"
                )
        base = _base(prec["fn"])
        if not isinstance(base, torch.distributions.Wishart):
            _refuse(
                prec_name, f"{_describe(prec)} as the prior of the component precisions", "a Wishart (Normal-Wishart)"
            )
        self.df = base.df.expand((K,))
        self.scale_inv = base.precision_matrix.expand((K, D, D))
        base = _base(locs["fn"])
        if not isinstance(base, torch.distributions.MultivariateNormal):
            _refuse(locs_name, f"{_describe(locs)} as the prior of the component means", "a MultivariateNormal")
        self.loc = base.loc.expand((K, D))
        self.kappa = self._kappa(self.trace)

    def _kappa(self, trace) -> torch.Tensor:
        """``κ₀`` of ``μ_k | Λ_k ~ N(m₀, (κ₀Λ_k)⁻¹)`` (least squares), refused unless the precision is ``κ₀Λ_k``."""
        name = self.sites["locs"]
        locs_precision = _base(trace.nodes[name]["fn"]).precision_matrix
        precision = trace.nodes[self.sites["precisions"]]["value"]
        kappa = (locs_precision * precision).sum((-1, -2)) / precision.pow(2).sum((-1, -2))
        if not _close(locs_precision, kappa[..., None, None] * precision) or not (kappa > 0).all():
            _refuse(
                name,
                "a prior whose precision is not a positive multiple of the precision site "
                f"'{self.sites['precisions']}'",
                "μ_k | Λ_k ~ MultivariateNormal(m₀, precision_matrix=κ₀ Λ_k) (a Normal-Wishart prior)",
            )
        return kappa.expand((self.K,))

    def _prior(self) -> GaussianMixture:
        like = self.site("locs")["value"]
        hyper = dict(
            concentration=self.concentration, loc=self.loc, kappa=self.kappa, scale_inv=self.scale_inv, df=self.df
        )
        hyper = {key: value.detach() for key, value in hyper.items()}
        prior = GaussianMixture(self.K, self.D, self.latent, **hyper).to(dtype=like.dtype, device=like.device)
        with torch.no_grad():  # exactly the model's values, not their round trip through the default dtype
            for buffer, key in (
                ("prior_concentration", "concentration"),
                ("prior_loc", "loc"),
                ("prior_kappa", "kappa"),
                ("prior_scale_inv", "scale_inv"),
                ("prior_df", "df"),
            ):
                getattr(prior, buffer).copy_(hyper[key])
        return prior.rename_sites(**{role: self.sites[role] for role in prior.site_roles if role in self.sites})

    # ----- how values flow ------------------------------------------------------------------

    def _check_dependence(self):
        """
        The model again with other assignments, weights and components, and every other latent
        at its first value: the latent must follow the new components of the new assignments,
        and no other site may read the mixture but through the latent.
        """
        roles = {role: self.site(role)["value"] for role in ("weights", "precisions", "locs")}
        roles["assignment"] = self.site("assignment")["value"] if "assignment" in self.sites else torch.zeros(())
        K = self.K
        offsets = torch.arange(1, K + 1, dtype=roles["locs"].dtype, device=roles["locs"].device)[:, None]
        changed = {
            self.sites["weights"]: roles["weights"].flip(-1),
            self.sites.get("assignment"): (roles["assignment"] + 1) % K,
            self.sites["precisions"]: 2 * roles["precisions"],
            self.sites["locs"]: roles["locs"] + offsets,
        }
        data = {name: site["value"] for name, site in self.trace.iter_stochastic_nodes() if name not in changed}
        if "assignment" not in self.sites:  # summed out by the model
            del changed[None]
        again = _trace(self.model, self.args, self.kwargs, {**data, **changed})
        self._check_follows(again, changed)
        if not _close(self._kappa(again), self.kappa):
            _refuse(self.sites["locs"], "a prior whose κ₀ changes with the precisions", "a Normal-Wishart prior")
        x_name = self.latent
        _refuse_unless_untouched(
            self.trace,
            again,
            set(self.sites.values()) | {x_name},
            "values of the mixture",
            f"the mixture's weights, components or assignments other than through the latent '{x_name}'",
            f"sites outside the mixture that read it only through '{x_name}'",
        )

    def _check_follows(self, again, changed):
        """In the second trace, the assignments follow the new weights and the latent its new component."""
        z_name, x_name = self.sites["assignment"], self.latent
        z = changed[z_name]
        if not _close(_base(again.nodes[z_name]["fn"]).probs, changed[self.sites["weights"]]):
            _refuse(
                z_name,
                f"probabilities that do not follow the weights '{self.sites['weights']}'",
                "Categorical(weights)",
            )
        x_fn = _base(again.nodes[x_name]["fn"])
        expected = "MultivariateNormal(locs[z], precision_matrix=precisions[z])"
        if not _close(x_fn.loc, take_component(changed[self.sites["locs"]], z, 1)):
            _refuse(x_name, f"a location that does not follow the component means and '{z_name}'", expected)
        if not _close(x_fn.precision_matrix, take_component(changed[self.sites["precisions"]], z, 2)):
            _refuse(x_name, f"a precision that does not follow the component precisions and '{z_name}'", expected)


def _check_reproduces(prior: StructuredPrior, trace: Trace, frame, marginalised=()):
    """
    The family's own sample statements, conditioned on the model's traced values, must give
    the model's sites: the same names, shapes and log density (never a silently wrong structure).
    A latent whose discrete parents the model sums out (``marginalised``) must have the
    family's marginal density (``latent_log_prob``).
    """
    names = [name for name in prior.global_sites + prior.local_sites if name not in marginalised]
    data = {name: trace.nodes[name]["value"] for name in names}
    sampled = {}

    def family():
        sampled["params"] = prior.sample_params()
        if not marginalised:
            with pyro.plate(frame.name, frame.size, dim=frame.dim):
                prior.sample_latent(sampled["params"])

    ours = _trace(family, (), {}, data)
    what = type(prior).__name__
    for name in names:
        model_site, family_site = trace.nodes[name], ours.nodes.get(name)
        if family_site is None and name == prior.name:  # summed out: the family's marginal density
            family_lp = prior.latent_log_prob(sampled["params"], model_site["value"]).sum()
        elif family_site is None:
            _refuse(name, f"a site the recognised {what} does not emit", f"the sites {names}")
        elif model_site["value"].shape != family_site["value"].shape:
            _refuse(
                name,
                f"a value of shape {tuple(model_site['value'].shape)}",
                f"shape {tuple(family_site['value'].shape)} as the recognised {what} emits it",
            )
        else:
            family_lp = family_site["fn"].log_prob(family_site["value"]).sum()
        model_lp = model_site["fn"].log_prob(model_site["value"]).sum()
        if not _close(model_lp, family_lp):
            _refuse(
                name,
                f"log density {float(model_lp):.9g} on the traced values",
                f"{float(family_lp):.9g}, as the recognised {what} gives it",
            )


class _MarginalMixtureRecognizer(_MixtureRecognizer):
    """
    Recognises the same Gaussian mixture written as one ``MixtureSameFamily`` site, its
    assignments summed out: ``x ~ MixtureSameFamily(Categorical(weights),
    MultivariateNormal(locs, precision_matrix=precisions))`` inside the data plate.
    """

    def __init__(self, model, args, kwargs, trace, latent):
        self.model, self.args, self.kwargs, self.trace = model, args, kwargs, trace
        self.sites, self.latent = {}, latent

    def recognize(self) -> Recognition:
        site = self.trace.nodes[self.latent]
        frames = _data_frames(site)
        if len(frames) != 1:
            _refuse(
                self.latent,
                f"a MixtureSameFamily inside the plates {[f.name for f in frames]}",
                "the mixture's latent inside exactly one pyro.plate over data points",
            )
        self.frame = frames[0]
        mixture = _base(site["fn"])
        self.K = mixture.mixture_distribution.probs.shape[-1]
        self._weights(mixture.mixture_distribution.probs, self.latent)
        components = _base(mixture.component_distribution)
        expected = "MixtureSameFamily(Categorical(weights), MultivariateNormal(locs, precision_matrix=precisions))"
        if not isinstance(components, torch.distributions.MultivariateNormal):
            _refuse(self.latent, f"{type(components).__name__} components", expected)
        for role, parameter, event_dim in (("locs", components.loc, 1), ("precisions", components.precision_matrix, 2)):
            self.sites[role] = self._component(parameter, event_dim)
            if self.sites[role] is None:
                _refuse(self.latent, f"component {role} that are no sample site's value", expected)
        assignment = f"{self.latent}_assignment"  # the family's site for the summed-out assignments
        if assignment in self.trace.nodes:
            _refuse(assignment, "a site of the name the family gives the assignments", "no such site")
        self.marginalised = (assignment,)
        return self._finish()

    def _component(self, parameter, event_dim) -> Optional[str]:
        """The global site or parameter whose value, of shape ``(K,) + event``, is ``parameter``."""
        for name, site in self._global_candidates():
            value = site["value"]
            if torch.is_tensor(value) and value.dim() == 1 + event_dim and value.shape[0] == self.K:
                if _close(parameter, value):
                    return name
        return None

    def _check_follows(self, again, changed):
        mixture = _base(again.nodes[self.latent]["fn"])
        components = _base(mixture.component_distribution)
        for what, found, role in (
            ("weights", mixture.mixture_distribution.probs, "weights"),
            ("component means", components.loc, "locs"),
            ("component precisions", components.precision_matrix, "precisions"),
        ):
            if not _close(found, changed[self.sites[role]]):
                _refuse(self.latent, f"{what} that do not follow the site '{self.sites[role]}'", "the mixture's own")


class _HMMRecognizer(_MixtureRecognizer):
    """
    Recognises a latent HMM (:class:`~pyro_sin.pgm.LatentHMM`): the ``T`` Categorical sites that
    ``pyro.markov`` tags in the data plate, in trace order, the first with Dirichlet initial
    probabilities, each next one with the row of a Dirichlet ``(K, K)`` transition site indexed by
    the previous state, and a MultivariateNormal latent per step with the Normal-Wishart component
    indexed by the step's state.
    """

    def __init__(self, model, args, kwargs, trace, chain):
        self.model, self.args, self.kwargs, self.trace = model, args, kwargs, trace
        self.chain, self.sites, self.marginalised = tuple(chain), {}, ()

    def recognize(self) -> Recognition:
        self._states()
        self._weights(
            _base(self.trace.nodes[self.chain[0]]["fn"]).probs,
            self.chain[0],
            role="init_probs",
            what="initial probabilities",
            written="Categorical(init)",
        )
        self.init_concentration = self.concentration
        self._transitions()
        self._latents()
        self._components()
        prior = self._prior()
        self._check_dependence()
        _check_reproduces(prior, self.trace, self.frame, marginalised=prior.local_sites)  # the global sites
        _check_path_reproduces(prior, self.trace, self.chain, self.latents)
        return Recognition("hmm", prior, dict(self.sites), self.frame.name, self.trace, (), (self.chain, self.latents))

    def _states(self):
        frames = None
        for name in self.chain:
            site = self.trace.nodes[name]
            if site["mask"] is not None or isinstance(site["fn"], dist.MaskedDistribution):
                _refuse(
                    name,
                    "a masked state (sequences of different lengths)",
                    "sequences of equal length in a batch plate, without masks (padded sequences are not "
                    "recognised yet: write them with pyro_sin.pgm.LatentHMM's sample statements and lengths)",
                )
            if not isinstance(_base(site["fn"]), torch.distributions.Categorical):
                _refuse(name, f"{_describe(site)} in the pyro.markov chain", "Categorical states")
            found = _data_frames(site)
            if len(found) != 1 or (frames is not None and found != frames):
                _refuse(
                    name,
                    f"a state inside the plates {[f.name for f in found]}",
                    "every state of the chain inside the same, single pyro.plate over sequences",
                )
            frames = found
        self.frame = frames[0]
        self.K = _base(self.trace.nodes[self.chain[0]]["fn"]).probs.shape[-1]
        if len(self.chain) < 2:
            _refuse(self.chain[0], "a chain of one step", "a latent HMM of at least two steps")

    def _transitions(self):
        """The Dirichlet ``(K, K)`` site whose rows, indexed by the previous state, give each state's probabilities."""
        first, second = self.chain[:2]
        previous = self.trace.nodes[first]["value"]
        probs = _base(self.trace.nodes[second]["fn"]).probs
        expected = f"Categorical(transitions[{first}]) (Vindex or plain indexing), the rows of transitions ~ Dirichlet"
        for candidate, site in self._global_candidates():
            value = site["value"]
            if not (torch.is_tensor(value) and value.shape == (self.K, self.K) and value.is_floating_point()):
                continue
            # rows written as probabilities or logits, normalised or not
            readings = [value, torch.softmax(value, -1)] + (
                [value / value.sum(-1, keepdim=True)] if (value > 0).all() else []
            )
            if any(_close(probs, take_component(reading, previous, 1)) for reading in readings):
                break
        else:
            _refuse(
                second,
                f"probabilities that are no (K, K) site's rows indexed by the previous state '{first}'",
                expected,
            )
        self.sites["transition_probs"] = candidate
        if site["type"] == "param":
            _refuse(candidate, "transition probabilities fixed by pyro.param", "Dirichlet rows sampled by pyro.sample")
        base = _base(site["fn"])
        if not isinstance(base, torch.distributions.Dirichlet):
            _refuse(candidate, f"{_describe(site)} as the prior of the transition rows", "a Dirichlet per row")
        extra = [f.name for f in _data_frames(site) if f.size != self.K]
        if extra:
            _refuse(
                candidate, f"transition rows inside the plates {extra}", f"at most one plate, of the {self.K} states"
            )
        if not _close(probs, take_component(value, previous, 1)):
            _refuse(second, f"probabilities that are a transform of the Dirichlet site '{candidate}'", expected)
        self.transition_concentration = base.concentration.expand((self.K, self.K))
        for previous_name, name in zip(self.chain[1:], self.chain[2:]):
            previous = self.trace.nodes[previous_name]["value"]
            if not _close(_base(self.trace.nodes[name]["fn"]).probs, take_component(value, previous, 1)):
                _refuse(
                    name,
                    f"probabilities that are not the rows of '{candidate}' indexed by the previous state "
                    f"'{previous_name}' (a chain whose transitions change over time)",
                    expected,
                )

    def _latents(self):
        """One MultivariateNormal latent per step, in trace order, whose component is indexed by the step's state."""
        latents = [
            name
            for name, site in self.trace.iter_stochastic_nodes()
            if self.frame in site["cond_indep_stack"] and not site["fn"].support.is_discrete
        ]
        if len(latents) != len(self.chain):
            _refuse(
                self.chain[0],
                f"{len(latents)} continuous latent site(s) in the plate '{self.frame.name}' ({latents}) for a chain "
                f"of {len(self.chain)} steps",
                "one MultivariateNormal latent per step",
            )
        self.latents, self.latent = tuple(latents), latents[0]
        for z_name, name in zip(self.chain, latents):
            site, z = self.trace.nodes[name], self.trace.nodes[z_name]["value"]
            base = _base(site["fn"])
            expected = (
                f"MultivariateNormal(locs[{z_name}], precision_matrix=precisions[{z_name}]) (Vindex or plain "
                "indexing), precisions ~ Wishart"
            )
            if not isinstance(base, torch.distributions.MultivariateNormal) or site["mask"] is not None:
                _refuse(name, _describe(site) if site["mask"] is None else "a masked latent", expected)
            if _data_frames(site) != [self.frame]:
                _refuse(name, f"a latent inside the plates {[f.name for f in _data_frames(site)]}", expected)
            components = {}
            for role, parameter, event_dim in (("locs", base.loc, 1), ("precisions", base.precision_matrix, 2)):
                components[role] = self._indexed(parameter, z, event_dim)
                if components[role] is None:
                    what = "mean" if role == "locs" else "precision"
                    _refuse(name, f"a {what} that is not a component {what} indexed by the state '{z_name}'", expected)
            if name == self.latent:
                self.sites.update(components)
            elif components != {role: self.sites[role] for role in components}:
                _refuse(name, f"the components {components}", f"those of the first step, {self.sites}")

    def _prior(self) -> "LatentHMM":
        from .pgm.hmm import LatentHMM  # here: the sequence families import the guide, which imports this module

        like = self.trace.nodes[self.sites["locs"]]["value"]
        hyper = dict(
            init_concentration=self.init_concentration,
            transition_concentration=self.transition_concentration,
            loc=self.loc,
            kappa=self.kappa,
            scale_inv=self.scale_inv,
            df=self.df,
        )
        hyper = {key: value.detach() for key, value in hyper.items()}
        prior = LatentHMM(self.K, self.D, self.latent, **hyper).to(dtype=like.dtype, device=like.device)
        with torch.no_grad():  # exactly the model's values, not their round trip through the default dtype
            for key, value in hyper.items():
                getattr(prior, f"prior_{key}").copy_(value)
        roles = ("init_probs", "transition_probs", "precisions", "locs")
        return prior.rename_sites(**{role: self.sites[role] for role in roles}).unroll_sites(self.chain, self.latents)

    def _check_dependence(self):
        """
        The model again with other initial probabilities, transitions, states and components, and
        every other latent at its first value: each state must follow the new probabilities of the
        new previous state, each latent the new component of its new state, and no other site may
        read the chain but through the latents.
        """
        K, value = self.K, lambda name: self.trace.nodes[name]["value"]
        init, transitions = self.sites["init_probs"], self.sites["transition_probs"]
        locs, precisions = self.sites["locs"], self.sites["precisions"]
        offsets = torch.arange(1, K + 1, dtype=value(locs).dtype, device=value(locs).device)[:, None]
        changed = {
            init: value(init).flip(-1),
            transitions: value(transitions).flip(-1),
            precisions: 2 * value(precisions),
            locs: value(locs) + offsets,
            **{name: (value(name) + 1) % K for name in self.chain},
        }
        data = {name: site["value"] for name, site in self.trace.iter_stochastic_nodes() if name not in changed}
        again = _trace(self.model, self.args, self.kwargs, {**data, **changed})
        for t, (z_name, x_name) in enumerate(zip(self.chain, self.latents)):
            probs = _base(again.nodes[z_name]["fn"]).probs
            if t == 0 and not _close(probs, changed[init]):
                _refuse(
                    z_name, f"probabilities that do not follow the initial probabilities '{init}'", "Categorical(init)"
                )
            previous = self.chain[t - 1]
            if t > 0 and not _close(probs, take_component(changed[transitions], changed[previous], 1)):
                _refuse(
                    z_name,
                    f"probabilities that do not follow the rows of '{transitions}' indexed by the state '{previous}'",
                    f"Categorical(transitions[{previous}])",
                )
            x_fn, z = _base(again.nodes[x_name]["fn"]), changed[z_name]
            expected = f"MultivariateNormal(locs[{z_name}], precision_matrix=precisions[{z_name}])"
            if not _close(x_fn.loc, take_component(changed[locs], z, 1)):
                _refuse(x_name, f"a location that does not follow the component means and '{z_name}'", expected)
            if not _close(x_fn.precision_matrix, take_component(changed[precisions], z, 2)):
                _refuse(x_name, f"a precision that does not follow the component precisions and '{z_name}'", expected)
        if not _close(self._kappa(again), self.kappa):
            _refuse(locs, "a prior whose κ₀ changes with the precisions", "a Normal-Wishart prior")
        _refuse_unless_untouched(
            self.trace,
            again,
            set(self.sites.values()) | set(self.chain) | set(self.latents),
            "values of the chain",
            "the chain's parameters or states other than through its latents",
            f"sites outside the chain that read it only through {list(self.latents)}",
        )


def _check_path_reproduces(prior: "LatentHMM", trace: Trace, chain, latents):
    """
    The model's per-step log densities, summed over the steps of each sequence, must be the
    family's log density of the whole path, ``log p(z_{1:T} | π, P) + log p(x_{1:T} | z, μ, Λ)``,
    on the traced values (never a silently wrong structure).
    """
    params = prior.params_type(
        *(trace.nodes[name]["value"] for name in (prior.init_probs_site, prior.transition_probs_site)),
        trace.nodes[prior.regime_sites[1]]["value"],
        trace.nodes[prior.regime_sites[0]]["value"],
    )
    states = torch.stack([trace.nodes[name]["value"] for name in chain], -1)
    x = torch.stack([trace.nodes[name]["value"] for name in latents], -2)
    family_lp = prior.states_prior(params, len(chain)).log_prob(states) + prior.emission(params, states).log_prob(x)
    model_lp = sum(trace.nodes[name]["fn"].log_prob(trace.nodes[name]["value"]) for name in chain + latents)
    _refuse_unless_path_density(model_lp, family_lp, chain[0], "LatentHMM")


def _refuse_unless_path_density(model_lp, family_lp, site: str, family: str):
    """Refuses, at ``site``, per-step log densities ``model_lp`` whose sums are not the family's path densities."""
    model_lp, family_lp = model_lp.detach(), family_lp.detach()
    if not _close(model_lp, family_lp):
        worst = int((model_lp - family_lp).abs().argmax()) if model_lp.dim() else 0
        _refuse(
            site,
            f"per-step log densities that sum to {float(model_lp.reshape(-1)[worst]):.9g} on sequence {worst}",
            f"{float(family_lp.reshape(-1)[worst]):.9g}, the recognised {family}'s log density of the whole path",
        )


#: Pyro's distributions of whole Gaussian chains, whose hidden states are summed out inside one site
_SUMMED_GAUSSIAN_CHAINS = (
    dist.GaussianHMM,
    dist.LinearHMM,
    dist.GammaGaussianHMM,
    dist.GaussianMRF,
    dist.IndependentHMM,
)

_LDS_FORM = (
    "the latent LDS written one step at a time under pyro.markov: x_0 ~ MultivariateNormal(m0, precision_matrix=P0), "
    "x_t ~ MultivariateNormal(A x_{t-1} + b, precision_matrix=Λ), with Λ and [A b] drawn from "
    "pyro_sin.distributions.MatrixNormalWishart (precision_dist(), then loc_dist(Λ))"
)


def _refuse_summed_gaussian_chains(trace: Trace):
    """Pyro's ``GaussianHMM`` family sums the latent chain out within one site: there is no latent to guide."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and isinstance(_base(site["fn"]), _SUMMED_GAUSSIAN_CHAINS):
            _refuse(
                name,
                f"a {type(_base(site['fn'])).__name__} (Pyro's Gaussian chain whose hidden states are summed out "
                "within one site, so that no latent state is left to guide)",
                _LDS_FORM,
            )


class _LDSRecognizer:
    """
    Recognises a latent linear dynamical system (:class:`~pyro_sin.pgm.LinearDynamicalSystem`):
    the ``T`` continuous sites that ``pyro.markov`` tags in the data plate, in trace order, the
    first ``x_0 ~ N(m₀, P₀⁻¹)`` with constant parameters, each next one ``x_t ~ N(A x_{t-1} + b, Λ⁻¹)``
    with ``Λ ~ Wishart`` and ``[A b] | Λ ~ MatrixNormal(M₀, Λ, K₀)`` (the package's Matrix-Normal-Wishart).

    The location must be the same affine map of the previous state at every traced pair of
    steps of every sequence, and follow other dynamics substituted in a second trace; the
    previous states are not substituted there, so that the same trace also shows that no site
    outside the chain reads the dynamics.
    """

    def __init__(self, model, args, kwargs, trace, chain):
        self.model, self.args, self.kwargs, self.trace = model, args, kwargs, trace
        self.chain, self.sites = tuple(chain), {}

    def value(self, name, trace=None):
        return (trace or self.trace).nodes[name]["value"]

    def step(self, name, trace=None):
        """The MultivariateNormal of the chain's site ``name``."""
        return _base((trace or self.trace).nodes[name]["fn"])

    def recognize(self) -> Recognition:
        self._steps()
        self._initial_state()
        self._dynamics()
        prior = self._prior()
        self._check_dependence()
        _check_reproduces(prior, self.trace, self.frame, marginalised=prior.local_sites)  # the global sites
        self._check_path_reproduces(prior)
        return Recognition("lds", prior, dict(self.sites), self.frame.name, self.trace, (), (self.chain,))

    def _steps(self):
        frames = None
        for name in self.chain:
            site = self.trace.nodes[name]
            if site["mask"] is not None or isinstance(site["fn"], dist.MaskedDistribution):
                _refuse(
                    name,
                    "a masked state (sequences of different lengths)",
                    "sequences of equal length in a batch plate, without masks (padded sequences are not "
                    "recognised yet: write them with pyro_sin.pgm.LinearDynamicalSystem's sample statements and "
                    "lengths)",
                )
            base = _base(site["fn"])
            if not isinstance(base, torch.distributions.MultivariateNormal):
                diagonal = isinstance(base, torch.distributions.Normal)
                _refuse(
                    name,
                    f"{_describe(site)} in the pyro.markov chain"
                    + (" (independent coordinates: a diagonal noise has no Wishart prior)" if diagonal else ""),
                    "MultivariateNormal states with a full precision matrix Λ: " + _LDS_FORM,
                )
            found = _data_frames(site)
            if len(found) != 1 or (frames is not None and found != frames):
                _refuse(
                    name,
                    f"a state inside the plates {[f.name for f in found]}",
                    "every state of the chain inside the same, single pyro.plate over sequences",
                )
            frames = found
        self.frame = frames[0]
        self.D = self.value(self.chain[0]).shape[-1]
        if len(self.chain) < 2:
            _refuse(self.chain[0], "a chain of one step", "a latent LDS of at least two steps")

    def _initial_state(self):
        """``m₀`` and ``P₀``: the same for every sequence, constants (the dynamics' second trace checks that)."""
        name, D = self.chain[0], self.D
        base = self.step(name)
        self.init_loc = base.loc.reshape(-1, D)[0]
        self.init_precision = base.precision_matrix.reshape(-1, D, D)[0]
        if not (_close(base.loc, self.init_loc) and _close(base.precision_matrix, self.init_precision)):
            _refuse(
                name,
                "an initial state whose mean or precision differs between sequences",
                "x_0 ~ MultivariateNormal(m0, precision_matrix=P0) with m0 and P0 the same for every sequence",
            )

    def _global_candidates(self, shape):
        """The sample sites and parameters outside the data plate whose value has ``shape``."""
        for name, site in self.trace.nodes.items():
            if site["type"] == "param" or (
                site["type"] == "sample" and not site["is_observed"] and self.frame not in site["cond_indep_stack"]
            ):
                value = site["value"]
                if torch.is_tensor(value) and value.shape == shape and value.is_floating_point():
                    yield name, site

    def _affine(self, transition, previous):
        """``A x_{t-1} + b`` for ``transition = [A b]``."""
        D = self.D
        return (transition[..., :D] @ previous[..., None])[..., 0] + transition[..., D]

    def _dynamics(self):
        """The noise precision ``Λ`` and the dynamics ``[A b]`` the second step reads, then every later step."""
        D, (first, second) = self.D, self.chain[:2]
        base, previous = self.step(second), self.value(first)
        expected = f"x_t ~ MultivariateNormal(A {first} + b, precision_matrix=Λ): " + _LDS_FORM
        for role, shape, matches in (
            ("noise_precision", (D, D), lambda value: _close(base.precision_matrix, value)),
            ("transition", (D, D + 1), lambda value: _close(base.loc, self._affine(value, previous))),
        ):
            found = next((name for name, site in self._global_candidates(shape) if matches(site["value"])), None)
            if found is None and role == "noise_precision":
                covariances = self._global_candidates(shape)
                covariance = next((n for n, site in covariances if _close(base.covariance_matrix, site["value"])), None)
                _refuse(
                    second,
                    f"a covariance (not a precision) that is the site '{covariance}'"
                    if covariance is not None
                    else "a precision that is no site's value outside the plate of sequences",
                    expected,
                )
            if found is None:
                without_bias = [
                    name
                    for name, site in self._global_candidates((D, D))
                    if _close(base.loc, (site["value"] @ previous[..., None])[..., 0])
                ]
                _refuse(
                    second,
                    f"a location A {first} with the site '{without_bias[0]}' of shape ({D}, {D}) and no bias"
                    if without_bias
                    else f"a location that is not a linear map A {first} + b of the previous state by any "
                    f"({D}, {D + 1}) site [A b]",
                    expected,
                )
            self.sites[role] = found
            if self.trace.nodes[found]["type"] == "param":
                what = "noise precision" if role == "noise_precision" else "dynamics"
                _refuse(
                    found,
                    f"a {what} fixed by pyro.param",
                    "the dynamics drawn from a Matrix-Normal-Wishart by pyro.sample (fixed dynamics are not "
                    "recognised yet)",
                )
        self._priors()
        precision, transition = self.value(self.sites["noise_precision"]), self.value(self.sites["transition"])
        for previous_name, name in zip(self.chain[1:], self.chain[2:]):
            base = self.step(name)
            if not _close(base.loc, self._affine(transition, self.value(previous_name))):
                _refuse(
                    name,
                    f"a location that is not the map of '{self.sites['transition']}' of the previous state "
                    f"'{previous_name}' (dynamics that change over time, or a location not linear in the state)",
                    f"x_t ~ MultivariateNormal(A {previous_name} + b, precision_matrix=Λ): " + _LDS_FORM,
                )
            if not _close(base.precision_matrix, precision):
                _refuse(
                    name,
                    f"a precision that is not the site '{self.sites['noise_precision']}'",
                    f"the noise precision Λ of every step: {_LDS_FORM}",
                )

    def _priors(self):
        """``Λ ~ W(W₀, ν₀)`` and ``[A b] | Λ ~ MN(M₀, Λ⁻¹, K₀⁻¹)``, outside every plate: their hyperparameters."""
        from .distributions import MatrixNormal

        D = self.D
        precision_name, transition_name = self.sites["noise_precision"], self.sites["transition"]
        for name in (precision_name, transition_name):
            site = self.trace.nodes[name]
            if _data_frames(site) or site["fn"].batch_shape != ():
                _refuse(name, f"{_describe(site)} inside the plates {[f.name for f in _data_frames(site)]}",
                        "the dynamics of all sequences drawn once, outside every plate")
        site = self.trace.nodes[precision_name]
        base = _base(site["fn"])
        if not isinstance(base, torch.distributions.Wishart):
            _refuse(precision_name, f"{_describe(site)} as the prior of the noise precision", "a Wishart: " + _LDS_FORM)
        self.df, self.scale_inv = base.df, base.precision_matrix
        site = self.trace.nodes[transition_name]
        base = _base(site["fn"])
        if not isinstance(base, MatrixNormal):
            _refuse(transition_name, f"{_describe(site)} as the prior of the dynamics", "a MatrixNormal: " + _LDS_FORM)
        if not _close(base.row_precision, self.value(precision_name)):
            _refuse(
                transition_name,
                f"a MatrixNormal whose row precision is not the noise precision '{precision_name}'",
                "[A b] | Λ ~ MatrixNormal(M0, Λ, K0) (a Matrix-Normal-Wishart: conjugate to the dynamics)",
            )
        self.transition_loc, self.col_precision = base.loc.reshape(D, D + 1), base.col_precision.reshape(D + 1, D + 1)

    def _prior(self):
        from .pgm.lds import LinearDynamicalSystem  # here: the sequence families import the guide, which imports us

        like = self.value(self.chain[0])
        hyper = dict(
            init_loc=self.init_loc,
            init_precision=self.init_precision,
            transition_loc=self.transition_loc,
            col_precision=self.col_precision,
            scale_inv=self.scale_inv,
            df=self.df,
        )
        hyper = {key: value.detach() for key, value in hyper.items()}
        prior = LinearDynamicalSystem(self.D, self.chain[0], **hyper).to(dtype=like.dtype, device=like.device)
        with torch.no_grad():  # exactly the model's values, not their round trip through the default dtype
            for buffer, key in (
                ("init_loc", "init_loc"),
                ("init_precision", "init_precision"),
                ("prior_transition_loc", "transition_loc"),
                ("prior_col_precision", "col_precision"),
                ("prior_scale_inv", "scale_inv"),
                ("prior_df", "df"),
            ):
                getattr(prior, buffer).copy_(hyper[key])
        return prior.rename_sites(**self.sites).unroll_sites(self.chain)

    def _check_dependence(self):
        """
        The model again with other dynamics and noise precision, every other latent (the states
        included) at its first value: each step must follow the new ``[A b]`` and ``Λ``, the prior
        of ``[A b]`` the new ``Λ``, the initial state stay as it was, and no site outside the chain
        change.
        """
        precision_name, transition_name = self.sites["noise_precision"], self.sites["transition"]
        precision, transition = self.value(precision_name), self.value(transition_name)
        offsets = torch.arange(1, transition.numel() + 1, dtype=transition.dtype, device=transition.device)
        changed = {
            precision_name: 2 * precision,
            transition_name: transition + offsets.reshape(transition.shape) / transition.numel(),
        }
        data = {name: site["value"] for name, site in self.trace.iter_stochastic_nodes() if name not in changed}
        again = _trace(self.model, self.args, self.kwargs, {**data, **changed})
        first = self.chain[0]
        if not (
            _close(self.step(first, again).loc, self.init_loc)
            and _close(self.step(first, again).precision_matrix, self.init_precision)
        ):
            _refuse(first, "an initial state whose distribution changes with the dynamics", "constant m0 and P0")
        for previous_name, name in zip(self.chain, self.chain[1:]):
            base = self.step(name, again)
            expected = f"x_t ~ MultivariateNormal(A {previous_name} + b, precision_matrix=Λ)"
            if not _close(base.loc, self._affine(changed[transition_name], self.value(previous_name))):
                _refuse(name, f"a location that does not follow the dynamics '{transition_name}'", expected)
            if not _close(base.precision_matrix, changed[precision_name]):
                _refuse(name, f"a precision that does not follow the site '{precision_name}'", expected)
        if not _close(_base(again.nodes[transition_name]["fn"]).row_precision, changed[precision_name]):
            _refuse(
                transition_name,
                f"a row precision that does not follow the noise precision '{precision_name}'",
                "[A b] | Λ ~ MatrixNormal(M0, Λ, K0)",
            )
        _refuse_unless_untouched(
            self.trace,
            again,
            set(self.sites.values()) | set(self.chain),
            "dynamics",
            "the dynamics or the noise precision",
            f"sites outside the chain that read it only through its states {list(self.chain)}",
        )

    def _check_path_reproduces(self, prior):
        """
        The model's per-step log densities, summed over the steps of each sequence, must be the
        family's log density of the whole path, ``log p(x_{1:T} | A, b, Λ)``, on the traced values.
        """
        from .pgm.lds import LDSParams

        params = LDSParams(self.value(self.sites["transition"]), self.value(self.sites["noise_precision"]))
        x = torch.stack([self.value(name) for name in self.chain], -2)
        family_lp = prior.chain(params, len(self.chain)).log_prob(x)
        model_lp = sum(self.trace.nodes[name]["fn"].log_prob(self.value(name)) for name in self.chain)
        _refuse_unless_path_density(model_lp, family_lp, self.chain[0], "LinearDynamicalSystem")
