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
"""

import warnings
from typing import Dict, NamedTuple, Optional, Tuple

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
    latent = dict(trace.iter_stochastic_nodes())
    discrete = [name for name, site in latent.items() if site["fn"].support.is_discrete]
    mixtures = [name for name, site in latent.items() if isinstance(_base(site["fn"]), dist.MixtureSameFamily)]
    if mixtures and not discrete:
        return _MarginalMixtureRecognizer(model, args, kwargs, trace, mixtures[0]).recognize()
    if not discrete:
        found = ", ".join(f"'{name}' ({type(_base(site['fn'])).__name__})" for name, site in latent.items())
        _refuse(
            None,
            f"no discrete latent site (latent sites: {found or 'none'})",
            "a Gaussian mixture: Categorical assignments inside a pyro.plate over data points",
        )
    if len(discrete) > 1:
        chain = [name for name in discrete if "_markov_scope" in latent[name]["infer"]]  # set by pyro.markov
        if chain:
            more = f" and {len(chain) - 3} more" if len(chain) > 3 else ""
            shown = ", ".join(f"'{name}'" for name in chain[:3]) + more
            _refuse(
                chain[0],
                f"a discrete chain under pyro.markov (the sites {shown}): a latent HMM",
                "a Gaussian mixture, with one Categorical assignment site (latent HMMs written with pyro.markov are "
                "not recognised yet: write the chain with pyro_sin.pgm.LatentHMM's sample statements)",
            )
        _refuse(
            discrete[1],
            f"a second discrete latent site besides '{discrete[0]}', outside any pyro.markov context "
            f"({_describe(latent[discrete[1]])})",
            "a Gaussian mixture, with one Categorical assignment site (a discrete chain is written under "
            "pyro.markov, and is not recognised yet)",
        )
    return _MixtureRecognizer(model, args, kwargs, trace, discrete[0]).recognize()


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

    def _weights(self, probs, name):
        """The Dirichlet site whose value is ``probs``, the probabilities of the Categorical at site ``name``."""
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
            _refuse(
                name, "probabilities that are no sample site's value", "Categorical(weights) with Dirichlet weights"
            )
        self.sites["weights"] = candidate
        if site["type"] == "param":
            _refuse(candidate, "mixture weights fixed by pyro.param", "Dirichlet weights sampled by pyro.sample")
        base = _base(site["fn"])
        if not isinstance(base, torch.distributions.Dirichlet):
            _refuse(candidate, f"{_describe(site)} as the prior of the mixture weights", "a Dirichlet (conjugate)")
        if not _close(probs, value):
            _refuse(
                name, f"probabilities that are a transform of the Dirichlet site '{candidate}'", "Categorical(weights)"
            )
        if site["cond_indep_stack"] or site["fn"].batch_shape != ():
            _refuse(candidate, _describe(site), f"one Dirichlet over {self.K} weights outside every plate")
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
        mixture = set(self.sites.values()) | {x_name}
        for name, site in self.trace.nodes.items():
            if site["type"] != "sample" or name in mixture:
                continue
            other = again.nodes.get(name)
            if other is None or other["type"] != "sample":
                _refuse(name, "a site that exists only for some values of the mixture", "a model of fixed structure")
            if not _close(site["fn"].log_prob(site["value"]), other["fn"].log_prob(other["value"])):
                _refuse(
                    name,
                    "a site that depends on the mixture's weights, components or assignments other than through "
                    f"the latent '{x_name}'",
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
