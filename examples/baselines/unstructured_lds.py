r"""
The LDS model of :class:`~pyro_sin.models.DeepLatentSequence` with the guide a Pyro
user would write today: point estimates of the dynamics and per-step Gaussians
``q(x_t | y) = N(J_t⁻¹h_t, J_t⁻¹)`` from a bidirectional RNN (independent across
time given the RNN, in the style of Pyro's deep Markov model example), trained
with ``Trace_ELBO`` and Adam.
"""

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule, PyroParam

from pyro_sin.evaluation import decoded_mean
from pyro_sin.metrics import importance_log_likelihood
from pyro_sin.models import DeepLatentSequence, data_plate, frame_likelihood
from pyro_sin.pgm.lds import LDSParams, rollout


class UnstructuredLDSGuide(PyroModule):
    """
    :param DeepLatentSequence model: the generative model.
    :param encoder: a :class:`~pyro_sin.nn.SequenceEncoder`.
    """

    def __init__(self, model: DeepLatentSequence, encoder):
        super().__init__(name="UnstructuredLDSGuide")
        self._model = (model,)
        pgm = model.pgm
        prior = pgm.prior()
        self.encoder = encoder
        self.transition = PyroParam(prior.loc.detach().clone())
        self.noise_precision = PyroParam(
            prior.expectations().precision.detach().clone(), constraints.positive_definite
        )

    @property
    def model(self):
        return self._model[0]

    def posterior(self, y, mask=None, lengths=None) -> dist.Normal:
        """``q(x_{1:T} | y)``; the RNN sees missing frames as zeros, and no step after a sequence's end."""
        if mask is not None:
            y = y * mask.to(y.dtype)[..., None]
        potential = self.encoder(y, None, lengths)
        steps = dist.Normal(potential.mean, potential.precision.rsqrt()).to_event(1)
        if lengths is not None:
            steps = steps.mask(torch.arange(y.shape[-2], device=y.device) < lengths[..., None])
        return steps.to_event(1)

    def forward(self, y, mask=None, lengths=None, indices=None):
        pgm = self.model.pgm
        pyro.sample(pgm.noise_precision_site, dist.Delta(self.noise_precision, event_dim=2))
        pyro.sample(pgm.transition_site, dist.Delta(self.transition, event_dim=2))
        with data_plate(self.model.num_data, y, indices):
            pyro.sample(pgm.name, self.posterior(y, mask, lengths))

    def dynamics(self) -> LDSParams:
        """The point estimates of ``B = [A b]`` and ``Λ``."""
        return LDSParams(self.transition.detach(), self.noise_precision.detach())

    # ----- evaluation -------------------------------------------------------------

    @torch.no_grad()
    def decode_posterior(self, y, mask=None, num_samples: int = 50):
        x = self.posterior(y, mask).sample((num_samples,))
        return decoded_mean(self.model.decoder, x).mean(0)

    @torch.no_grad()
    def predict(self, y_observed, horizon: int, num_samples: int = 50):
        x_last = self.posterior(y_observed).sample((num_samples,))[..., -1, :]
        future = rollout(self.dynamics(), x_last, horizon)
        return decoded_mean(self.model.decoder, future).mean(0)

    @torch.no_grad()
    def test_log_likelihood(self, y, num_samples: int = 100) -> float:
        q = self.posterior(y)
        x = q.sample((num_samples,))
        chain = self.model.pgm.chain(self.dynamics(), y.shape[-2])
        log_joint = frame_likelihood(self.model.decoder, x).log_prob(y) + chain.log_prob(x)
        return float(importance_log_likelihood(log_joint, q.log_prob(x)).mean())

