"""The measured speciation time (diffregimes.speciation, metrics.speciation_time_bootstrap)
against the GMM's closed form, σ ≠ 1: bias, and coverage of its bootstrap SE over many seeds.

Cloning is simulated exactly along m̂: the class is sign(m·x), and the projection y = m̂·x of
the GMM's backward dynamics is itself a 1-D SDE (the orthogonal coordinates are free OU
processes), so P parents × S seeds run as one numpy array.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffregimes import metrics, theory
from diffregimes.speciation import speciation_time_fit

PHI = theory.PHI_AT_SPECIATION


@pytest.mark.parametrize("mu_sq, sigma", [(96.0, 0.8), (64.0, 1.5), (1024.0, 1.0), (8.0, 1.0)])
def test_fit_of_the_exact_curve_finds_the_exact_crossing(mu_sq, sigma):
    """Noise-free φ_GMM(t) at 12 clone times spread as the workflow spreads them: the fit's own
    (model) error. With σ = 1, η = log(c_t²/Γ_t) is exactly linear in t and the fit exact;
    σ ≠ 1 bends it: measured +0.0009 (|m|² = 96, σ = 0.8), −0.005 (64, 1.5), and −0.027 at
    (16, 1.5), where the crossing sits at small t and the bend is strongest."""
    t = np.linspace(0.05, 6.0, 12)
    t_star = float(theory.speciation_time_gmm(mu_sq, sigma))
    fit = speciation_time_fit(t, theory.phi_gmm_time(t, mu_sq, sigma))
    assert fit == pytest.approx(t_star, abs=0.01 if sigma != 1 else 2e-3), (fit, t_star)


def test_fit_handles_no_crossing_nan_rows_and_a_floor():
    t = np.linspace(0.5, 5.0, 10)
    assert np.isnan(speciation_time_fit(t, np.full(10, 0.95)))  # never falls to φ*
    assert np.isnan(speciation_time_fit(t, np.full(10, 0.52)))  # never above φ*
    phi = theory.phi_gmm_time(t, 30.0, 0.9)
    both = speciation_time_fit(t, np.stack([phi, np.where(t > 4, np.nan, phi)]))
    assert both.shape == (2,) and np.all(np.isfinite(both)) and abs(both[0] - both[1]) < 0.02
    # a floor Σp² ≠ ½ with its rescaled threshold: the same crossing as the rescaled curve
    floor = 0.62
    scaled = floor + (1 - floor) * (phi - 0.5) / 0.5
    thr = floor + (1 - floor) * (PHI - 0.5) / 0.5
    assert speciation_time_fit(t, scaled, thr, floor) == pytest.approx(
        speciation_time_fit(t, phi),
        abs=1e-3,  # the Bernoulli weights differ slightly
    )


def _simulate_same(mu_sq, sigma, parents, seeds, clone_times, T, dt, rng):
    """same (seeds, clone_time, parent): the two clones of each parent branched at each clone
    time end (at t = 0.01) on the same side of 0, by Euler–Maruyama on the projection
    −dy = [y + 2 s(y, t)] dt + dB, s = [−y + c_t tanh(c_t y/Γ_t)]/Γ_t, c_t = |m| e^{−t}."""
    m, t_end = np.sqrt(mu_sq), 0.01
    knots = np.unique(np.r_[T, t_end, clone_times])[::-1]
    grid = np.concatenate(
        [knots[:1]]
        + [
            np.linspace(a, b, int(np.ceil((a - b) / dt)) + 1)[1:]
            for a, b in zip(knots, knots[1:], strict=False)
        ]
    )
    y = rng.standard_normal(seeds * parents)
    order = np.argsort(-clone_times)
    copies = np.empty((len(clone_times), 2, y.size))
    active = 0
    for i, t in enumerate(grid[:-1]):
        while active < len(order) and clone_times[order[active]] >= t - 1e-12:
            copies[active] = y
            active += 1
        h, e = t - grid[i + 1], np.exp(-t)
        gamma = -np.expm1(-2 * t) + sigma**2 * e * e
        a1, a2, a3 = 1 + h * (1 - 2 / gamma), 2 * h * m * e / gamma, m * e / gamma

        coef = (a1, a2, a3, np.sqrt(2 * h))
        if active < len(order):
            y = _em_step(y, coef, rng)
        if active:
            copies[:active] = _em_step(copies[:active], coef, rng)
    ends = np.empty_like(copies)
    ends[order] = copies
    same = np.sign(ends[:, 0]) == np.sign(ends[:, 1])
    return same.reshape(len(clone_times), seeds, parents).transpose(1, 0, 2)


def _em_step(v, coef, rng):
    a1, a2, a3, noise = coef
    return a1 * v + a2 * np.tanh(a3 * v) + noise * rng.standard_normal(v.shape)


def _per_time_bootstrap(t, same, n_boot, rng):
    """The bootstrap before the fix: each clone time resampled on its own (binomial counts),
    the interpolated crossing."""
    pairs = same.shape[1]
    phi = same.mean(axis=1)
    boot = rng.binomial(pairs, phi, size=(n_boot, phi.size)) / pairs
    values = np.array([metrics.speciation_time_measured(t, b) for b in boot])
    values = values[np.isfinite(values)]
    return metrics.speciation_time_measured(t, phi), values.std(ddof=1)


@pytest.mark.slow
def test_joint_bootstrap_covers_the_exact_crossing_at_the_nominal_rate():
    """GMM σ = 0.8, |m|² = 96 (t* = 2.284), 128 parents, 12 clone times in [0.05, 6] (the
    default grid's layout), 800 seeds: the fit with the parent-joint bootstrap covers t* with
    ±1.96 SE at 0.95 within binomial error (3 SE of 800 draws: 0.023), and its SE matches the
    spread of the estimates over seeds; the interpolated crossing with the per-time bootstrap
    (the code before) under-covers and is less precise."""
    rng = np.random.default_rng(2024)
    mu_sq, sigma, parents, seeds = 96.0, 0.8, 128, 800
    t = np.linspace(0.05, 6.0, 12)
    t_star = float(theory.speciation_time_gmm(mu_sq, sigma))
    same = _simulate_same(mu_sq, sigma, parents, seeds, t, 6.0, 0.02, rng)
    new = np.array([metrics.speciation_time_bootstrap(t, s, 200, rng)[:2] for s in same])
    old = np.array([_per_time_bootstrap(t, s, 200, rng) for s in same])
    cover_se = 3 * np.sqrt(0.95 * 0.05 / seeds)
    results = {}
    for name, (est, se) in (("new", new.T), ("old", old.T)):
        ok = np.isfinite(est) & np.isfinite(se)
        assert ok.mean() > 0.99, name
        est, se = est[ok], se[ok]
        results[name] = dict(
            coverage=np.mean(np.abs(est - t_star) <= 1.96 * se),
            bias_in_se=(est.mean() - t_star) / (est.std(ddof=1) / np.sqrt(est.size)),
            spread=est.std(ddof=1),
            mean_se=se.mean(),
        )
    new_r, old_r = results["new"], results["old"]
    assert abs(new_r["coverage"] - 0.95) < cover_se, results
    assert abs(new_r["bias_in_se"]) < 3, results  # unbiased within its Monte Carlo error
    assert new_r["mean_se"] == pytest.approx(new_r["spread"], rel=0.1), results
    assert old_r["coverage"] < new_r["coverage"], results
    assert new_r["spread"] < 0.85 * old_r["spread"], results  # every clone time informs it


def test_curvature_prior_absorbs_a_shape_other_than_the_gmm():
    """φ of another shape (logistic in t, floor Σp² = 0.25 as for four balanced classes): the
    linear-η fit is biased by its wrong shape, the quadratic one with a curvature prior is not
    (noise-free curve, 12 clone times, the prior's weight set by 512 pairs)."""
    t = np.linspace(0.05, 6.0, 12)
    floor, t0, width = 0.25, 2.3, 0.45
    phi = floor + (1 - floor) / (1 + np.exp((t - t0) / width))
    thr = floor + (1 - floor) * (PHI - 0.5) / 0.5
    exact = t0 + width * np.log((1 - floor) / (thr - floor) - 1)
    linear = speciation_time_fit(t, phi, thr, floor)
    curved = speciation_time_fit(t, phi, thr, floor, pairs=512, curvature_sd=0.5)
    assert abs(curved - exact) < 0.02 < abs(linear - exact), (curved, linear, exact)
