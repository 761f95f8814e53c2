r"""
:class:`SINGuide`: a structured inference network as a Pyro guide.

.. math::

    q(x \mid y) = \frac{1}{Z(\phi)} \prod_n \psi\big(x_n; f_{\phi_{NN}}(y_n)\big)\,
                  q(x \mid \phi_{PGM}),\qquad q(\theta_{PGM} \mid \lambda)

Not to be confused with the "structured inference networks" of Krishnan et
al. (2017) in Pyro's deep Markov model tutorial: this is the SIN of Lin,
Hubacher & Khan (ICLR 2018), whose PGM factor keeps the prior's graph so the
posterior comes out of exact message passing.
"""

import contextlib
from typing import Optional

import numpy as np
import torch

import pyro
import pyro.poutine as poutine
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_mean, init_to_sample
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroParam

from ._pyro_compat import active_plate, isolated, outside
from .naming import NameOwner
from .pgm.base import SINRecord, StructuredPrior
from .potential import GaussianPotential
from .recognize import InModelPlates, recognize
from .standardize import as_float_tensor
from .training import DivergenceError


def _first_argument(*args, **kwargs):
    if not args:
        raise ValueError(
            "SINGuide could not find the data: by default the encoder reads the model's "
            "first positional argument; pass encoder_input=callable(*args, **kwargs)"
        )
    return args[0]


def _init_prototype_site(site):
    """
    The prior mean where it exists; a draw for a discrete site whose value is a whole
    path (a Markov chain's states), which has no mean, no median and no feasible point.
    """
    fn = site["fn"]
    if fn.support.is_discrete and fn.event_dim > 0:
        return init_to_sample(site)
    return init_to_mean(site)


@contextlib.contextmanager
def _scalar_indices_named(args, kwargs):
    """
    A 0-dim index (``torch.tensor(0)``) given to ``pyro.plate(..., subsample=idx)`` fails in Pyro with an
    ``IndexError`` about dimensions; this names the argument and the fix instead.
    """
    try:
        yield
    except IndexError as error:
        given = (*args, *kwargs.values())
        scalars = [a for a in given if torch.is_tensor(a) and a.dim() == 0 and not a.is_floating_point()]
        if not scalars:
            raise
        raise ValueError(
            f"SINGuide: indices must be a 1-D integer tensor, one row number per data point of the minibatch, got "
            f"a 0-dim tensor ({scalars[0].dtype}): e.g. idx.reshape(-1) for a single point"
        ) from error


def _rows(data):
    """Number of rows of the encoder input (a tensor or a tuple of tensors)."""
    if isinstance(data, (tuple, list)):
        return _rows(data[0]) if data else None
    return data.shape[0] if torch.is_tensor(data) and data.dim() else None


class SINGuide(AutoGuide, NameOwner):
    r"""
    A guide that supplies the conjugate posterior ``q(θ | λ)`` for a PGM's
    global sites and the closed-form SIN posterior for its local sites.

    Works with :class:`~pyro_sin.SINELBO` and :class:`~pyro_sin.optim.NaturalAdam`
    (natural-gradient steps on ``λ``), and unchanged with Pyro's stock
    ``Trace_ELBO`` / ``TraceEnum_ELBO`` (wrap it in
    :func:`~pyro.infer.config_enumerate` for the latter) and optimisers: ``λ``
    is stored through a bijection onto its domain
    (:class:`~pyro_sin.distributions.natural.NaturalDomain`), so no optimiser
    can move it out of it.

    It is an :class:`~pyro.infer.autoguide.AutoGuide`, so it composes with
    others in an :class:`~pyro.infer.autoguide.AutoGuideList` (it then shares the
    list's plates); called inside an active ``pyro.plate`` of the data plate's
    name (a hand-written guide that also guides per-point latents), it uses that
    plate instead of opening its own.

    :param callable model: the Pyro model; it calls ``pgm.sample_params()`` and,
        inside a ``pyro.plate`` over data points, ``pgm.sample_latent(...)``, or writes the
        structured prior with plain ``pyro.sample`` statements (then leave ``pgm`` out).
    :param StructuredPrior pgm: the structured prior used in the model; if omitted, it is
        recognised from the model at the guide's first call (:func:`~pyro_sin.recognize.recognize`,
        with the model's hyperparameters and site names; the attribute ``recognition`` says what was found),
        and a model it cannot recognise is refused there, with the site and the reason.
    :param torch.nn.Module encoder: maps a minibatch of data ``(B, ...)`` to a
        :class:`~pyro_sin.potential.GaussianPotential` (or a pair ``(h, J)``).
    :param str factor: ``"tied"`` (the SIN factor is the mean-field message of
        ``q(θ | λ)``) or ``"free"`` (its own parameters, trained by Adam); by default
        the first the PGM offers (``"tied"`` for the conjugate priors, ``"free"`` for
        the Student-t mixture, which has no conjugate message).
    :param callable create_plates: as for Pyro's autoguides: a function of the
        model's arguments returning the data plate(s), needed when the model
        subsamples with explicit indices.
    :param callable encoder_input: a function of the model's arguments returning
        the data to encode (a tensor, or a tuple of tensors passed to the encoder
        as separate arguments, e.g. data and a mask); defaults to the first
        positional argument. Each may hold one row per minibatch element or the
        full data set, which is then indexed by the plate's subsample indices.
    :param dict init_natural: initial natural parameters (defaults to
        ``pgm.init_natural()``).
    :param str name: the prefix of the guide's parameters in Pyro's param store;
        by default ``"<model name>.guide"`` (or ``"SINGuide"``), made unique among the
        live guides (:mod:`pyro_sin.naming`). Give one explicitly to checkpoint through
        the param store.
    """

    def __init__(
        self,
        model,
        pgm: Optional[StructuredPrior] = None,
        encoder: Optional[torch.nn.Module] = None,
        *,
        factor: Optional[str] = None,
        create_plates=None,
        encoder_input=None,
        init_natural=None,
        name: Optional[str] = None,
    ):
        if pgm is not None and not isinstance(pgm, StructuredPrior):
            raise TypeError(f"pgm must be a pyro_sin StructuredPrior, got {type(pgm).__name__}")
        if encoder is None:
            raise TypeError("SINGuide needs an encoder: SINGuide(model, encoder=...)")
        super().__init__(model, create_plates=create_plates)
        default = f"{model.param_prefix}.guide" if isinstance(model, NameOwner) else type(self).__name__
        self._claim_name(name, default)
        self._pyro_name = self.param_prefix  # before any child is attached, so children take the prefix
        self.encoder = encoder
        self.encoder_input = encoder_input or _first_argument
        self._data_frame = None
        self.recognition = None
        self._global_plates = {}  # a recognised model's plates of components: site -> frame
        self.pgm = None
        self._requested = (factor, init_natural)
        if pgm is not None:
            self._attach(pgm)

    def _attach(self, pgm: StructuredPrior):
        """Takes ``pgm`` as the guide's structured prior: its factor, ``λ`` and a free factor's parameters."""
        factor, init_natural = self._requested
        factor = pgm.factor_modes[0] if factor is None else factor
        if factor not in pgm.factor_modes:
            raise ValueError(
                f"factor must be one of {pgm.factor_modes} for a {type(pgm).__name__}, got {factor!r}"
            )
        self.pgm = pgm
        self.factor_mode = factor
        self._natural_domain = pgm.natural_domain()
        init = pgm.init_natural() if init_natural is None else dict(init_natural)
        self.natural = PyroParam(self._natural_domain.pack(init).detach().clone(), self._natural_domain)
        self._free_names = ()
        if factor == "free":
            self.free = pyro.nn.PyroModule()
            free_init = pgm.init_free_factor({k: v.detach() for k, v in init.items()})
            self._free_names = tuple(free_init)
            for key, (value, constraint) in free_init.items():
                setattr(self.free, key, PyroParam(value.detach().clone(), constraint))

    # ----- structure discovered from the model ------------------------------------

    def _setup_prototype(self, *args, **kwargs):
        if self.pgm is None:
            # no structured prior given: recognised from the model (pyro_sin.recognize), whose
            # trace, as written, then serves as the prototype (one trace more than a given prior's)
            recognition = recognize(self.model, *args, **kwargs)
            self._attach(recognition.prior)
            self.prototype_trace = recognition.trace.copy()
            for name, site in list(self.prototype_trace.nodes.items()):
                if self._prototype_hide_fn(site):
                    self.prototype_trace.remove_node(name)
            self.recognition = recognition._replace(trace=None)  # what was found, without the model's tensors
            self._global_plates = {
                name: frames[0]
                for name in self.pgm.global_sites
                for frames in [[f for f in self.prototype_trace.nodes[name]["cond_indep_stack"] if f.vectorized]]
                if frames
            }
        else:
            # The model's structure is discovered in isolation: outside any plate of a
            # hand-written guide that calls this one, and without consuming random
            # numbers, so that a resumed run repeats an uninterrupted one.
            with isolated():
                model = poutine.block(InitMessenger(_init_prototype_site)(self.model), self._prototype_hide_fn)
                # at the prior means: sampled parameters (e.g. unstable dynamics over a long
                # sequence) could overflow, and the structure is all this trace is for
                self.prototype_trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        if self.master is not None:
            self.master()._check_prototype(self.prototype_trace)
        self._prototype_frames = {
            frame.name: frame
            for _, site in self.prototype_trace.iter_stochastic_nodes()
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        }
        sites = dict(self.prototype_trace.iter_stochastic_nodes())
        pgm_sites = self.pgm.global_sites + self.pgm.local_sites
        summed_out = self.recognition.marginalised if self.recognition is not None else ()
        missing = [name for name in pgm_sites if name not in sites and name not in summed_out]
        if missing:
            raise ValueError(
                f"SINGuide: the model has no sample site(s) {missing} of the "
                f"{type(self.pgm).__name__} '{self.pgm.name}'; call pgm.sample_params() and, "
                "inside the data plate, pgm.sample_latent(params) in the model"
            )
        unmatched = [name for name in sites if name not in pgm_sites]
        if unmatched:
            raise ValueError(
                f"SINGuide covers only the sites of its PGM; the model's latent site(s) "
                f"{unmatched} have no guide (observe them, or combine guides: block them out of "
                "SINGuide's model with poutine.block and guide them with another guide, e.g. in an "
                "AutoGuideList)"
            )
        for name in self.pgm.global_sites if self.recognition is None else ():  # recognition checked its plates
            if sites[name]["cond_indep_stack"]:
                raise ValueError(
                    f"SINGuide: the global site '{name}' must be sampled outside every plate"
                )
        frames = [f for f in sites[self.pgm.name]["cond_indep_stack"] if f.vectorized]
        if len(frames) != 1:
            raise ValueError(
                f"SINGuide: the latent site '{self.pgm.name}' must be sampled inside exactly one "
                f"pyro.plate over data points, found {[f.name for f in frames]}"
            )
        self._data_frame = frames[0]

    def _create_plates(self, *args, **kwargs):
        """
        Plates as an AutoGuide makes them, except that a data plate this guide
        re-creates itself follows the size of the data it is given, so that the
        guide serves held-out data as well as the training minibatches.
        """
        if self.master is not None:
            return super()._create_plates(*args, **kwargs)
        frame = self._data_frame
        plates = {}
        if self.create_plates is not None:
            given = self.create_plates(*args, **kwargs)
            given = [given] if isinstance(given, pyro.plate) else list(given)
            plates = {p.name: p for p in given}
        if frame.name not in plates:
            full_size = frame.full_size or frame.size
            rows = _rows(self.encoder_input(*args, **kwargs))
            if rows is None or frame.size == full_size:  # the model does not subsample
                plates[frame.name] = pyro.plate(frame.name, rows or full_size, dim=frame.dim)
            elif rows == full_size:  # the full data set: subsample as the model does
                plates[frame.name] = pyro.plate(frame.name, full_size, dim=frame.dim, subsample_size=frame.size)
            else:  # a minibatch of a data set of size full_size
                plates[frame.name] = pyro.plate(frame.name, full_size, dim=frame.dim, subsample_size=rows)
        self.plates = plates
        return plates

    def _minibatch(self, data, plate, indices):
        """Rows of ``data`` (a tensor or a tuple of tensors) for the plate's current subsample."""
        if isinstance(data, (tuple, list)):
            return tuple(self._minibatch(part, plate, indices) for part in data)
        if plate.subsample_size == 0:  # (Pyro's minibatch scale N / |B| would divide by zero)
            raise ValueError(f"SINGuide: the minibatch is empty (plate '{plate.name}'): pass at least one data point")
        if not torch.is_tensor(data):
            raise TypeError(f"SINGuide: the data to encode must be a tensor, got {type(data).__name__}")
        rows = data.shape[0] if data.dim() else None
        if rows == plate.subsample_size:
            batch = data
        elif rows == plate.size:
            batch = data[indices]
        else:
            raise ValueError(
                f"SINGuide: the data to encode has {rows} rows but the plate '{plate.name}' "
                f"holds {plate.subsample_size} of {plate.size} data points"
            )
        # checked whatever the validation setting: NaN data would otherwise surface as a failed
        # factorisation deep in the posterior, and the check is cheap beside the encoder
        if batch.is_floating_point() and not torch.isfinite(batch).all():
            rows = (~torch.isfinite(batch.reshape(len(batch), -1))).any(-1).nonzero().flatten()
            raise ValueError(
                f"SINGuide: the data contain NaN or inf (minibatch rows {rows[:5].tolist()}): remove or impute "
                "them; for sequences, fill missing frames with any finite value and mark them 0 in the mask"
            )
        return batch

    def _check_matches_encoder(self, data):
        """A clear error for data whose dtype or device differs from the encoder's parameters."""
        if isinstance(data, (tuple, list)):
            for part in data:
                self._check_matches_encoder(part)
            return
        reference = next(self.encoder.parameters(), None)
        if reference is not None and torch.is_tensor(data) and data.is_floating_point():
            if data.dtype != reference.dtype or data.device != reference.device:
                raise ValueError(
                    f"SINGuide: dtype or device mismatch: the data are {data.dtype} on {data.device} but the encoder's "
                    f"parameters are {reference.dtype} on {reference.device}: convert one to match the other "
                    "(e.g. y.to(torch.float32), or encoder/decoder .double() / .to(device))"
                )

    def _check_stored_natural(self, natural_param):
        """A clear error for ``λ`` that Pyro's param store holds under this guide's name from another model."""
        if natural_param.shape[-1:] != (self._natural_domain.size,):
            raise ValueError(
                f"SINGuide '{self.param_prefix}': Pyro's param store holds '{self.param_prefix}.natural' with "
                f"{natural_param.shape[-1]} entries, but this guide's {type(self.pgm).__name__} needs "
                f"{self._natural_domain.size}: they belong to another model under the same name (e.g. an earlier "
                "run with another K). Call pyro.clear_param_store() before building the new model, or give the "
                "guide a fresh name=..."
            )

    # ----- the guide ------------------------------------------------------------------

    @property
    def encoder(self) -> torch.nn.Module:
        # Read directly: PyroModule would register a plain nn.Module through
        # pyro.module without update_module_params, so after a param-store load
        # the encoder would keep stale weights while Adam trained the loaded ones.
        return self._modules["encoder"]

    def _register_encoder(self):
        pyro.module(f"{self._pyro_name}.encoder", self.encoder, update_module_params=True)

    def _check_attached(self, method: str):
        """A clear error for a method that needs the prior before a recognising guide has seen the model."""
        if self.pgm is None:
            raise RuntimeError(
                "SINGuide: the prior is recognised from the model at the guide's first call: take one step "
                f"(or call guide(*args)) before {method}"
            )

    def natural_params(self):
        """The natural parameters ``λ`` of ``q(θ | λ)`` as a dict of tensors."""
        self._check_attached("natural_params")
        return self._natural_domain.unpack(self.natural)

    @torch.no_grad()
    def set_natural(self, natural):
        """
        Sets ``λ`` in place (through its domain's bijection), so that the optimiser that
        holds it carries on, and restarts a free SIN factor from it.

        :param dict natural: natural parameters, e.g. ``pgm.encoded_start(encoder, data)``.
        """
        self._check_attached("set_natural")
        domain = self._natural_domain
        self.natural.unconstrained().copy_(domain.to_unconstrained(domain.pack(natural)))
        if self.factor_mode == "free":
            for key, (value, constraint) in self.pgm.init_free_factor(natural).items():
                getattr(self.free, key).unconstrained().copy_(torch.distributions.transform_to(constraint).inv(value))

    def global_posterior(self):
        """``q(θ | λ)`` at the current ``λ``, without gradient to ``λ``."""
        self._check_attached("global_posterior")
        return self.pgm.global_posterior({k: v.detach() for k, v in self.natural_params().items()})

    def factor(self, global_posterior=None):
        """The SIN's PGM factor: tied to ``q(θ | λ)`` (no gradient to ``λ``), or free."""
        if self.factor_mode == "free":
            return self.pgm.free_factor({key: getattr(self.free, key) for key in self._free_names})
        return self.pgm.tied_factor(global_posterior or self.global_posterior())

    def as_input(self, data):
        """
        ``data`` with its array-likes (numpy, lists, pandas) as tensors in the encoder's dtype and on its
        device (integers, e.g. lengths, stay integers); tensors as they are.
        """
        if isinstance(data, tuple):
            return tuple(self.as_input(part) for part in data)
        if torch.is_tensor(data) or data is None:
            return data
        reference = next(self.encoder.parameters(), None)
        converted = torch.as_tensor(np.asarray(data))
        if converted.is_floating_point() or reference is None:
            return as_float_tensor(data, like=reference)
        return converted.to(reference.device)  # integers (lengths) stay integers

    def encode(self, data) -> GaussianPotential:
        """
        The encoder's potentials for a minibatch of data (a tensor or a tuple of encoder inputs;
        numpy arrays, lists and pandas DataFrames are converted to the encoder's dtype and device).
        """
        data = self.as_input(data)
        self._check_matches_encoder(data)
        potential = self.encoder(*data) if isinstance(data, tuple) else self.encoder(data)
        if not isinstance(potential, GaussianPotential):
            potential = GaussianPotential(*potential)
        if is_validation_enabled():
            potential.validate()
        return potential

    def posterior(self, potential, global_posterior):
        """The local posterior from the encoder's potentials (the SIN: potentials times the factor)."""
        with _non_finite_potentials_named(potential):
            return self.pgm.posterior(potential, self.factor(global_posterior))

    def local_posterior(self, data):
        """The posterior of the local latents of ``data`` (no sample sites emitted; array-likes converted)."""
        self._check_attached("local_posterior")
        return self.posterior(self.encode(data), self.global_posterior())

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            with _scalar_indices_named(args, kwargs):
                self._setup_prototype(*args, **kwargs)
        self._mark_registered()
        self._register_encoder()
        name = self._data_frame.name
        active = active_plate(name)
        with contextlib.ExitStack() as stack:
            if active is not None:  # θ is global even when called inside the data plate
                stack.enter_context(outside(active))
            natural_param = self.natural
            self._check_stored_natural(natural_param)
            natural = self._natural_domain.unpack(natural_param)
            with InModelPlates(self._global_plates):
                self.pgm.sample_global_posterior(natural)  # skipped by SINELBO, which integrates θ
        global_posterior = self.pgm.global_posterior({k: v.detach() for k, v in natural.items()})
        if active is None:
            with _scalar_indices_named(args, kwargs):
                plate = self._create_plates(*args, **kwargs)[name]
        else:
            plate, self.plates = active, {name: active}
        data = self.encoder_input(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            indices = plate.indices if active is not None else stack.enter_context(plate)
            batch = self._minibatch(data, plate, indices)
            potential = self.encode(batch)
            posterior = self.posterior(potential, global_posterior)
            record = SINRecord(self.pgm, self._natural_domain, natural_param, global_posterior, posterior)
            with _non_finite_potentials_named(potential):  # (a family may factorise lazily, when sampling)
                value = self.pgm.sample_local_posterior(record)
        return {self.pgm.name: value}


@contextlib.contextmanager
def _non_finite_potentials_named(potential):
    """
    With validation off, non-finite potentials (NaN data) surface as a failed Cholesky factorisation
    deep inside a family; this names the cause instead. Other factorisation failures pass unchanged.
    """
    try:
        yield
    except torch.linalg.LinAlgError as error:
        if bool(torch.isfinite(potential.info_vec).all() and torch.isfinite(potential.precision).all()):
            raise
        raise DivergenceError(
            "SINGuide: the recognition network produced a non-finite Gaussian potential (NaN or inf in the "
            "data, or a diverged encoder), so the local posterior cannot be formed; check the data with "
            "torch.isfinite, or turn validation on (pyro.enable_validation) to catch it where it enters"
        ) from error
