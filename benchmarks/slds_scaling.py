"""
The switching LDS's structured mean-field SIN: what its sweeps cost and how well its
gradients match the converged mean field's.

``time``: milliseconds per ``SVI.step`` (SINELBO + NaturalAdam, free factor, 4 particles)
of the switching LDS beside SAN-LDS (one regime, the exact Kalman-smoother SIN) on the
same data and networks, at T = 100, batch 32, K = 4, then the switching LDS's growth with
T at the same batch::

    python benchmarks/slds_scaling.py time [--lengths 10,100,1000,10000] [--device cpu|cuda]

``gradients``: the relative error ``‖g - g_ref‖ / ‖g_ref‖`` of the gradient of the local
bound (to the encoder's potentials and to a free factor's parameters) after N sweeps,
against a long-sweep reference, for unrolled back-propagation, implicit differentiation
at the last iterate (N adjoint terms), and the last sweep alone (no adjoint), on the
4-regime switching system at T = 100 with potentials read off its true latents::

    python benchmarks/slds_scaling.py gradients [--reference-sweeps 200]
"""

import argparse
import itertools
import resource
import time

import torch

import pyro
from pyro.infer import SVI

from pyro_sin import SINELBO, NaturalAdam
from pyro_sin.datasets import four_regime_system
from pyro_sin.distributions import RegressionStats, regression_conjugate_update
from pyro_sin.models import DeepLatentSequence
from pyro_sin.nn import mirrored_autoencoder
from pyro_sin.pgm import LinearDynamicalSystem, SwitchingLDS
from pyro_sin.pgm.lds import pair_regression_stats
from pyro_sin.pgm.slds import SLDSPosterior
from pyro_sin.potential import GaussianPotential


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----- step time -----------------------------------------------------------------------


def make_svi(pgm, y, device):
    encoder, decoder = mirrored_autoencoder(y.shape[-1], 2, (50, 50))
    model = DeepLatentSequence(pgm.to(device), decoder.to(device), len(y))
    guide = model.make_guide(encoder.to(device), factor="free")
    return SVI(model, guide, NaturalAdam({"lr": 0.01}), SINELBO(num_particles=4, max_plate_nesting=1))


def time_steps(pgms, T, steps, device, batch):
    """
    Seconds per ``SVI.step`` of each PGM on the same data, the steps of the PGMs
    alternating so that a shared machine's load falls on all of them alike.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = four_regime_system(batch, T, obs_dim=10).frames.to(device=device, dtype=torch.get_default_dtype())
    svis = [make_svi(pgm, y, device) for pgm in pgms]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for svi in svis:
        svi.step(y)  # warm-up
    seconds = [0.0] * len(svis)
    for _ in range(steps):
        for i, svi in enumerate(svis):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            svi.step(y)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[i] += (time.perf_counter() - start) / steps
    return seconds


def run_time(args):
    memory_label = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    K, batch = args.num_states, args.batch
    print(f"SVI.step on {args.device}: batch {batch}, D = 2, 10-dim frames, 4 particles, free factor, T = 100")
    for sweeps, gradient in itertools.product(map(int, args.sweeps.split(",")), ("unrolled", "implicit")):
        slds = SwitchingLDS(K, 2, num_sweeps=sweeps, gradient=gradient)
        lds_s, slds_s = time_steps([LinearDynamicalSystem(2), slds], 100, args.steps, args.device, batch)
        print(
            f"  SLDS K = {K}, {sweeps:>2} sweeps, {gradient:<8} {1e3 * slds_s:8.1f} ms   "
            f"SAN-LDS {1e3 * lds_s:6.1f} ms   ratio {slds_s / lds_s:5.1f}",
            flush=True,
        )
    print(f"growth with T (SLDS K = {K}, {args.growth_sweeps} sweeps, {args.growth_gradient}; SAN-LDS alongside):")
    print(f"{'T':>7}{'SLDS ms':>12}{'SAN-LDS ms':>12}{'ratio':>8}{'SLDS us per step of T':>24}{memory_label:>16}")
    for T in map(int, args.lengths.split(",")):
        slds = SwitchingLDS(K, 2, num_sweeps=args.growth_sweeps, gradient=args.growth_gradient)
        steps = args.steps if T < 10000 else 1
        lds_s, slds_s = time_steps([LinearDynamicalSystem(2), slds], T, steps, args.device, batch)
        memory = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else peak_rss_mb()
        row = f"{T:>7}{1e3 * slds_s:>12.1f}{1e3 * lds_s:>12.1f}{slds_s / lds_s:>8.1f}"
        print(f"{row}{1e6 * slds_s / T:>24.1f}{memory:>16.0f}", flush=True)


# ----- gradient bias -----------------------------------------------------------------------


def fitted_slds(data, K, num_sweeps):
    """A switching LDS and natural parameters: the conjugate posterior of the true latents and regimes."""
    slds = SwitchingLDS(K, 2, num_sweeps=num_sweeps)
    x, regimes = data.latents, data.regimes
    weights = torch.nn.functional.one_hot(regimes[:, 1:], K).to(x.dtype)  # (N, T-1, K)
    pairs = torch.cat([x[:, :-1], x[:, 1:]], -1)  # (N, T-1, 2D)
    stats = pair_regression_stats(
        weights.sum((0, 1)),
        torch.einsum("ntk,nti->ki", weights, pairs),
        torch.einsum("ntk,nti,ntj->kij", weights, pairs, pairs),
    )
    natural = slds.prior_natural()
    natural.update(regression_conjugate_update(slds.prior().natural_params, RegressionStats(*stats))._asdict())
    counts = torch.einsum("ntj,ntk->jk", torch.nn.functional.one_hot(regimes[:, :-1], K).to(x.dtype), weights)
    natural["transition_concentration"] = natural["transition_concentration"] + counts
    return slds, natural


def gradients(slds, q, potential, factor_params, num_sweeps, gradient, adjoint_iterations=None):
    h, J = potential.info_vec.detach().requires_grad_(), potential.precision.detach().requires_grad_()
    leaves = [h, J] + list(factor_params.values())
    post = SLDSPosterior(
        GaussianPotential(h, J), slds.free_factor(factor_params), num_sweeps, gradient, adjoint_iterations
    )
    value = slds.local_elbo(q, post).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, leaves)])


def run_gradients(args):
    torch.set_default_dtype(torch.float64)
    K, T, N = 4, 100, args.batch
    data = four_regime_system(N, T, obs_dim=10, seed=1)
    for setting in ("fitted q(θ)", "fresh q(θ)"):
        if setting == "fitted q(θ)":
            slds, natural = fitted_slds(data, K, 1)
        else:
            pyro.set_rng_seed(0)
            slds = SwitchingLDS(K, 2, init_transition_noise=0.3)
            natural = slds.init_natural()
        q = slds.global_posterior(natural)
        params = {k: v.detach().clone().requires_grad_() for k, (v, _) in slds.init_free_factor(natural).items()}
        noise = args.potential_noise
        gen = torch.Generator().manual_seed(0)
        J = torch.full(data.latents.shape, noise**-2)
        h = J * (data.latents + noise * torch.randn(data.latents.shape, generator=gen))
        potential = GaussianPotential(h, J)
        reference = gradients(slds, q, potential, params, args.reference_sweeps, "unrolled")
        check = gradients(slds, q, potential, params, args.reference_sweeps, "implicit")
        print(
            f"{setting}: K = {K}, T = {T}, N = {N}, potentials of std {noise}; reference {args.reference_sweeps} "
            f"sweeps (unrolled vs implicit there: {((check - reference).norm() / reference.norm()).item():.1e})"
        )
        print(f"{'sweeps':>7}{'unrolled':>12}{'implicit':>12}{'last sweep':>12}   (relative gradient error)")
        for sweeps in map(int, args.sweeps_grid.split(",")):
            errors = []
            for gradient, adjoint in (("unrolled", None), ("implicit", None), ("implicit", 0)):
                g = gradients(slds, q, potential, params, sweeps, gradient, adjoint)
                errors.append(((g - reference).norm() / reference.norm()).item())
            print(f"{sweeps:>7}" + "".join(f"{e:>12.2e}" for e in errors), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    timing = sub.add_parser("time")
    timing.add_argument("--lengths", default="10,100,1000,10000")
    timing.add_argument("--steps", type=int, default=3)
    timing.add_argument("--batch", type=int, default=32)
    timing.add_argument("--num-states", type=int, default=4)
    timing.add_argument("--sweeps", default="3,5,10,20")
    timing.add_argument("--growth-sweeps", type=int, default=10)
    timing.add_argument("--growth-gradient", default="unrolled")
    timing.add_argument("--device", default="cpu")
    grads = sub.add_parser("gradients")
    grads.add_argument("--batch", type=int, default=8)
    grads.add_argument("--reference-sweeps", type=int, default=200)
    grads.add_argument("--sweeps-grid", default="1,2,3,5,10,20,50")
    grads.add_argument("--potential-noise", type=float, default=0.3)
    args = parser.parse_args(argv)
    (run_time if args.command == "time" else run_gradients)(args)


if __name__ == "__main__":
    main()
