"""Closed-form predictions of the paper (SCIENCE.md §1, §3, §4).

Everything is numpy/scipy in float64 and vectorised over the time argument. Times are OU times
t (unit-rate Ornstein–Uhlenbeck, Δ_t = 1 − e^{−2t}, SCIENCE.md §1).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .process import blurred_variance
from .process import delta as process_delta

__all__ = [
    "PHI_AT_SPECIATION",
    "collapse_time_from_curve",
    "collapse_time_gmm",
    "covariance_spectrum",
    "delta",
    "excess_entropy_gmm",
    "excess_entropy_spectrum",
    "n_for_collapse_below",
    "phi_gmm",
    "phi_gmm_time",
    "speciation_step_ddpm",
    "speciation_time",
    "speciation_time_gmm",
    "top_eigenvalue",
]

# Quadrature grid for phi_gmm: trapezoid rule in z ~ N(0, 1) on [-10, 10] with step 0.01.
# The integrand tanh(q + √q z) has its nearest complex poles at Im z = π/(2√q), so the
# trapezoid error is ~exp(-π²/(√q h)) (< 1e-40 for q ≤ 100); for larger q the only sharp
# feature sits at z = −√q where the Gaussian weight is < e^{-q/2}. Tails beyond |z| = 10
# weigh < 1e-22.
_Z_STEP = 0.01
_Z = np.arange(-1000, 1001) * _Z_STEP
_W = np.exp(-0.5 * _Z**2) * _Z_STEP / np.sqrt(2.0 * np.pi)
_W[[0, -1]] *= 0.5


def delta(t):
    """Δ_t = 1 − e^{−2t} (SCIENCE.md §1) in float64, −expm1(−2t) for accuracy at small t."""
    return process_delta(np.asarray(t, dtype=np.float64))


def phi_gmm(snr):
    """GMM cloning probability φ as a function of q = c_t²/Γ_t (SCIENCE.md §3).

    φ = ½ ∫ [G(y; c, Γ)² + G(y; −c, Γ)²] / [G(y; c, Γ) + G(y; −c, Γ)] dy. With u = y/√Γ and the
    symmetry y → −y this is φ = ∫ G(u; √q, 1) p₊(u) du, p₊ = ½[1 + tanh(√q u)], i.e.
    φ = ½ + ½ E_z[tanh(q + √q z)], z ~ N(0, 1). We evaluate 1 − φ = E_z[expit(−2(q + √q z))]
    (no cancellation as φ → 1) by a fine trapezoid rule (see ``_Z``). φ(0) = ½, φ(∞) = 1,
    φ(1) = 0.7752.

    Parameters
    ----------
    snr : array_like
        q = c_t²/Γ_t ≥ 0 (any shape).

    Returns
    -------
    numpy.ndarray
        φ(q), float64, same shape as ``snr``.
    """
    q = np.asarray(snr, dtype=np.float64)
    flat = q.reshape(-1)
    out = np.empty_like(flat)
    finite = np.isfinite(flat)
    out[~finite] = np.where(flat[~finite] > 0, 1.0, np.nan)  # q = +inf → 1; NaN stays NaN
    qf = flat[finite]
    if np.any(qf < 0):
        raise ValueError("phi_gmm needs q = c_t^2/Gamma_t >= 0")
    res = np.empty_like(qf)
    step = 256  # chunk over q to bound memory (256 × 2001 float64 = 4 MiB)
    for i in range(0, qf.size, step):
        qc = qf[i : i + step, None]
        one_minus = special.expit(-2.0 * (qc + np.sqrt(qc) * _Z[None, :])) @ _W
        res[i : i + step] = 1.0 - one_minus
    out[finite] = res
    return out.reshape(q.shape)


PHI_AT_SPECIATION: float = float(phi_gmm(1.0))
"""φ at c_t² = Γ_t (the speciation time for σ = 1), ≈ 0.7752 (SCIENCE.md §3)."""


def phi_gmm_time(t, mu_norm_sq, sigma):
    """φ(t) for the two-cluster GMM (SCIENCE.md §3).

    q = c_t²/Γ_t with c_t² = |m|² e^{−2t} and Γ_t = Δ_t + σ² e^{−2t}.

    Parameters
    ----------
    t : array_like
        OU times.
    mu_norm_sq : float
        |m|² = d μ̃².
    sigma : float
        Within-cluster standard deviation σ.
    """
    t = np.asarray(t, dtype=np.float64)
    e2 = np.exp(-2.0 * t)
    gamma = delta(t) + sigma**2 * e2
    return phi_gmm(mu_norm_sq * e2 / gamma)


def speciation_time(Lambda):
    """t_S = ½ log Λ, from Λ e^{−2t_S} = 1 (SCIENCE.md §3; paper Eq. for t_S)."""
    return 0.5 * np.log(np.asarray(Lambda, dtype=np.float64))


def speciation_time_gmm(mu_norm_sq, sigma):
    """Where the GMM's φ(t) crosses 0.7752 exactly: c_t²/Γ_t = 1 at
    t* = ½ log(|m|² + 1 − σ²) (SCIENCE.md §3); ½ log Λ is its large-d approximation."""
    return 0.5 * np.log(np.asarray(mu_norm_sq, dtype=np.float64) + 1.0 - sigma**2)


def speciation_step_ddpm(Lambda, alpha_bar):
    """DDPM-quantised speciation (the paper's Table 1): the first step k_S with ᾱ_k < 1/Λ and
    its OU time t_S = −½ log ᾱ_{k_S}. Steps are counted as the authors' code counts them, from
    0: `alpha_bar[k]` is ᾱ_k, k = 0..K−1 (so MNIST's Λ = 7.66 gives k_S = 446, t_S = 1.0182).
    Returns (k_S, t_S); (NaN, NaN) when Λ ≤ 1 (t_S ≤ 0) or no step gets below 1/Λ."""
    ab = np.asarray(alpha_bar, dtype=np.float64).reshape(-1)
    if not float(Lambda) > 1.0:  # t_S = ½ log Λ ≤ 0: no step of the schedule is before it
        return float("nan"), float("nan")
    below = np.flatnonzero(ab < 1.0 / float(Lambda))
    if below.size == 0:
        return float("nan"), float("nan")
    k = int(below[0])
    return float(k), float(-0.5 * np.log(ab[k]))


def _as_numpy64(x):
    """numpy float64 copy of a numpy array or torch tensor (any device)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def covariance_spectrum(x, center=True):
    """Eigenvalues (descending, float64) of the population covariance of data x (n, d).

    C = Xcᵀ Xc / n with Xc the centred data (SCIENCE.md §3: Λ is the largest eigenvalue of the
    covariance of the centred training data). The non-zero spectrum is obtained from the smaller
    of the d×d covariance and the n×n Gram matrix Xc Xcᵀ / n; min(n, d) values are returned
    (clipped at 0 against round-off). Inputs with more than two axes are flattened to (n, -1).
    """
    x = _as_numpy64(x)
    x = x.reshape(x.shape[0], -1)
    n, d = x.shape
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    mat = (x.T @ x) / n if d <= n else (x @ x.T) / n
    ev = np.linalg.eigvalsh(mat)[::-1]
    return np.clip(ev, 0.0, None)


def top_eigenvalue(x, center=True):
    """Λ = largest eigenvalue of the population covariance of x (n, d) (SCIENCE.md §3)."""
    return float(covariance_spectrum(x, center=center)[0])


def excess_entropy_gmm(t, alpha, sigma, clip=True, blur=0.0):
    """GMM excess entropy f(t) = α − ½ log(1 + σ² e^{−2t}/Δ_t) (SCIENCE.md §4).

    Clipped at 0 (the collapsed phase) unless ``clip=False``. f → α for t → ∞.

    With ``blur`` = σ_s > 0, of the training set blurred by N(0, σ_s² I) (the smoothed
    baseline, §7): its n components have variance Γ_t = Δ_t + σ_s² e^{−2t} and the law it
    approximates Γ_t + σ² e^{−2t}, so Δ_t → Γ_t: f = α − ½ log(1 + σ² e^{−2t}/Γ_t).
    """
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        f = alpha - 0.5 * np.log1p(sigma**2 * np.exp(-2.0 * t) / blurred_variance(t, blur))
    return np.maximum(f, 0.0) if clip else f


def excess_entropy_spectrum(t, alpha, eigvals, d, clip=True, blur=0.0):
    """Gaussian-spectrum excess entropy f(t) = α − (1/2d) Σ_i log(1 + λ_i e^{−2t}/Δ_t) (§4).

    ``eigvals`` may hold fewer than d eigenvalues; the missing ones are 0 and contribute
    nothing. Clipped at 0 unless ``clip=False``. ``blur`` = σ_s: Δ_t → Γ_t as in
    `excess_entropy_gmm`.
    """
    t = np.asarray(t, dtype=np.float64)
    lam = _as_numpy64(eigvals).reshape(-1)
    if lam.size > d:
        raise ValueError(f"got {lam.size} eigenvalues for d = {d}")
    with np.errstate(divide="ignore"):
        ratio = np.exp(-2.0 * t) / blurred_variance(t, blur)  # e^{−2t}/Γ_t
    s = np.log1p(lam[:, None] * ratio.reshape(1, -1)).sum(axis=0).reshape(t.shape)
    f = alpha - s / (2.0 * d)
    return np.maximum(f, 0.0) if clip else f


def collapse_time_gmm(n, d, sigma, blur=0.0):
    """t_C = ½ log(1 + σ²/(n^{2/d} − 1)) for the GMM (SCIENCE.md §4), root of f(t_C) = 0.

    n^{2/d} − 1 is computed as expm1(2 ln(n)/d). With ``blur`` = σ_s (the smoothed baseline)
    the root of `excess_entropy_gmm(..., blur)`: t_C = ½ log(1 + σ²/(n^{2/d} − 1) − σ_s²), and
    0 where σ_s² ≥ σ²/(n^{2/d} − 1) (f > 0 at every t: the blurred set never collapses).
    """
    n = np.asarray(n, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    excess = sigma**2 / np.expm1(2.0 * np.log(n) / d) - blur**2
    return 0.5 * np.log1p(np.maximum(excess, 0.0))


def crossing_time(t, y, level=0.0):
    """The largest t where a curve y(t), linearly interpolated between its points, rises
    through `level`: between the largest t_i with y(t_i) ≤ level and the next point (every
    crossing of the workflow: t_C where f = 0 or f = level·α, t_S where −φ rises through
    −0.7752, a level of f^e/α in the reproduction).

    The curve is sorted by t; NaN entries are dropped. Un-clipped curves give sub-grid accuracy;
    clipped ones (f = 0 below t_C) give the last point with y ≤ level. Returns NaN if y > level
    everywhere or y ≤ level at the largest t (no crossing on the grid)."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    y = _as_numpy64(y).reshape(-1)
    ok = np.isfinite(t) & ~np.isnan(y)
    t, y = t[ok], y[ok]
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    below = np.nonzero(y <= level)[0]
    if below.size == 0 or below[-1] == t.size - 1:
        return float("nan")
    i = below[-1]
    y0, y1 = y[i], y[i + 1]
    if not np.isfinite(y0):  # e.g. f = −inf at t = 0: the crossing is at the grid point
        return float(t[i])
    return float(t[i] + (level - y0) * (t[i + 1] - t[i]) / (y1 - y0))


def collapse_time_from_curve(t, f):
    """Zero crossing t_C of an excess-entropy curve f(t) (SCIENCE.md §4: f(t_C) = 0)."""
    return crossing_time(t, f, 0.0)


def n_for_collapse_below(eps, d, sigma, log=False):
    """Smallest n with t_C ≤ ε for the GMM: n ≥ [1 + σ²/(e^{2ε} − 1)]^{d/2} (SCIENCE.md §4).

    Computed in the log domain, log n = (d/2) log1p(σ²/expm1(2ε)); returns n as float64
    (inf on overflow) or log n if ``log=True``.
    """
    eps = np.asarray(eps, dtype=np.float64)
    log_n = 0.5 * np.asarray(d, dtype=np.float64) * np.log1p(sigma**2 / np.expm1(2.0 * eps))
    if log:
        return log_n
    with np.errstate(over="ignore"):
        return np.exp(log_n)
