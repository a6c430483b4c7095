"""Memorisation along training (Bonnaire, Urfin, Biroli & Mézard 2025; SCIENCE.md §5).

The follow-up's time scales measured on a model's checkpoints: τ_mem (f_mem reaches a level;
or the held-out-minus-training DSM loss gap opens), τ_gen (sample quality descends to its plateau),
and their scaling with n and the width W (τ_mem ∝ n W⁻¹, τ_gen ∝ W⁻¹, independent of n).
Pure numerics: arrays and score callables in, numbers out.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from . import process


def first_reach(steps, f, level: float) -> float:
    """First step at which f reaches `level`, interpolated in log(step); NaN if never."""
    steps = np.asarray(steps, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    above = np.flatnonzero(f >= level)
    if above.size == 0:
        return float("nan")
    i = above[0]
    if i == 0:
        return float(steps[0])
    w = (level - f[i - 1]) / (f[i] - f[i - 1])
    return float(np.exp(np.log(steps[i - 1]) + w * (np.log(steps[i]) - np.log(steps[i - 1]))))


def tau_mem(steps, f_mem, level: float, ci_low=None, ci_high=None):
    """τ_mem: first training step at which f_mem reaches `level`, interpolated in log(step)
    between evaluated checkpoints (SCIENCE.md §5), with its interval from the f_mem intervals:
    the upper bounds reach the level first (the early end), the lower bounds last (the late
    end). Any rising measure with an interval serves (the DSM gap too).

    Returns (tau, low, high, censored). Where f_mem never reaches the level, tau is NaN,
    censored is True and the interval is (last step, inf): "> last step" as a lower bound.
    Without intervals, low and high are NaN."""
    steps = np.asarray(steps, dtype=np.float64)
    tau = first_reach(steps, f_mem, level)
    lo = hi = float("nan")
    if ci_low is not None and ci_high is not None:
        lo = first_reach(steps, ci_high, level)
        hi = first_reach(steps, ci_low, level)
        hi = float("inf") if np.isnan(hi) else hi
    censored = bool(np.isnan(tau))
    if censored:
        lo = float(steps[-1]) if not np.isfinite(lo) else max(lo, float(steps[-1]))
        hi = float("inf")
    return tau, lo, hi, censored


def tau_gen(steps, quality, tolerance: float = 0.5):
    """τ_gen: the first step at which a quality measure q (lower is better) has made all but a
    fraction `tolerance` of its drop to its best value, q(s) ≤ q_min + tolerance·(q(s₀) − q_min),
    interpolated in log(step); with the bracket of evaluated checkpoints around it.

    The default, ½, is the middle of the descent to the generalisation plateau. A small
    tolerance marks the end of the descent instead, and its target follows q_min, which is not
    a property of the descent: the best population-score error is the finite-sample error
    (∝ 1/n), reached late at large n and cut short by memorisation at small n, so the end of
    the descent moves later with n although the descent itself does not (docs/science.md).

    Returns (tau, bracket_low, bracket_high); NaN × 3 where q never drops (q(s₀) = q_min)."""
    steps = np.asarray(steps, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(q)
    steps, q = steps[ok], q[ok]
    if q.size < 2 or q[0] <= q.min():
        return float("nan"), float("nan"), float("nan")
    target = q.min() + tolerance * (q[0] - q.min())
    i = int(np.flatnonzero(q <= target)[0])  # ≥ 1: q[0] > target
    w = (q[i - 1] - target) / (q[i - 1] - q[i])
    tau = float(np.exp(np.log(steps[i - 1]) + w * (np.log(steps[i]) - np.log(steps[i - 1]))))
    return tau, float(steps[i - 1]), float(steps[i])


def dsm_losses(score_fn, x0: torch.Tensor, times, generator, draws: int = 1) -> np.ndarray:
    """Per-point DSM loss ℓ(a, t) = E_z ‖ε̂(a e^{−t} + √Δ_t z, t) − z‖²/d with ε̂ = −√Δ_t s
    (the training objective at one noise level), averaged over `draws` noise draws; (points,
    times). The noise is drawn on x0's device from `generator`."""
    out = np.empty((x0.shape[0], len(times)))
    for k, t in enumerate(times):
        t = float(t)
        root = math.sqrt(process.delta(t))
        acc = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        for _ in range(draws):
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            eps = -root * score_fn(process.noised(x0, t, z), t)
            acc += (eps - z).pow(2).mean(dim=1).double()
        out[:, k] = (acc / draws).cpu().numpy()
    return out


def mean_se(v: np.ndarray, axis: int = 0):
    """Mean and standard error of the mean along `axis` (independent draws)."""
    return v.mean(axis), v.std(axis, ddof=1) / math.sqrt(v.shape[axis])


def dsm_gap(held_out: np.ndarray, training: np.ndarray):
    """Held-out minus training DSM loss from per-point losses (points, times): the gap per noise
    level and of the level-averaged loss, each with its SE (the points of each set are
    independent, so the variances add). Zero in expectation for a model that has not seen the
    training points; it opens when the model memorises them.

    Returns (gap(time), se(time), gap_mean, se_mean)."""
    m_test, s_test = mean_se(held_out)
    m_train, s_train = mean_se(training)
    a_test, sa_test = mean_se(held_out.mean(1))
    a_train, sa_train = mean_se(training.mean(1))
    return (
        m_test - m_train,
        np.hypot(s_test, s_train),
        float(a_test - a_train),
        float(math.hypot(sa_test, sa_train)),
    )


def energy_distance(x: torch.Tensor, y: torch.Tensor, blocks: int = 16):
    """Energy distance D² = 2E|X − Y| − E|X − X'| − E|Y − Y'| between samples x (m, d) and y
    (k, d) (Székely & Rizzo 2013), unbiased (U-statistics: no i = j terms), with a delete-a-block
    jackknife SE over `blocks` blocks of both samples. Zero in expectation iff same law."""
    x, y = x.double(), y.double()
    dxy = torch.cdist(x, y).cpu().numpy()
    dxx = torch.cdist(x, x).cpu().numpy()
    dyy = torch.cdist(y, y).cpu().numpy()

    def value(ix, iy):
        a = dxy[np.ix_(ix, iy)].mean()
        bx = dxx[np.ix_(ix, ix)]
        by = dyy[np.ix_(iy, iy)]
        b = bx.sum() / (len(ix) * (len(ix) - 1))
        c = by.sum() / (len(iy) * (len(iy) - 1))
        return 2 * a - b - c

    ix_all, iy_all = np.arange(len(x)), np.arange(len(y))
    full = value(ix_all, iy_all)
    bx = np.array_split(ix_all, blocks)
    by = np.array_split(iy_all, blocks)
    loo = np.array(
        [value(np.setdiff1d(ix_all, bx[b]), np.setdiff1d(iy_all, by[b])) for b in range(blocks)]
    )
    se = math.sqrt((blocks - 1) / blocks * ((loo - loo.mean()) ** 2).sum())
    return float(full), se


# A time scale's interval in the store: (low, high, kind); a CI at the confidence level, or the
# bracket of checkpoints it lies between (uniform within it).
INTERVALS = {
    "tau_mem": ("tau_mem_ci_low", "tau_mem_ci_high", "ci"),
    "tau_mem_dsm": ("tau_mem_dsm_ci_low", "tau_mem_dsm_ci_high", "ci"),
    "tau_gen": ("tau_gen_bracket_low", "tau_gen_bracket_high", "bracket"),
    "tau_gen_end": ("tau_gen_end_bracket_low", "tau_gen_end_bracket_high", "bracket"),
    "tau_gen_energy": ("tau_gen_energy_bracket_low", "tau_gen_energy_bracket_high", "bracket"),
}


def log_sigma(low, high, kind: str, level: float = 0.95) -> np.ndarray:
    """SD of log τ from its interval: a CI at `level` spans ±z σ; a bracket of checkpoints is a
    uniform law on [log low, log high], σ = width/√12."""
    width = np.log(np.asarray(high, dtype=np.float64)) - np.log(np.asarray(low, dtype=np.float64))
    if kind == "bracket":
        return width / math.sqrt(12.0)
    return width / (2 * stats.norm.ppf(0.5 + level / 2))


def scaling_exponent(x, tau, sigma_log, level: float = 0.95) -> dict:
    """Exponent b of τ ∝ x^b by weighted least squares on (log x, log τ), each point weighted
    by 1/σ_i² (σ_i the SD of log τ_i, `log_sigma`). Points without a finite τ or σ (censored:
    never reached) are left out. The SE comes from the σ_i, inflated by √(χ²/dof) when the
    points scatter more than their intervals say (Birge ratio); the CI uses Student's t with
    k − 2 dof.

    Returns exponent, se, ci_low, ci_high, points (used), chi2_dof; NaN with fewer than 3."""
    x, tau = np.asarray(x, dtype=np.float64), np.asarray(tau, dtype=np.float64)
    sigma = np.asarray(sigma_log, dtype=np.float64)
    ok = np.isfinite(tau) & (tau > 0) & np.isfinite(sigma) & (sigma > 0) & (x > 0)
    out = dict(exponent=np.nan, se=np.nan, ci_low=np.nan, ci_high=np.nan, chi2_dof=np.nan)
    out["points"] = int(ok.sum())
    if ok.sum() < 3 or np.unique(x[ok]).size < 2:
        return out
    lx, ly, w = np.log(x[ok]), np.log(tau[ok]), 1.0 / sigma[ok] ** 2
    design = np.column_stack([np.ones_like(lx), lx])
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    coef = cov @ (design.T @ (w * ly))
    dof = int(ok.sum()) - 2
    chi2_dof = float((w * (ly - design @ coef) ** 2).sum() / dof)
    se = math.sqrt(cov[1, 1] * max(1.0, chi2_dof))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    out.update(
        exponent=float(coef[1]),
        se=se,
        ci_low=float(coef[1] - half),
        ci_high=float(coef[1] + half),
        chi2_dof=chi2_dof,
        prefactor=float(np.exp(coef[0])),
    )
    return out


def learned_runs(runs):
    """The runs of a summary (xarray, `run` dim) that have a training axis (learned scores:
    f_mem measured at some step); None when there is none."""
    if "f_mem_by_step" not in runs:
        return None
    sub = runs.isel(run=np.flatnonzero(runs.f_mem_by_step.notnull().any("step").values))
    return sub if sub.sizes["run"] else None


def fit_runs(runs, x: str, tau: str, level: float = 0.95) -> dict:
    """`scaling_exponent` of the time scale `tau` (a key of INTERVALS) against the run
    coordinate or variable `x` (n, model_width) over the runs of a summary (xarray, `run` dim)."""
    low, high, kind = INTERVALS[tau]
    values = [np.asarray(runs[v].values, dtype=np.float64) for v in (x, tau, low, high)]
    return scaling_exponent(values[0], values[1], log_sigma(values[2], values[3], kind, level))
