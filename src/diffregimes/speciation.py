"""The measured speciation time: a fit of φ(t) over every clone time (SCIENCE.md §3).

φ(t) measured at K clone times is read off where it crosses φ*. Linear interpolation between
the two clone times beside the crossing throws away every other clone time; here a binomial
regression of φ on t uses them all:

    φ(t) = floor + (1 − floor) h(η(t)),   η(t) = b₀ + b₁ (t − t_c) [+ b₂ (t − t_c)²],

with h the two-cluster shape h(η) = E_z tanh(q + √q z), q = e^η (so floor + (1 − floor) h is
the GMM's φ, SCIENCE.md §3, when η = log(c_t²/Γ_t); for σ = 1 that η is exactly linear in t,
and very nearly so otherwise). `floor` is φ's large-t limit Σ p_c². The fit maximises the
Bernoulli likelihood of the pair outcomes by Fisher scoring; pairs at different clone times
share parents, so this is a working likelihood and the SE comes from the bootstrap over parents
(`metrics.speciation_time_bootstrap`). Data whose φ has another shape (real images) take the
quadratic η with a N(0, curvature_sd²) prior on b₂, which absorbs a bent shape at a small cost
in variance. tests/test_speciation.py checks the bias and the coverage of the SE on simulated
GMM cloning.
"""

from __future__ import annotations

import functools

import numpy as np

from . import theory

_ETA = np.arange(-16.0, 8.0 + 1e-9, 0.002)  # log q: h ≈ q below, h ≈ 1 − O(e^{−q/2}) above


@functools.cache
def _shape_table():
    """(η, h(η), 1 − h(η), h'(η)) of h = E tanh(q + √q z) = 2 φ_GMM(q) − 1, q = e^η."""
    q = np.exp(_ETA)
    one_minus = 2.0 * (1.0 - theory.phi_gmm(q))
    h = 1.0 - one_minus
    small = _ETA < -6  # the series h = q − q² + (4/3) q³ beats 1 − (1 − h) there
    h[small] = q[small] - q[small] ** 2 + (4.0 / 3.0) * q[small] ** 3
    return _ETA, h, np.maximum(one_minus, 0.0), np.gradient(h, _ETA)


def _shape(eta):
    grid, h, one_minus, dh = _shape_table()
    # linear interpolation on the uniform η grid: one index for the three tables (np.interp
    # would search the grid three times; this is the fit's inner loop)
    pos = (np.clip(eta, grid[0], grid[-1]) - grid[0]) / (grid[1] - grid[0])
    i = np.minimum(pos.astype(np.intp), grid.size - 2)
    frac = pos - i

    def lerp(table):
        return table[i] + frac * (table[i + 1] - table[i])

    low = eta < grid[0]  # h ≈ q = e^η, h' ≈ q
    q = np.exp(np.minimum(eta, grid[0]))
    return (
        np.where(low, q, lerp(h)),
        np.where(low, 1.0 - q, lerp(one_minus)),
        np.where(low, q, lerp(dh)),
    )


def _shape_inverse(psi):
    grid, h, _, _ = _shape_table()
    return np.interp(psi, h, grid)  # h increases with η


def speciation_time_fit(
    clone_times,
    phi,
    threshold=theory.PHI_AT_SPECIATION,
    floor=0.5,
    pairs=None,
    curvature_sd=None,
    iterations=100,
):
    """t̂_S: the largest t in [t_1, t_K] where the fitted φ(t) (module docstring) crosses
    `threshold` going down, vectorised over leading axes of `phi` (bootstrap replicates).

    clone_times : (K,); phi : (..., K), NaN entries ignored. With `curvature_sd` the fit is
    quadratic in t with that prior on the curvature, whose weight against the data needs
    `pairs` (pairs per clone time). Returns an array of shape phi.shape[:-1] (a float for 1-D
    phi); NaN where the fit has no decreasing crossing inside the clone times, or fewer than
    degree + 2 clone times are finite."""
    t = np.asarray(clone_times, dtype=np.float64).reshape(-1)
    p = np.asarray(phi, dtype=np.float64)
    lead = p.shape[:-1]
    p = p.reshape(-1, t.size)
    span = 1.0 - floor
    psi_star = (threshold - floor) / span
    if not 0 < psi_star < 1:
        raise ValueError(f"threshold {threshold} must lie between floor {floor} and 1")
    eta_star = float(_shape_inverse(psi_star))
    quadratic = curvature_sd is not None
    if quadratic and pairs is None:
        raise ValueError("a curvature prior needs the number of pairs per clone time")
    use = np.isfinite(p)
    p = np.where(use, p, 0.0)
    w = use * (1.0 if pairs is None else float(pairs))
    t_c = 0.5 * (t.min() + t.max())
    X = np.stack([(t - t_c) ** i for i in range(3 if quadratic else 2)], axis=1)  # (K, k)
    k = X.shape[1]
    penalty = np.zeros(k)
    if quadratic:
        penalty[2] = 1.0 / curvature_sd**2

    # start: weighted least squares on the link scale of the clipped observations
    psi = np.clip((p - floor) / span, 0.02, 0.98)
    w0 = w * psi * (1 - psi)
    A = np.einsum("rk,ki,kj->rij", w0, X, X) + 1e-9 * np.eye(k)
    beta = np.linalg.solve(A, np.einsum("rk,ki,rk->ri", w0, X, _shape_inverse(psi))[..., None])
    beta = beta[..., 0]

    def loglik(b):
        h, one_minus, dh = _shape(b @ X.T)
        mu, one_mu = floor + span * h, span * one_minus
        ll = p * np.log(np.maximum(mu, 1e-300)) + (1 - p) * np.log(np.maximum(one_mu, 1e-300))
        return (w * ll).sum(axis=1) - 0.5 * (penalty * b**2).sum(axis=1), mu, one_mu, dh

    ll, mu, one_mu, dh = loglik(beta)
    done = np.zeros(len(p), dtype=bool)
    for _ in range(iterations):  # Fisher scoring with step halving
        var = np.maximum(mu * one_mu, 1e-12)
        slope = span * dh
        A = np.einsum("rk,ki,kj->rij", w * slope**2 / var, X, X) + np.diag(penalty + 1e-10)
        g = np.einsum("rk,ki->ri", w * (p - mu) * slope / var, X) - penalty * beta
        step = np.linalg.solve(A, g[..., None])[..., 0]
        step *= np.minimum(1.0, 5.0 / np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-300))
        scale, todo = np.ones(len(p)), ~done
        for _ in range(30):
            trial = beta + scale[:, None] * step
            ll_t, mu_t, om_t, dh_t = loglik(trial)
            better = todo & (ll_t >= ll - 1e-12 * np.abs(ll))
            moved = scale * np.abs(step).max(axis=1)
            done |= better & ((moved < 1e-7) | (np.abs(ll_t - ll) < 1e-11 * (1 + np.abs(ll))))
            beta[better], ll[better] = trial[better], ll_t[better]
            mu[better], one_mu[better], dh[better] = mu_t[better], om_t[better], dh_t[better]
            todo &= ~better
            if not todo.any():
                break
            scale = np.where(todo, 0.5 * scale, scale)
        done |= todo  # no ascent along the step: at the maximum to precision
        if done.all():
            break
    root = _last_falling_root(beta, eta_star, t.min() - t_c, t.max() - t_c) + t_c
    out = np.where(use.sum(axis=1) >= k + 1, root, np.nan).reshape(lead)
    return float(out) if out.ndim == 0 else out


def _last_falling_root(beta, eta_star, lo, hi):
    """Largest τ in [lo, hi] with η(τ) = η* and η decreasing there (η = Σ b_i τ^i), per row;
    NaN where there is none."""
    c0, c1 = beta[:, 0] - eta_star, beta[:, 1]
    c2 = beta[:, 2] if beta.shape[1] > 2 else np.zeros_like(c1)
    with np.errstate(divide="ignore", invalid="ignore"):
        flat = np.abs(c2) < 1e-12
        sq = np.sqrt(np.maximum(c1**2 - 4 * c2 * c0, 0.0))
        roots = np.stack(
            [
                np.where(flat, -c0 / c1, (-c1 - sq) / (2 * c2)),
                np.where(flat, -c0 / c1, (-c1 + sq) / (2 * c2)),
            ],
            axis=1,
        )
    with np.errstate(invalid="ignore"):  # NaN roots of a failed fit compare False
        real = (c1**2 - 4 * c2 * c0 >= 0)[:, None]
        falling = c1[:, None] + 2 * c2[:, None] * roots < 0
        ok = real & falling & (roots >= lo) & (roots <= hi)
    best = np.where(ok, roots, -np.inf).max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)
