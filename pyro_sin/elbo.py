r"""
:class:`SINELBO`: the SAN bound with closed-form structured terms and
natural-gradient targets for the conjugate global parameters.

Per trace, with ``B`` a minibatch of a data set of size ``N``:

.. math::

    \mathcal L = \tfrac{N}{|B|}\sum_{n\in B}\Big(
        \underbrace{E_{q(x_n)}[\log p(y_n \mid x_n)]}_{\text{Monte Carlo}}
      + \underbrace{E_{q(\theta)}E_{q(x_n)}[\log p(x_n \mid \theta)] + H[q(x_n)]}_{\text{closed form}}\Big)
      - \underbrace{\mathrm{KL}(q(\theta)\,\|\,p(\theta))}_{\text{closed form}}

Only the model's sites outside the PGM (the decoder's likelihood, and any
other site the user adds) are estimated by sampling; the PGM's sites are
replaced by the closed forms its module provides.
"""

import logging
import math
import warnings

import torch

import pyro.poutine as poutine
from pyro.infer import config_enumerate
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_site_shape, get_rng_state, set_rng_state, warn_if_nan

from .distributed import check_same_sizes, world
from .natural import set_natural_gradient
from .training import DivergenceError

_logger = logging.getLogger(__name__)

_ESTIMATORS = ("sample", "enumerate")


def _unconstrained(tensor):
    weak = getattr(tensor, "unconstrained", None)
    return weak() if weak is not None else tensor


class _IntegratedParams:
    """Stands in for ``θ`` in the model while SINELBO integrates it in closed form."""

    def __getattr__(self, name):
        raise RuntimeError(
            "under SINELBO the PGM's parameters θ are integrated in closed form and never "
            "sampled: pass the result of pgm.sample_params() only to pgm.sample_latent()"
        )


class _Scales:
    """The scales (``poutine.scale``, minibatch ``N/|B|``) and data plates around one PGM's statements."""

    def __init__(self):
        self.model_global = self.guide_global = self.model_local = None
        self.model_frames = ()


class _IntegrateOutPGM(Messenger):
    """
    Skips the PGM's own sample statements: SINELBO evaluates their terms in closed
    form, so it neither samples ``θ`` in the guide nor builds ``p(x | θ)`` in the
    model; the model's local latent takes the guide's sample. Records the scales
    that plates and ``poutine.scale`` put on those statements, per PGM.

    :param guide_trace: the guide's trace, when running the model.
    :param dict scales: PGM name -> :class:`_Scales`, filled in.
    """

    def __init__(self, scales, guide_trace=None):
        super().__init__()
        self.scales = scales
        self.guide_trace = guide_trace
        # a model written with plain pyro.sample statements (pyro_sin.recognize) meets its PGM's
        # sites as ordinary sample sites, by the names of the family's: site -> (record, is global)
        self.plain_sites, self.global_values = {}, {}
        for site in guide_trace.nodes.values() if guide_trace is not None else ():
            record = site["infer"].get("sin") if site["type"] == "sample" else None
            if record is not None:
                self.plain_sites.update({name: (record, True) for name in record.pgm.global_sites})
                self.plain_sites.update({name: (record, False) for name in record.pgm.local_sites})

    def _record(self, msg):
        return self.scales.setdefault(msg["args"][0].name, _Scales())

    def _pyro_sample(self, msg):
        if msg["name"] not in self.plain_sites:
            return
        record, is_global = self.plain_sites[msg["name"]]
        scales = self.scales.setdefault(record.pgm.name, _Scales())
        if is_global:  # integrated: the model computes with the posterior means, samples nothing
            scales.model_global = msg["scale"]
            if record.pgm.name not in self.global_values:
                self.global_values[record.pgm.name] = record.pgm.global_values(record.global_posterior)
            msg["value"] = self.global_values[record.pgm.name][msg["name"]]
            msg["done"] = True
        else:  # the local latents take the guide's samples (by replay)
            scales.model_local = msg["scale"]
            scales.model_frames = msg["cond_indep_stack"]

    def _pyro_sin_prior_params(self, msg):
        self._record(msg).model_global = msg["scale"]
        msg["value"] = _IntegratedParams()
        msg["done"] = True

    def _pyro_sin_posterior_params(self, msg):
        self._record(msg).guide_global = msg["scale"]
        msg["value"] = _IntegratedParams()
        msg["done"] = True

    def _pyro_sin_prior_latent(self, msg):
        pgm = msg["args"][0]
        record = self._record(msg)
        record.model_local = msg["scale"]
        record.model_frames = msg["cond_indep_stack"]
        msg["value"] = self.guide_trace.nodes[pgm.name]["value"]
        msg["done"] = True


def _check_model_sites_guided(model_trace, guide_trace):
    """
    Warns, as Pyro's ELBOs do under validation (:func:`pyro.util.check_model_guide_match`), of latent
    sites of the model that neither the guide samples nor a SIN prior covers: their prior would stand
    in for their posterior, and the bound would silently leave them out of training.
    """
    covered = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
    for site in guide_trace.nodes.values():
        record = site["infer"].get("sin") if site["type"] == "sample" else None
        if record is not None:
            covered.update((record.pgm.name, *record.pgm.global_sites, *record.pgm.local_sites))
    unguided = [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in covered
        and site["infer"].get("_enumerate_dim") is None
    ]
    if unguided:
        warnings.warn(
            f"SINELBO: found latent sites in the model but not in the guide: {unguided}. SINGuide covers only "
            "its prior's sites; give the others a guide of their own, e.g. pyro.infer.autoguide.AutoGuideList "
            "holding the SINGuide and an AutoNormal on poutine.block(model, hide=[its sites])",
            RuntimeWarning,
            stacklevel=2,
        )


def _minibatch_sizes(guide_trace):
    """``(|B|, N)``: the data points in the minibatch around the trace's SIN sites, and in the data set."""
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and "sin" in site["infer"]:
            frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != "num_particles_vectorized"]
            return math.prod(f.size for f in frames), math.prod(f.full_size or f.size for f in frames)
    return 0, 0


def _scalar(scale, what):
    if torch.is_tensor(scale):
        if scale.numel() != 1:
            raise NotImplementedError(
                f"SINELBO supports only a scalar scale on the PGM's {what}, got one of shape {tuple(scale.shape)}"
            )
        return scale.reshape(())
    return scale


def _model_plate_nesting(model, guide, args, kwargs) -> int:
    """
    The number of plate dimensions the model and the guide use, from one run of each
    (as Pyro's ELBOs guess it, assuming a static structure), with their sites' shapes
    checked while no plate count is fixed yet.
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    traces = (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace))
    sites = [site for trace in traces for site in trace.nodes.values() if site["type"] == "sample"]
    if is_validation_enabled():
        for trace in traces:
            trace.compute_log_prob()
        for site in sites:
            check_site_shape(site, max_plate_nesting=float("inf"))
    dims = [frame.dim for site in sites for frame in site["cond_indep_stack"] if frame.vectorized]
    return -min(dims) if dims else 0


class SINELBO(ELBO):
    r"""
    The ELBO of :class:`~pyro_sin.SINGuide`, and the conjugate targets ``λ*`` of
    its natural-gradient step.

    :meth:`loss_and_grads` back-propagates the bound into every non-natural
    parameter and writes ``λ - λ*`` into the gradient of each natural parameter,
    for :class:`~pyro_sin.optim.NaturalAdam` to turn into the step
    ``λ ← (1 - β) λ + β λ*``. ``λ*`` comes from the exact expected statistics
    of the SIN posterior (not from samples), scaled by ``N / |B|`` read off the
    data plate.

    :param int num_particles: samples of the local latents per data point.
    :param str decoder_estimator: how the non-PGM terms average over discrete
        PGM latents (mixture assignments): ``"enumerate"`` sums over every
        value (``K`` decoder passes per particle); ``"sample"`` draws one value
        per particle and adds a score-function term with a leave-one-out
        baseline over particles for the gradient of the assignment
        probabilities.
    :param bool vectorize_particles: run the particles as one vectorised plate.
    :param max_plate_nesting: as for Pyro's ELBOs; guessed when omitted.
    """

    def __init__(
        self,
        num_particles=1,
        decoder_estimator="sample",
        max_plate_nesting=float("inf"),
        vectorize_particles=True,
        retain_graph=None,
    ):
        if not num_particles >= 1:
            raise ValueError(f"SINELBO: num_particles must be at least 1, got {num_particles}")
        if decoder_estimator not in _ESTIMATORS:
            raise ValueError(f"decoder_estimator must be one of {_ESTIMATORS}, got {decoder_estimator!r}")
        self.decoder_estimator = decoder_estimator
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )
        self._last_natural_step = {}

    # ----- traces ---------------------------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):
        scales = {}
        guide = _IntegrateOutPGM(scales)(guide)
        if self.decoder_estimator == "enumerate":
            guide = poutine.enum(
                config_enumerate(guide, "parallel"),
                first_available_dim=-1 - self.max_plate_nesting,
            )
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model = poutine.replay(_IntegrateOutPGM(scales, guide_trace)(model), trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(*args, **kwargs)
        model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
        if is_validation_enabled():
            _check_model_sites_guided(model_trace, guide_trace)
        guide_trace.sin_scales = scales
        return model_trace, guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            # a dry run that leaves the random stream untouched, so a resumed run
            # (fresh ELBO, restored RNG state) repeats an uninterrupted one
            rng_state = get_rng_state()
            particles = int(self.vectorize_particles and self.num_particles > 1)
            self.max_plate_nesting = _model_plate_nesting(model, guide, args, kwargs) + particles
            set_rng_state(rng_state)
            _logger.debug(
                "SINELBO: max_plate_nesting = %d (%d plate(s) of the model%s)",
                self.max_plate_nesting,
                self.max_plate_nesting - particles,
                " + 1 for vectorised particles" if particles else "",
            )
        return super()._get_traces(model, guide, args, kwargs)

    # ----- the bound ------------------------------------------------------------------

    @staticmethod
    def _check_data_plates(pgm, model_frames, guide_frames):
        """The model and the guide must subsample the same data set in the same way."""
        model_plates = {f.name: f for f in model_frames}
        for frame in guide_frames:
            if frame.full_size is None or frame.name not in model_plates and frame.full_size == frame.size:
                continue
            other = model_plates.get(frame.name)
            if other is None or (other.full_size, other.size) != (frame.full_size, frame.size):
                found = "no such plate" if other is None else f"{other.size} of {other.full_size}"
                raise ValueError(
                    f"SINELBO: the guide's plate '{frame.name}' around '{pgm.name}' holds {frame.size} of "
                    f"{frame.full_size} data points but the model's holds {found}: the minibatch scale "
                    "N/|B| would be wrong. Build the guide from this model (e.g. model.make_guide) or "
                    "give SINGuide a create_plates that matches the model's plate"
                )

    def _closed_form_terms(self, guide_trace):
        """
        The PGM's closed-form part of the bound, and per SIN site the record with the
        ratios of scales the natural target needs.
        """
        closed_form, records = 0.0, []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or "sin" not in site["infer"]:
                continue
            record = site["infer"]["sin"]
            pgm = record.pgm
            scales = guide_trace.sin_scales.get(pgm.name, _Scales())
            self._check_data_plates(pgm, scales.model_frames, site["cond_indep_stack"])
            guide_local = _scalar(site["scale"], "local site in the guide")
            model_local = _scalar(
                guide_local if scales.model_local is None else scales.model_local, "local site in the model"
            )
            guide_global = _scalar(1.0 if scales.guide_global is None else scales.guide_global, "global sites")
            model_global = _scalar(1.0 if scales.model_global is None else scales.model_global, "global sites")
            q, post = record.global_posterior, record.posterior
            closed_form = (
                closed_form
                + model_local * pgm.expected_log_prior(q, post).sum()
                + guide_local * pgm.local_entropy(post).sum()
                - guide_global * pgm.kl(q)
            )
            if model_global != guide_global:  # annealing of p(θ) alone
                closed_form = closed_form - (model_global - guide_global) * pgm.cross_entropy(q)
            records.append((record, model_local / guide_global, model_global / guide_global))
        if not records:
            raise ValueError("SINELBO needs a guide with a SIN site, e.g. pyro_sin.SINGuide")
        return closed_form, records

    def _particle_terms(self, model_trace, guide_trace):
        """
        Returns ``(elbo, surrogate, records)`` for one (possibly vectorised) trace,
        each term already divided by the number of particles it holds.
        """
        closed_form, records = self._closed_form_terms(guide_trace)
        pgm_sites, decoupled = set(), set()
        for record, _, _ in records:
            pgm_sites.update(record.pgm.global_sites + record.pgm.local_sites)
            decoupled.update(record.pgm.decoupled_sites)
        vectorized = self.vectorize_particles and self.num_particles > 1

        # Closed-form terms are exact: counted once per vectorised trace, or
        # averaged over sequential ones.
        elbo = closed_form if vectorized else closed_form / self.num_particles

        # Discrete PGM latents: either enumerated (weights) or sampled (score function).
        enumerated, sampled = [], []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or name not in pgm_sites:
                continue
            if site["infer"].get("_enumerate_dim") is not None:
                enumerated.append(site)
            elif not site["fn"].has_rsample and name not in decoupled:
                sampled.append(site)
        weights, enum_dims = 1.0, []
        for site in enumerated:
            weights = weights * site["fn"].log_prob(site["value"]).exp()
            enum_dims.append(site["infer"]["_enumerate_dim"])

        # Monte Carlo terms: every model site outside the PGM, and any guide site outside it.
        model_trace.compute_log_prob(site_filter=lambda name, site: name not in pgm_sites)
        mc = 0.0
        local_cost = 0.0  # per-particle, per-point downstream log-density, for the score function
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or name in pgm_sites:
                continue
            if is_validation_enabled():
                check_site_shape(site, self.max_plate_nesting)
            log_p = site["log_prob"]
            if any(-d <= log_p.dim() and log_p.shape[d] > 1 for d in enum_dims):
                log_p = log_p * weights
            mc = mc + log_p.sum()
            if sampled:
                local_cost = local_cost + log_p
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or name in pgm_sites:
                continue
            if not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"SINELBO supports only reparameterised guide sites outside the PGM; '{name}' is not"
                )
            mc = mc - site["fn"].log_prob(site["value"]).mul(site["scale"]).sum()
        elbo = elbo + mc / self.num_particles

        surrogate = elbo
        for site in sampled:
            log_q = site["fn"].log_prob(site["value"])  # (particles, ...batch)
            cost = torch.as_tensor(local_cost).detach()
            cost = cost.expand(torch.broadcast_shapes(cost.shape, log_q.shape))
            if vectorized:
                dim = -self.max_plate_nesting  # the particle plate
                baseline = (cost.sum(dim, keepdim=True) - cost) / (self.num_particles - 1)
                cost = cost - baseline
            surrogate = surrogate + (log_q * cost).sum() / self.num_particles
        return elbo, surrogate, records

    def _loss_surrogate_records(self, model, guide, args, kwargs):
        elbo, surrogate, all_records = 0.0, 0.0, []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            e, s, records = self._particle_terms(model_trace, guide_trace)
            elbo, surrogate = elbo + e, surrogate + s
            all_records.append((guide_trace, records))
        warn_if_nan(elbo, "loss")
        return -elbo, -surrogate, all_records

    def loss(self, model, guide, *args, **kwargs):
        """:returns: an estimate of the negative ELBO (a float); moves nothing."""
        with torch.no_grad():
            loss, _, _ = self._loss_surrogate_records(model, guide, args, kwargs)
        return torch_item(loss)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """:returns: the negative ELBO, differentiable in every parameter (no natural step)."""
        loss, surrogate, _ = self._loss_surrogate_records(model, guide, args, kwargs)
        return surrogate + (loss - surrogate).detach()

    def natural_targets(self, records):
        r"""
        ``λ*`` per natural parameter (keyed by the unconstrained tensor), averaged over
        traces, as ``(domain, packed λ, packed λ*)``. With the model's local and global PGM sites
        scaled by ``s_l, s_g`` relative to the guide's global sites (``N/|B|`` and any
        ``poutine.scale``), the target maximises the scaled bound in ``λ``:

        .. math:: \lambda^* = \lambda_0 + s_l \textstyle\sum_n E[t(x_n)]
                  + (s_g - 1)(\lambda_0 - o)

        (``o`` the offset of stored from base-measure natural coordinates).
        """
        targets = {}
        if records and world()[1] > 1:  # the processes' averaged step must be the global batch's
            param = records[0][1][0][0].natural_param if records[0][1] else None
            check_same_sizes(*_minibatch_sizes(records[0][0]), device=None if param is None else param.device)
        with torch.no_grad():
            for guide_trace, trace_records in records:
                for record, local_ratio, global_ratio in trace_records:
                    domain, pgm = record.natural_domain, record.pgm
                    target = domain.pack(pgm.natural_target(record.posterior, local_ratio))
                    if global_ratio != 1:
                        prior = domain.pack(pgm.prior_natural())
                        target = target + (global_ratio - 1) * (prior - domain.base_offset(prior))
                    param = _unconstrained(record.natural_param)
                    natural = record.natural_param.detach()
                    targets.setdefault(param, (domain, natural, []))[2].append(target)
        return {p: (domain, natural, torch.stack(ts).mean(0)) for p, (domain, natural, ts) in targets.items()}

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        :returns: an estimate of the negative ELBO (a float). Back-propagates it into every
            other parameter; on each natural parameter's unconstrained tensor it sets the
            negative natural gradient ``λ - λ*`` for :class:`~pyro_sin.optim.NaturalAdam`,
            which steps in natural coordinates, marked with the loss per data point for
            NaturalAdam's divergence guard (:func:`~pyro_sin.natural.step_loss`).
        :raises ~pyro_sin.training.DivergenceError: when the conjugate target is not finite.
        """
        loss, surrogate, records = self._loss_surrogate_records(model, guide, args, kwargs)
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        targets = self.natural_targets(records)
        if is_validation_enabled():
            self._check_previous_natural_step(targets)
        loss = torch_item(loss)
        loss_per_point = loss / self._num_data(records[0][0])
        steps = {}
        for param, (domain, natural, target) in targets.items():
            if not torch.isfinite(target).all():
                raise DivergenceError(
                    "SINELBO: the conjugate target of the natural parameters is not finite (the "
                    "encoder's potentials or the data contain NaN/inf, or training diverged)"
                )
            steps[param] = (natural, set_natural_gradient(param, natural, target, loss_per_point))
        # the gradient tensors themselves: averaged across processes in place, they hold
        # the step actually asked for
        self._last_natural_step = steps
        return loss

    def _num_data(self, guide_trace) -> int:
        """The number of data points the bound is scaled to: the full sizes of the plates around the SIN site."""
        particles = -self.max_plate_nesting if self.vectorize_particles and self.num_particles > 1 else None
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and "sin" in site["infer"]:
                frames = site["cond_indep_stack"]
                return math.prod(f.full_size or f.size for f in frames if f.vectorized and f.dim != particles)
        return 1

    def _check_previous_natural_step(self, targets):
        """Warns if the last update of ``λ`` was not along its natural gradient (a convex step)."""
        for param, (before, grad) in self._last_natural_step.items():
            if param not in targets:
                continue
            after = targets[param][1]
            wanted = -grad.to(before.dtype)
            # normalised, so that sums of squares cannot overflow
            unit = torch.stack([before.abs().max(), wanted.abs().max(), after.abs().max()]).max()
            unit = unit.clamp(min=torch.finfo(before.dtype).tiny)
            moved, wanted = (after - before) / unit, wanted / unit
            wanted_sq = wanted.pow(2).sum()
            if wanted_sq > 0:
                residual = moved - (moved @ wanted) / wanted_sq * wanted
                # the round trip through the unconstrained coordinates bounds what a faithful step achieves
                tol = 1e-2 * moved.norm() + 1e4 * torch.finfo(before.dtype).eps * (before / unit).norm()
                if residual.norm() > tol:
                    warnings.warn(
                        "natural parameters moved off the natural-gradient direction since the "
                        "last step: pair SINELBO with pyro_sin.optim.NaturalAdam (a stock "
                        "optimiser treats λ - λ* as an ordinary gradient)",
                        RuntimeWarning,
                    )
                    break
