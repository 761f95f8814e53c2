r"""
The two-stage baseline: a VAE with an i.i.d. ``N(0, I)`` prior on each frame's
latent, then a linear dynamical system fitted (conjugate posterior mean) to the
VAE's latent means. Inference for prediction, imputation and likelihood then
smooths the VAE encoder's per-frame potentials with the fitted LDS.
"""

import torch

from pyro_sin.distributions import MatrixNormalWishart, RegressionStats, regression_conjugate_update
from pyro_sin.evaluation import decoded_mean
from pyro_sin.metrics import importance_log_likelihood
from pyro_sin.models import frame_likelihood
from pyro_sin.pgm.lds import ChainPosterior, LDSParams, rollout


class TwoStageLDS:
    """
    :param vae: a trained :class:`~baselines.VAE` over single frames.
    :param pgm: the :class:`~pyro_sin.pgm.LinearDynamicalSystem` whose prior and
        initial state the fitted dynamics use.
    """

    def __init__(self, vae, pgm):
        self.vae, self.pgm = vae, pgm
        self.dynamics = None

    @torch.no_grad()
    def fit_dynamics(self, sequences) -> LDSParams:
        """Conjugate-posterior mean of ``(B, Λ)`` given the VAE's latent means of the training sequences."""
        x = self.vae.encoder(sequences).mean  # (N, T, D)
        x_prev, x_next = x[:, :-1].reshape(-1, x.shape[-1]), x[:, 1:].reshape(-1, x.shape[-1])
        u = torch.cat([x_prev, torch.ones_like(x_prev[:, :1])], -1)
        stats = RegressionStats(
            x_prev.new_tensor(float(len(u))), x_next.T @ u, u.T @ u, x_next.T @ x_next
        )
        posterior = MatrixNormalWishart.from_natural(
            regression_conjugate_update(self.pgm.prior().natural_params, stats)
        )
        self.dynamics = LDSParams(posterior.loc, posterior.expectations().precision)
        return self.dynamics

    def posterior(self, y, mask=None) -> ChainPosterior:
        """Kalman smoothing of the encoder's potentials under the fitted dynamics."""
        factor = self.pgm.dynamics_factor(self.dynamics)
        return ChainPosterior(self.vae.encoder(y, mask), factor, self.pgm.parallel)

    @torch.no_grad()
    def decode_posterior(self, y, mask=None, num_samples: int = 50):
        x = self.posterior(y, mask).rsample((num_samples,))
        return decoded_mean(self.vae.decoder, x).mean(0)

    @torch.no_grad()
    def predict(self, y_observed, horizon: int, num_samples: int = 50):
        x_last = self.posterior(y_observed).rsample((num_samples,))[..., -1, :]
        return decoded_mean(self.vae.decoder, rollout(self.dynamics, x_last, horizon)).mean(0)

    @torch.no_grad()
    def test_log_likelihood(self, y, num_samples: int = 100) -> float:
        post = self.posterior(y)
        x = post.rsample((num_samples,))
        chain = self.pgm.chain(self.dynamics, y.shape[-2])
        log_joint = frame_likelihood(self.vae.decoder, x).log_prob(y) + chain.log_prob(x)
        return float(importance_log_likelihood(log_joint, post.log_prob(x)).mean())
