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

import torch

import pyro
import pyro.poutine as poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_mean
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, PyroParam

from .optim import natural_parameter
from .pgm.base import SINRecord, StructuredPrior
from .potential import GaussianPotential


def _first_argument(*args, **kwargs):
    if not args:
        raise ValueError(
            "SINGuide could not find the data: by default the encoder reads the model's "
            "first positional argument; pass encoder_input=callable(*args, **kwargs)"
        )
    return args[0]


class SINGuide(PyroModule):
    r"""
    A guide that supplies the conjugate posterior ``q(θ | λ)`` for a PGM's
    global sites and the closed-form SIN posterior for its local sites.

    Works with :class:`~pyro_sin.SINELBO` and :class:`~pyro_sin.optim.NaturalAdam`
    (natural-gradient steps on ``λ``), and unchanged with Pyro's stock
    ``Trace_ELBO`` / ``TraceEnum_ELBO`` (wrap it in
    :func:`~pyro.infer.config_enumerate` for the latter) and optimisers.

    :param callable model: the Pyro model; it must call ``pgm.sample_params()``
        and, inside a ``pyro.plate`` over data points, ``pgm.sample_latent(...)``.
    :param StructuredPrior pgm: the structured prior used in the model.
    :param torch.nn.Module encoder: maps a minibatch of data ``(B, ...)`` to a
        :class:`~pyro_sin.potential.GaussianPotential` (or a pair ``(h, J)``).
    :param str factor: ``"tied"`` (the SIN factor is the mean-field message of
        ``q(θ | λ)``) or ``"free"`` (its own parameters, trained by Adam).
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
    """

    def __init__(
        self,
        model,
        pgm: StructuredPrior,
        encoder: torch.nn.Module,
        *,
        factor: str = "tied",
        create_plates=None,
        encoder_input=None,
        init_natural=None,
        name: str = "SINGuide",
    ):
        super().__init__(name=name)
        if not isinstance(pgm, StructuredPrior):
            raise TypeError(f"pgm must be a pyro_sin StructuredPrior, got {type(pgm).__name__}")
        if factor not in pgm.factor_modes:
            raise ValueError(
                f"factor must be one of {pgm.factor_modes} for a {type(pgm).__name__}, got {factor!r}"
            )
        self._model = (model,)  # a tuple, so a PyroModule model is not adopted as a child
        self.pgm = pgm
        self.encoder = encoder
        self.factor_mode = factor
        self.create_plates = create_plates
        self.encoder_input = encoder_input or _first_argument
        self._prototype_frames = None

        init = pgm.init_natural() if init_natural is None else dict(init_natural)
        self._natural_names = tuple(init)
        self.natural = PyroModule()
        for key, value in init.items():
            setattr(self.natural, key, PyroParam(value.detach().clone(), natural_parameter))
        self._free_names = ()
        if factor == "free":
            self.free = PyroModule()
            free_init = pgm.init_free_factor({k: v.detach() for k, v in init.items()})
            self._free_names = tuple(free_init)
            for key, (value, constraint) in free_init.items():
                setattr(self.free, key, PyroParam(value.detach().clone(), constraint))

    @property
    def model(self):
        return self._model[0]

    # ----- structure discovered from the model ------------------------------------

    def _setup_prototype(self, *args, **kwargs):
        # Only the model's structure is read. Its latent sites take their prior means,
        # not prior draws, which can diverge (an unstable sampled dynamics over a long
        # sequence overflows) and would stop the guide before its first step.
        model = InitMessenger(init_to_mean)(self.model)
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        sites = {
            name: site
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and type(site["fn"]).__name__ != "_Subsample"
        }
        pgm_sites = self.pgm.global_sites + self.pgm.local_sites
        missing = [name for name in pgm_sites if name not in sites]
        if missing:
            raise ValueError(
                f"SINGuide: the model has no sample site(s) {missing} of the "
                f"{type(self.pgm).__name__} '{self.pgm.name}'; call pgm.sample_params() and, "
                "inside the data plate, pgm.sample_latent(params) in the model"
            )
        unmatched = [
            name
            for name, site in sites.items()
            if not site["is_observed"] and name not in pgm_sites
        ]
        if unmatched:
            raise ValueError(
                f"SINGuide covers only the sites of its PGM; the model's latent site(s) "
                f"{unmatched} have no guide (observe them, or combine guides)"
            )
        for name in self.pgm.global_sites:
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
        self._prototype_frames = frames

    def _create_plate(self, *args, **kwargs):
        """The data plate, from ``create_plates`` or else re-created as the model declares it."""
        (frame,) = self._prototype_frames
        if self.create_plates is not None:
            plates = self.create_plates(*args, **kwargs)
            plates = [plates] if isinstance(plates, pyro.plate) else list(plates)
            for plate in plates:
                if plate.name == frame.name:
                    return plate
        return pyro.plate(
            frame.name, frame.full_size or frame.size, dim=frame.dim, subsample_size=frame.size
        )

    def _minibatch(self, data, plate, indices):
        """Rows of ``data`` (a tensor or a tuple of tensors) for the plate's current subsample."""
        if isinstance(data, (tuple, list)):
            return tuple(self._minibatch(part, plate, indices) for part in data)
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
        if is_validation_enabled() and not torch.isfinite(batch).all():
            raise ValueError("SINGuide: the data contain NaN or inf")
        return batch

    # ----- the guide ------------------------------------------------------------------

    def natural_params(self):
        """The natural parameters ``λ`` of ``q(θ | λ)`` as a dict of tensors."""
        return {key: getattr(self.natural, key) for key in self._natural_names}

    def global_posterior(self):
        """``q(θ | λ)`` at the current ``λ``, without gradient to ``λ``."""
        return self.pgm.global_posterior({k: v.detach() for k, v in self.natural_params().items()})

    def factor(self, global_posterior=None):
        """The SIN's PGM factor: tied to ``q(θ | λ)`` (no gradient to ``λ``), or free."""
        if self.factor_mode == "free":
            return self.pgm.free_factor({key: getattr(self.free, key) for key in self._free_names})
        return self.pgm.tied_factor(global_posterior or self.global_posterior())

    def encode(self, data) -> GaussianPotential:
        """The encoder's potentials for a minibatch of data (a tensor or a tuple of encoder inputs)."""
        potential = self.encoder(*data) if isinstance(data, tuple) else self.encoder(data)
        if not isinstance(potential, GaussianPotential):
            potential = GaussianPotential(*potential)
        if is_validation_enabled():
            potential.validate()
        return potential

    def posterior(self, potential, global_posterior):
        """The local posterior from the encoder's potentials (the SIN: potentials times the factor)."""
        return self.pgm.posterior(potential, self.factor(global_posterior))

    def local_posterior(self, data):
        """The posterior of the local latents of ``data`` (no sample sites emitted)."""
        return self.posterior(self.encode(data), self.global_posterior())

    def forward(self, *args, **kwargs):
        if self._prototype_frames is None:
            self._setup_prototype(*args, **kwargs)
        natural = self.natural_params()
        self.pgm.sample_global_posterior(natural)  # skipped by SINELBO, which integrates θ
        global_posterior = self.pgm.global_posterior({k: v.detach() for k, v in natural.items()})
        plate = self._create_plate(*args, **kwargs)
        data = self.encoder_input(*args, **kwargs)
        with plate as indices:
            batch = self._minibatch(data, plate, indices)
            posterior = self.posterior(self.encode(batch), global_posterior)
            record = SINRecord(self.pgm, natural, global_posterior, posterior)
            return self.pgm.sample_local_posterior(record)


class SVAEGuide(SINGuide):
    r"""
    The structured VAE of Johnson et al. (2016) as a baseline in the same harness:
    the encoder's potentials meet the *current* ``q(θ)`` in an inner mean-field
    loop over ``q(z_n) q(x_n)`` (:meth:`~pyro_sin.pgm.GaussianMixture.mean_field_posterior`)
    instead of SAN's closed-form SIN; ``λ`` still takes natural-gradient steps.

    :param int num_iterations: inner coordinate-ascent sweeps.
    """

    def __init__(self, model, pgm, encoder, *, num_iterations: int = 20, **kwargs):
        if not hasattr(pgm, "mean_field_posterior"):
            raise TypeError(f"{type(pgm).__name__} has no mean-field inner loop for an SVAE")
        super().__init__(model, pgm, encoder, factor="tied", **kwargs)
        self.num_iterations = num_iterations

    def posterior(self, potential, global_posterior):
        return self.pgm.mean_field_posterior(potential, global_posterior, self.num_iterations)
