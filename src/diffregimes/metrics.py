"""Measurements on generated trajectories and training sets (SCIENCE.md §3, §4, §5).

Pure functions: inputs may be numpy arrays or torch tensors, outputs are numpy float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from . import process, theory
from .neighbours import SoftmaxKernel
from .speciation import speciation_time_fit

__all__ = [
    "binomial_interval",
    "binomial_se",
    "collapse_fraction",
    "collapse_time_entropy",
    "collapse_time_entropy_level",
    "collapse_times",
    "excess_entropy_empirical",
    "r_squared",
    "memorisation_ratio",
    "memorised_fraction",
    "same_class_fraction",
    "same_nearest_fraction",
    "speciation_time_bootstrap",
    "speciation_time_measured",
]

DEFAULT_BUDGET_BYTES = 64 * 2**20
_MC_ROWS = 512  # Monte Carlo samples generated per block in excess_entropy_empirical


def _np(x, dtype=None):
    """numpy view/copy of a numpy array or torch tensor (any device)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# --------------------------------------------------------------------------- speciation (§3)


def binomial_interval(successes, trials, level=0.95, method="wilson"):
    """Confidence interval of a binomial fraction: Wilson score (default) or Clopper–Pearson
    (``method="exact"``), from scipy.stats.binomtest (SCIENCE.md §5: never of zero width at 0
    or at 1, where the onset of memorisation is decided).

    successes, trials : array_like of int (broadcast). Returns (low, high) float64 arrays; NaN
    where trials is 0."""
    k, n = np.broadcast_arrays(np.asarray(successes), np.asarray(trials))
    lo, hi = np.full(k.shape, np.nan), np.full(k.shape, np.nan)
    for i in np.ndindex(k.shape):
        if n[i] > 0:
            ci = stats.binomtest(int(k[i]), int(n[i])).proportion_ci(level, method=method)
            lo[i], hi[i] = ci.low, ci.high
    return lo, hi


ONE_SIGMA = float(stats.norm.cdf(1.0) - stats.norm.cdf(-1.0))  # 0.6827


def binomial_se(successes, trials):
    """Standard error of a binomial fraction: half the width of its 1σ (68.27 %) Wilson
    interval. Equals √(p(1 − p)/N) to O(1/N) away from the edges and stays > 0 at p = 0 or 1
    (½/(N + 1) there), unlike the plug-in √(p̂(1 − p̂)/N)."""
    lo, hi = binomial_interval(successes, trials, ONE_SIGMA)
    return (hi - lo) / 2.0


def same_class_fraction(labels_a, labels_b):
    """φ(t) = P(same class) of clone pairs, with its SE (SCIENCE.md §3).

    Parameters
    ----------
    labels_a, labels_b : array_like, shape (clone_time, pair)
        Classes of the two clones' end points (a 1-D input is one clone time).

    Returns
    -------
    phi, se : numpy.ndarray, shape (clone_time,)
        φ = mean over pairs of [a == b]; se = `binomial_se` (Wilson, > 0 at φ = 0 and 1).
    """
    a = np.atleast_2d(_np(labels_a))
    b = np.atleast_2d(_np(labels_b))
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    same = (a == b).sum(axis=1)
    return same / a.shape[1], binomial_se(same, a.shape[1])


def speciation_time_measured(clone_times, phi, threshold=theory.PHI_AT_SPECIATION):
    """Measured t_S: where φ(t) last drops below the threshold going backward in t (§3).

    φ is linearly interpolated between the measured clone times (sorted ascending); the result
    is the largest t at which the interpolant crosses from φ ≥ threshold (smaller t) to
    φ < threshold (larger t). This is the exact crossing of the piecewise-linear interpolant,
    i.e. the fine-grid (e.g. 2000-point) construction of SCIENCE.md without its grid error.
    NaN entries of φ are dropped. Returns NaN if there is no such crossing.
    """
    p = _np(phi, np.float64).reshape(-1)
    p = np.where(np.isfinite(p), p, np.nan)  # ±inf is no measurement either
    # φ falls through the threshold where −φ rises through −threshold
    return theory.crossing_time(_np(clone_times, np.float64).reshape(-1), -p, -threshold)


def speciation_time_bootstrap(
    clone_times,
    same,
    n_boot=1000,
    rng=None,
    threshold=theory.PHI_AT_SPECIATION,
    floor=0.5,
    correct=None,
    estimator=None,
):
    """t_S from cloning with a bootstrap SE over parent trajectories (SCIENCE.md §3).

    The clone pairs at every clone time branch from the same parent trajectories (pair j at
    every clone time descends from trajectory j), so a replicate resamples parents jointly:
    one draw of P parents with replacement (multinomial weights), used at every clone time.
    Resampling each clone time on its own would treat correlated φ̂(t_k) as independent.

    Parameters
    ----------
    clone_times : array_like, shape (clone_time,)
    same : array_like of bool, shape (clone_time, pair)
        Whether the two clones of pair j branched at t_k ended in the same class.
    n_boot : int
    rng : numpy.random.Generator or seed
    threshold : float
        φ* whose crossing defines t_S.
    floor : float
        φ's large-t limit Σ p_c².
    correct : callable, optional
        Maps observed φ (any shape) to the corrected one (the class judge's errors), applied
        to the data and to every replicate before the crossing is read.
    estimator : callable, optional
        ``estimator(clone_times, phi (..., K), threshold, floor) -> t (...)``; default
        `speciation.speciation_time_fit` (a fit over every clone time).

    Returns
    -------
    t_s, se, no_crossing : float
        t_S of the full data, the standard deviation (ddof=1) of the replicates that cross,
        and the fraction of replicates without a crossing (se is NaN if fewer than two cross).
    """
    est = speciation_time_fit if estimator is None else estimator
    fix = (lambda p: p) if correct is None else correct
    s = np.atleast_2d(_np(same)).astype(np.float64)
    t = _np(clone_times, np.float64).reshape(-1)
    pairs = s.shape[1]
    t_s = float(est(t, fix(s.mean(axis=1)), threshold, floor))
    weights = _rng(rng).multinomial(pairs, np.full(pairs, 1.0 / pairs), size=n_boot)
    boot = np.asarray(est(t, fix(weights @ s.T / pairs), threshold, floor), dtype=np.float64)
    ok = np.isfinite(boot)
    se = float(boot[ok].std(ddof=1)) if ok.sum() > 1 else float("nan")
    return t_s, se, float(1.0 - ok.mean())


# --------------------------------------------------------------------------- collapse (§4)


def collapse_times(nn_index, times):
    """Per-trajectory collapse time t̂_C (SCIENCE.md §4 (a)).

    t̂_C = the largest saved time t such that the nearest training point (against a^μ e^{−t'})
    at every saved t' ≤ t equals the final one (the index never changes again on the way to
    t_min). A trajectory that changes neighbour at its last step gets t̂_C = t_min; one that
    never changes gets t̂_C = T.

    Parameters
    ----------
    nn_index : array_like of int, shape (sample, time)
        Nearest-neighbour index at each saved time.
    times : array_like, shape (time,)
        Saved OU times, normally descending from T to t_min (other orders are sorted; the end
        point is the smallest time).

    Returns
    -------
    numpy.ndarray, shape (sample,), float64
    """
    idx = np.atleast_2d(_np(nn_index))
    t = _np(times, np.float64).reshape(-1)
    if idx.shape[1] != t.size:
        raise ValueError(f"nn_index has {idx.shape[1]} times, times has {t.size}")
    order = np.argsort(-t, kind="stable")  # descending: column -1 is the end point t_min
    t, idx = t[order], idx[:, order]
    match = idx == idx[:, -1:]
    # suffix[:, j] = all(match[:, j:]); the first True column is the collapse time
    suffix = np.flip(np.logical_and.accumulate(np.flip(match, axis=1), axis=1), axis=1)
    first = np.argmax(suffix, axis=1)  # the last column is always True
    return t[first]


def collapse_fraction(t_collapse, times, level=0.95):
    """Collapse fraction(t) = fraction of trajectories with t̂_C ≥ t (SCIENCE.md §4 (b)), with
    its Wilson interval at `level`: (fraction, low, high), each of shape (time,)."""
    tc = _np(t_collapse, np.float64).reshape(-1, 1)
    t = _np(times, np.float64).reshape(1, -1)
    count = (tc >= t).sum(axis=0)
    lo, hi = binomial_interval(count, tc.shape[0], level)
    return count / tc.shape[0], lo, hi


def same_nearest_fraction(idx_a, idx_b):
    """φ_C(t) = P(two clones end at the same nearest training point) with binomial SE (§4 (c)).

    idx_a, idx_b: (clone_time, pair) final nearest-neighbour indices of the two clones.
    Returns (phi_c, se) with se = `binomial_se` (Wilson, > 0 at 0 and 1).
    """
    return same_class_fraction(idx_a, idx_b)


def excess_entropy_empirical(
    train,
    t,
    n_mc=4096,
    generator=None,
    budget_bytes=DEFAULT_BUDGET_BYTES,
    progress=None,
    blur=0.0,
):
    """Monte Carlo excess entropy f^e(t) of the empirical measure (SCIENCE.md §4).

    With `blur` = σ_s > 0, of the training set blurred by N(0, σ_s² I) (the smoothed baseline,
    SCIENCE.md §7): every Δ_t below becomes Γ_t = Δ_t + σ_s² e^{−2t}, the variance of each
    blurred point at time t, in the samples, in L and in the separated-Gaussians entropy
    s^sep = α + ½ + ½ log(2πΓ_t), so f^e = mean(L)/d + ½ still and t_C is where it reaches 0.

    For each t, n_mc exact samples x = a^μ e^{−t} + √Δ_t z (μ uniform, z ~ N(0, I)) and
    log P_t^e(x) = L(x) − log n − (d/2) log(2πΔ_t), L(x) = logsumexp_μ(−‖x − a^μ e^{−t}‖²/(2Δ_t)).
    Then f^e = mean(log P^e)/d + α + ½ log(2πeΔ_t) with α = ln(n)/d. The normalisation is
    analytic and cancels exactly: f^e = mean(L)/d + ½, so no large numbers are subtracted in
    the final step. Since E‖z‖² = d we average the control variate L + ‖z‖²/2 instead
    (f^e = mean(L + ‖z‖²/2)/d, same expectation): x's own training point contributes
    −‖z‖²/2 to L, so the sum is log(1 + Σ_{ν≠μ} …) ≥ 0, whose variance is far smaller near and
    below t_C (and f^e ≥ 0 exactly, as it must be).

    Accuracy: L is computed in float64 by ``neighbours.SoftmaxKernel.log_partition`` (chunked over
    samples and centres, memory ≤ ``budget_bytes``), which splits −‖x − c‖²/(2Δ) = −‖x‖²/(2Δ) +
    (x·c − ½‖c‖²)/Δ, takes the log-sum-exp over the μ-dependent part with its maximum subtracted
    and adds −‖x‖²/(2Δ) back once per row. Each term has relative error ~1e-16, so L has absolute
    error ~1e-16 (‖x‖² + ‖c‖²)/Δ_t: < 1e-9 for ‖x‖² ~ 1e3 and Δ_t ≥ 1e-4, far below the Monte
    Carlo error std(L)/(d √n_mc).

    Parameters
    ----------
    train : torch.Tensor or numpy.ndarray, shape (n, d)
        Training points a^μ (flattened to (n, -1)); computations run on its device in float64.
    t : array_like
        OU times (> 0).
    n_mc : int
        Monte Carlo samples per time.
    generator : torch.Generator, optional
        On the device of ``train``.
    budget_bytes : int
        Memory budget for the (samples × centres) blocks.
    progress : callable, optional
        Called with the number of samples done after each block (a progress bar).
    blur : float
        σ_s of the blur (0: the empirical measure itself).

    Returns
    -------
    f, se : numpy.ndarray, shape (len(t),)
        f^e(t) and its Monte Carlo standard error std(L + ‖z‖²/2)/(d √n_mc).
    """
    a = train if isinstance(train, torch.Tensor) else torch.as_tensor(np.asarray(train))
    a = a.reshape(a.shape[0], -1).to(torch.float64)
    n, d = a.shape
    dev = a.device
    times = _np(t, np.float64).reshape(-1)
    if np.any(times <= 0):
        raise ValueError("excess_entropy_empirical needs t > 0 (Δ_0 = 0)")
    # Noise is drawn in fixed blocks of _MC_ROWS rows (not budget-dependent), so for a given
    # generator state the result does not depend on budget_bytes (up to round-off).
    rows = _MC_ROWS
    f = np.empty(times.size)
    se = np.empty(times.size)
    for k, tk in enumerate(times):
        scale = math.exp(-tk)
        dlt = process.blurred_variance(tk, blur)  # Γ_t (= Δ_t unblurred)
        centres = a * scale  # a^μ e^{−t}
        kernel = SoftmaxKernel(centres, budget_bytes)
        lse = []
        mu = torch.randint(0, n, (n_mc,), generator=generator, device=dev)  # μ uniform
        for start in range(0, n_mc, rows):
            m = min(rows, n_mc - start)
            z = torch.randn(m, d, generator=generator, device=dev, dtype=torch.float64)
            x = centres[mu[start : start + m]] + math.sqrt(dlt) * z
            lp = kernel.log_partition(x, dlt)
            lse.append(lp + 0.5 * (z * z).sum(1))  # control variate: E[‖z‖²/2] = d/2
            if progress is not None:
                progress(m)
        L = torch.cat(lse).cpu().numpy()
        f[k] = L.mean() / d
        se[k] = L.std(ddof=1) / math.sqrt(n_mc) / d if n_mc > 1 else np.nan
    return f, se


def collapse_time_entropy(t, f_e, f_e_se, z=2.0, n_boot=200, rng=None):
    """Collapse time from the Monte Carlo f^e(t): its zero, read as the largest t at which f^e
    is within `z` SE of 0 (SCIENCE.md §4, pitfall 7), linearly interpolated on f^e − z·SE.

    At finite d f^e ≥ 0 has no exact zero (x's own training point keeps log P^e above the
    separated-Gaussian value), so "zero" means "indistinguishable from 0 at this precision".
    The SE comes from a parametric bootstrap of the per-time Monte Carlo errors (each time's
    samples are independent): f^e(t) + SE(t)·N(0, 1). Returns (t_C, se); t_C is NaN without a
    crossing and se is NaN when fewer than two replicates cross."""
    t = _np(t, np.float64).reshape(-1)
    f = _np(f_e, np.float64).reshape(-1)
    se = _np(f_e_se, np.float64).reshape(-1)
    t_c = theory.collapse_time_from_curve(t, f - z * se)
    noise = _rng(rng).standard_normal((n_boot, f.size)) * se
    boot = np.array([theory.collapse_time_from_curve(t, f + e - z * se) for e in noise])
    boot = boot[np.isfinite(boot)]
    return t_c, float(boot.std(ddof=1)) if boot.size > 1 else float("nan")


def collapse_time_entropy_level(t, f_e, alpha, fraction=0.1):
    """The largest t where f^e falls to `fraction`·α: a fixed level of the finite-d crossover,
    not the zero of f (pitfall 7: 0.1 α sits a few % above the closed-form t_C); kept under a
    name that says so (`t_C_entropy_level`)."""
    return theory.collapse_time_from_curve(t, _np(f_e, np.float64) - fraction * alpha)


# ------------------------------------------------------------- which score a network learns (§7)


def r_squared(score, reference):
    """r²(s_θ, s_ref) = 1 − E‖s_θ − s_ref‖² / E‖s_θ − E s_θ‖² over the rows (points) of two
    (points, d) arrays of scores at the same noised points (SCIENCE.md §7), with its
    delta-method SE over the points (a = ‖s_θ − s_ref‖², b = ‖s_θ − s̄_θ‖² per point:
    Var(Ā/B̄) ≈ [Var a − 2(Ā/B̄) Cov(a, b) + (Ā/B̄)² Var b] / (N B̄²))."""
    s, r = _np(score, np.float64), _np(reference, np.float64)
    a = ((s - r) ** 2).sum(1)
    b = ((s - s.mean(0)) ** 2).sum(1)
    if not b.mean() > 0:  # a constant score: r² is undefined
        return float("nan"), float("nan")
    ratio = a.mean() / b.mean()
    if a.size < 2:
        return float(1 - ratio), float("nan")
    cov = np.cov(a, b)
    var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (a.size * b.mean() ** 2)
    return float(1 - ratio), float(np.sqrt(max(var, 0.0)))


# --------------------------------------------------------------------------- memorisation (§5)


def memorisation_ratio(d1, d2):
    """d₁/d₂, ratio of the two smallest unsquared L2 distances to the training set (§5)."""
    return _np(d1, np.float64) / _np(d2, np.float64)


def memorised_fraction(ratio, threshold=1.0 / 3.0, level=0.95, method="wilson"):
    """f_mem = fraction of samples with d₁/d₂ < threshold (1/3), with its binomial interval
    (Wilson by default, Clopper–Pearson with ``method="exact"``; SCIENCE.md §5). NaN ratios
    (no second neighbour) are dropped.

    Returns
    -------
    f_mem, ci_low, ci_high : float
    """
    r = _np(ratio, np.float64).reshape(-1)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return float("nan"), float("nan"), float("nan")
    count = int(np.sum(r < threshold))
    lo, hi = binomial_interval(count, r.size, level, method)
    return count / r.size, float(lo), float(hi)
