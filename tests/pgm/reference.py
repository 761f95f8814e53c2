"""
The families' mathematics computed the slow, obvious way, independently of the algorithms under
test: Gaussians assembled densely, state paths enumerated, and the conjugate updates of the
textbook in standard coordinates (docs/mathematics.rst). For small ``K``, ``T`` and ``D`` only.
"""

import itertools
import math

import torch

from pyro.ops.gaussian import Gaussian

_LOG_2PI = math.log(2 * math.pi)


def outer(v: torch.Tensor) -> torch.Tensor:
    return v[..., :, None] * v[..., None, :]


def gaussian_components(potential, factor):
    r"""
    The SIN posterior of per-point potentials ``(B, D)`` under a mixture factor of ``K``
    Gaussians ``f_k(x) = exp(c_k + η_kᵀx - ½ xᵀP_k x)``, per component, by dense algebra:
    ``log ∫ f_k ψ_n`` ``(B, K)``, and the mean ``(B, K, D)`` and covariance ``(B, K, D, D)`` of ``f_k ψ_n``.
    """
    h, J = potential.info_vec, potential.precision
    precision = torch.diag_embed(J)[:, None] + factor.precision
    info = h[:, None] + factor.info_loc
    cov = torch.linalg.inv(precision)
    mean = (cov @ info[..., None])[..., 0]
    D = h.shape[-1]
    log_z = factor.log_weight + 0.5 * (info * mean).sum(-1) + 0.5 * D * _LOG_2PI - 0.5 * torch.logdet(precision)
    return log_z, mean, cov


def chain_joint(init: Gaussian, pair: Gaussian, length: int, info_vec=None, precision=None):
    r"""
    One sequence's Gaussian chain ``exp(init(x_1) + Σ_{t<L} pair_t(x_t, x_{t+1}) + Σ_t ψ_t(x_t))``
    over its first ``L = length`` steps, assembled densely over ``L·D`` dimensions.

    :param Gaussian init: over ``x_1``, batch ``()``.
    :param Gaussian pair: over ``(x_t, x_{t+1})``, batch ``(T-1,)`` or ``()`` (the same for every pair).
    :param info_vec: optional potentials ``ψ_t``, shape ``(T, D)``, with ``precision`` (their diagonal precisions).
    :returns: ``(log Z, mean (L, D), covariance (LD, LD))``.
    """
    D = init.dim()
    n = length * D
    P = torch.zeros(n, n)
    h = torch.zeros(n)
    c = init.log_normalizer.clone()
    P[:D, :D] += init.precision
    h[:D] += init.info_vec
    for t in range(length - 1):
        g = pair if pair.batch_shape == () else pair[(t,)]
        s = slice(t * D, (t + 2) * D)
        P[s, s] += g.precision
        h[s] += g.info_vec
        c = c + g.log_normalizer
    if info_vec is not None:
        P += torch.diag(precision[:length].reshape(-1))
        h += info_vec[:length].reshape(-1)
    cov = torch.linalg.inv(P)
    mean = cov @ h
    log_z = c + 0.5 * h @ mean + 0.5 * n * _LOG_2PI - 0.5 * torch.logdet(P)
    return log_z, mean.reshape(length, D), cov


def pair_moments(mean: torch.Tensor, cov: torch.Tensor, t: int):
    """``E[(x_{t-1}, x_t)]`` and ``E[(x_{t-1}, x_t)(x_{t-1}, x_t)ᵀ]`` from a dense joint (``1 <= t < L``, 0-based)."""
    D = mean.shape[-1]
    s = slice((t - 1) * D, (t + 1) * D)
    m = mean.reshape(-1)[s]
    return m, cov[s, s] + torch.outer(m, m)


def regression_stats(m: torch.Tensor, second: torch.Tensor):
    r"""
    One transition's regression statistics ``(x_t uᵀ, u uᵀ, x_t x_tᵀ)``, ``u = (x_{t-1}, 1)``, from
    the pair moments ``m = E[(x_{t-1}, x_t)]`` and ``second = E[(x_{t-1}, x_t)(x_{t-1}, x_t)ᵀ]``.
    """
    D = m.shape[-1] // 2
    u_mean = torch.cat([m[:D], torch.ones(1)])
    u_second = torch.outer(u_mean, u_mean)
    u_second[:D, :D] = second[:D, :D]
    cross = torch.cat([second[D:, :D], m[D:, None]], -1)
    return cross, u_second, second[D:, D:]


def hmm_paths(potential, factor, lengths=None):
    """
    Every state path of every sequence: the joint Gaussian of x_{1:L} given the path assembled
    densely over L·D dimensions. Returns log Z, q(z_t), q(z_{t-1}, z_t), the entropy and
    E[x_t], E[x_t x_tᵀ] per state weighted by q(z_t = k).
    """
    h, J = potential.info_vec, potential.precision
    B, T, D = h.shape
    K = factor.init_logits.shape[-1]
    em = factor.emission
    out = dict(
        log_z=torch.empty(B), marg=torch.zeros(B, T, K), pair=torch.zeros(B, T - 1, K, K), entropy=torch.empty(B),
        count=torch.zeros(B, K), sum=torch.zeros(B, K, D), outer=torch.zeros(B, K, D, D),
    )
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        weights, entropies, moments = [], [], []
        for z in itertools.product(range(K), repeat=L):
            P = torch.block_diag(*[torch.diag(J[b, t]) + em.precision[z[t]] for t in range(L)])
            eta = torch.cat([h[b, t] + em.info_loc[z[t]] for t in range(L)])
            const = factor.init_logits[z[0]] + sum(factor.transition_logits[z[t - 1], z[t]] for t in range(1, L))
            const = const + sum(em.log_weight[z[t]] for t in range(L))
            cov = torch.linalg.inv(P)
            mean = cov @ eta
            n = L * D
            weights.append(const + 0.5 * eta @ mean + 0.5 * n * _LOG_2PI - 0.5 * torch.logdet(P))
            entropies.append(0.5 * torch.logdet(2 * math.pi * math.e * cov))
            moments.append((z, mean.reshape(L, D), cov))
        weights = torch.stack(weights)
        log_z = torch.logsumexp(weights, 0)
        probs = (weights - log_z).exp()
        out["log_z"][b] = log_z
        out["entropy"][b] = -(probs * (weights - log_z)).sum() + (probs * torch.stack(entropies)).sum()
        for p, (z, mean, cov) in zip(probs, moments):
            for t in range(L):
                out["marg"][b, t, z[t]] += p
                block = cov[t * D : (t + 1) * D, t * D : (t + 1) * D]
                out["count"][b, z[t]] += p
                out["sum"][b, z[t]] += p * mean[t]
                out["outer"][b, z[t]] += p * (block + torch.outer(mean[t], mean[t]))
            for t in range(1, L):
                out["pair"][b, t - 1, z[t - 1], z[t]] += p
    return out


def normal_wishart_update(prior, count, total, total_outer):
    """
    The Normal-Wishart posterior ``(κ, m, W⁻¹, ν)`` of a prior with batch ``(...)`` given the
    weighted statistics ``Σ w``, ``Σ w x`` and ``Σ w x xᵀ`` (of the same batch).
    """
    kappa = prior.kappa + count
    loc = (prior.kappa[..., None] * prior.loc + total) / kappa[..., None]
    scale_inv = prior.scale_inv + total_outer + prior.kappa[..., None, None] * outer(prior.loc)
    scale_inv = scale_inv - kappa[..., None, None] * outer(loc)
    return {"kappa": kappa, "loc": loc, "scale_inv": scale_inv, "df": prior.df + count}


def regression_update(prior, count, cross, input_outer, output_outer):
    """
    The Matrix-Normal-Wishart posterior ``(K, M, W⁻¹, ν)`` of Bayesian linear regression given the
    weighted statistics ``Σ w``, ``Σ w x uᵀ``, ``Σ w u uᵀ`` and ``Σ w x xᵀ``.
    """
    col_precision = prior.col_precision + input_outer
    loc = (prior.loc @ prior.col_precision + cross) @ torch.linalg.inv(col_precision)
    scale_inv = (
        prior.scale_inv
        + output_outer
        + prior.loc @ prior.col_precision @ prior.loc.transpose(-1, -2)
        - loc @ col_precision @ loc.transpose(-1, -2)
    )
    return {"col_precision": col_precision, "loc": loc, "scale_inv": scale_inv, "df": prior.df + count}
