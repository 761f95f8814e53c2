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

import warnings

import torch

import pyro.poutine as poutine
from pyro.infer import config_enumerate
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_site_shape, get_rng_state, set_rng_state, warn_if_nan

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


class _IntegrateOutPGM(Messenger):
    """
    Skips the PGM's own sample statements: SINELBO evaluates their terms in closed
    form, so it neither samples ``θ`` in the guide nor builds ``p(x | θ)`` in the
    model; the model's local latent takes the guide's sample.

    :param guide_trace: the guide's trace, when running the model.
    """

    def __init__(self, guide_trace=None):
        super().__init__()
        self.guide_trace = guide_trace

    def _pyro_sin_prior_params(self, msg):
        msg["value"] = _IntegratedParams()
        msg["done"] = True

    def _pyro_sin_posterior_params(self, msg):
        msg["value"] = _IntegratedParams()
        msg["done"] = True

    def _pyro_sin_prior_latent(self, msg):
        pgm = msg["args"][0]
        msg["value"] = self.guide_trace.nodes[pgm.name]["value"]
        msg["done"] = True


def _plate_ratio(site) -> float:
    """``N / |B|`` of the data plates around a site (not other scales such as annealing)."""
    ratio = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None:
            ratio *= frame.full_size / frame.size
    return ratio


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
        guide = _IntegrateOutPGM()(guide)
        if self.decoder_estimator == "enumerate":
            guide = poutine.enum(
                config_enumerate(guide, "parallel"),
                first_available_dim=-1 - self.max_plate_nesting,
            )
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model = poutine.replay(_IntegrateOutPGM(guide_trace)(model), trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(*args, **kwargs)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _get_traces(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            # a dry run that leaves the random stream untouched, so a resumed run
            # (fresh ELBO, restored RNG state) repeats an uninterrupted one
            rng_state = get_rng_state()
            self._guess_max_plate_nesting(model, guide, args, kwargs)
            set_rng_state(rng_state)
        return super()._get_traces(model, guide, args, kwargs)

    # ----- the bound ------------------------------------------------------------------

    def _particle_terms(self, model_trace, guide_trace):
        """
        Returns ``(elbo, surrogate, records)`` for one (possibly vectorised) trace,
        each term already divided by the number of particles it holds.
        """
        records = [
            (name, site["infer"]["sin"])
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and "sin" in site["infer"]
        ]
        if not records:
            raise ValueError("SINELBO needs a guide with a SIN site, e.g. pyro_sin.SINGuide")
        pgm_sites = set()
        for _, record in records:
            pgm_sites.update(record.pgm.global_sites + record.pgm.local_sites)
        vectorized = self.vectorize_particles and self.num_particles > 1

        # Closed-form terms are exact: counted once per vectorised trace, or
        # averaged over sequential ones.
        closed_form = 0.0
        for name, record in records:
            pgm = record.pgm
            local_scale = guide_trace.nodes[name]["scale"]
            global_scale = local_scale / _plate_ratio(guide_trace.nodes[name])  # e.g. KL annealing
            local = pgm.local_elbo(record.global_posterior, record.posterior).sum()
            closed_form = closed_form + local_scale * local - global_scale * pgm.kl(record.global_posterior)
        elbo = closed_form if vectorized else closed_form / self.num_particles

        # Discrete PGM latents: either enumerated (weights) or sampled (score function).
        enumerated, sampled = [], []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or name not in pgm_sites:
                continue
            if site["infer"].get("_enumerate_dim") is not None:
                enumerated.append(site)
            elif not site["fn"].has_rsample:
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
        """``λ*`` per natural parameter, averaged over traces."""
        targets = {}
        with torch.no_grad():
            for guide_trace, trace_records in records:
                for name, record in trace_records:
                    scale = _plate_ratio(guide_trace.nodes[name])
                    target = record.pgm.natural_target(record.posterior, scale)
                    for key, value in record.natural.items():
                        param = _unconstrained(value)
                        targets.setdefault(param, []).append(target[key])
        return {p: torch.stack(ts).mean(0) for p, ts in targets.items()}

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        :returns: an estimate of the negative ELBO (a float). Back-propagates it, then
            sets ``grad = λ - λ*`` on every natural parameter.
        """
        loss, surrogate, records = self._loss_surrogate_records(model, guide, args, kwargs)
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        targets = self.natural_targets(records)
        if is_validation_enabled():
            self._check_previous_natural_step(targets)
        for param, target in targets.items():
            param.grad = (param.detach() - target).to(param.dtype)
        return torch_item(loss)

    def _check_previous_natural_step(self, targets):
        """Warns if the last update of ``λ`` was not a convex combination with ``λ*``."""
        previous = [(p, b, t) for p, (b, t) in self._last_natural_step.items() if p in targets]
        if previous:
            before = torch.cat([b.flatten() for _, b, _ in previous])
            moved = torch.cat([p.detach().flatten() for p, _, _ in previous]) - before
            wanted = torch.cat([t.flatten() for _, _, t in previous]) - before
            wanted_sq = wanted.pow(2).sum()
            if wanted_sq > 0:
                residual = moved - (moved @ wanted) / wanted_sq * wanted
                # rounding of λ itself bounds what a faithful step can achieve
                tol = 1e-3 * moved.norm() + 64 * torch.finfo(before.dtype).eps * before.norm()
                if residual.norm() > tol:
                    warnings.warn(
                        "natural parameters moved off the natural-gradient direction since the "
                        "last step: pair SINELBO with pyro_sin.optim.NaturalAdam (a stock "
                        "optimiser treats λ - λ* as an ordinary gradient)",
                        RuntimeWarning,
                    )
        self._last_natural_step = {p: (p.detach().clone(), t) for p, t in targets.items()}
