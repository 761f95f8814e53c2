"""The structured VAE of Johnson et al. (2016): SAN's guide with a mean-field inner loop instead of the SIN."""

from pyro_sin import SINGuide


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
