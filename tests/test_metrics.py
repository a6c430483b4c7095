"""Measurements of SCIENCE.md §3–§5 (diffregimes.metrics) against closed forms, σ ≠ 1."""

import numpy as np
import pytest
import torch

from diffregimes import metrics as me
from diffregimes import theory as th

# ----------------------------------------------------------------------------- §3 cloning


def test_same_class_fraction_and_se():
    a = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 1]])
    b = np.array([[0, 1, 0, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    phi, se = me.same_class_fraction(a, b)
    np.testing.assert_allclose(phi, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(se, [np.sqrt(0.25 / 4), 0.0, 0.0])  # √(φ(1 − φ)/pairs)
    phi_t, _ = me.same_class_fraction(torch.as_tensor(a), torch.as_tensor(b))
    assert phi_t.dtype == np.float64 and np.array_equal(phi_t, phi)
    phi_c, se_c = me.same_nearest_fraction(a, b)  # φ_C is the same statistic on NN indices
    np.testing.assert_allclose(phi_c, phi)
    np.testing.assert_allclose(se_c, se)


def test_speciation_time_measured_gmm_sigma_ne_one():
    # GMM with σ = 1.5, d = 100, μ̃ = 0.8: the φ = 0.7752 crossing is at c_t² = Γ_t,
    # t* = ½ log(dμ̃² + 1 − σ²) = 2.0696, within 0.03 of ½ log Λ = 2.0967.
    sigma, d, mu = 1.5, 100, 0.8
    mu_sq = d * mu**2
    t_star = 0.5 * np.log(mu_sq + 1 - sigma**2)
    # coarse grid h = 0.25: linear-interpolation error measured 2.1e-3 (7.6e-3 at h = 0.5,
    # 2.3e-4 at h = 0.1); tolerance 5e-3
    t = np.arange(0, 6 + 1e-9, 0.25)
    t_meas = me.speciation_time_measured(t, th.phi_gmm_time(t, mu_sq, sigma))
    assert t_meas == pytest.approx(t_star, abs=5e-3)
    assert abs(t_meas - th.speciation_time(sigma**2 + mu_sq)) < 0.035
    # unsorted input gives the same answer
    perm = np.random.default_rng(0).permutation(t.size)
    assert me.speciation_time_measured(t[perm], th.phi_gmm_time(t[perm], mu_sq, sigma)) == t_meas


def test_speciation_time_measured_last_crossing_and_nan():
    thr = th.PHI_AT_SPECIATION
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    # φ dips below, comes back above, then drops for good between t = 3 and 4
    phi = np.array([1.0, 0.7, 0.9, 0.8, 0.6, 0.5])
    expected = 3.0 + (0.8 - thr) / (0.8 - 0.6)
    assert me.speciation_time_measured(t, phi) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(me.speciation_time_measured(t, np.full(6, 0.9)))  # never below
    assert np.isnan(me.speciation_time_measured(t, np.full(6, 0.6)))  # never above
    assert np.isnan(me.speciation_time_measured(t, np.linspace(0.5, 1.0, 6)))  # rising only


def test_speciation_time_bootstrap():
    # Bernoulli clones with the GMM φ(t), σ = 0.7, |m|² = 50, 4000 pairs per clone time
    rng = np.random.default_rng(3)
    sigma, mu_sq = 0.7, 50.0
    t = np.linspace(0.5, 4.0, 15)
    phi_true = th.phi_gmm_time(t, mu_sq, sigma)
    t_star = 0.5 * np.log(mu_sq + 1 - sigma**2)
    same = rng.random((t.size, 4000)) < phi_true[:, None]
    t_s, se = me.speciation_time_bootstrap(t, same, n_boot=400, rng=4)
    assert np.isfinite(se) and 0 < se < 0.05
    # t_S within 4 SE of the truth plus the grid interpolation error (h = 0.25: < 5e-3)
    assert abs(t_s - t_star) < 4 * se + 5e-3
    # reproducible with the same seed
    assert me.speciation_time_bootstrap(t, same, n_boot=400, rng=4) == (t_s, se)


# ----------------------------------------------------------------------------- §4 collapse


def test_collapse_times_hand_made():
    times = np.array([3.0, 2.0, 1.0, 0.5, 0.1])  # descending, last column = end point
    nn = np.array(
        [
            [5, 5, 5, 5, 5],  # never changes → T = 3
            [1, 2, 3, 3, 3],  # last change entering t = 1 → 1.0
            [7, 7, 7, 7, 8],  # changes at the last step → t_min = 0.1
            [4, 9, 4, 9, 9],  # A B A B B: settles at t = 0.5
            [2, 3, 3, 2, 3],  # B A A B A: the final index is lost at t = 0.5 → t_min = 0.1
        ]
    )
    expected = np.array([3.0, 1.0, 0.1, 0.5, 0.1])
    tc = me.collapse_times(nn, times)
    assert tc.dtype == np.float64
    np.testing.assert_array_equal(tc, expected)
    # ascending times with columns reordered accordingly give the same result
    np.testing.assert_array_equal(me.collapse_times(nn[:, ::-1], times[::-1]), expected)
    np.testing.assert_array_equal(me.collapse_times(torch.as_tensor(nn), times), expected)
    # collapse fraction: fraction with t̂_C ≥ t, for each saved t
    frac = me.collapse_fraction(tc, times)
    np.testing.assert_allclose(frac, [1 / 5, 1 / 5, 2 / 5, 3 / 5, 1.0])


# ----------------------------------------------------------------------------- §4 f^e


def _gmm_train(n, d, sigma, mu, seed):
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1
    m = torch.full((d,), mu, dtype=torch.float64)
    return sign * m + sigma * torch.randn(n, d, generator=g, dtype=torch.float64), g


@pytest.mark.slow
def test_excess_entropy_empirical_gmm():
    # ½N(m, σ²I) + ½N(−m, σ²I), σ = 1.5, d = 64, n = 2^14, m = 0.5·ones: α = 0.1516,
    # t_C = 0.997, t_S = ½ log 18.25 = 1.45. 7-14 s on 2 cores. Measured (n_mc = 2048, MC SE
    # 0.002, seeds 0 and 1): |f^e − f| ≤ 0.005 for t ≥ 1.25 (the GMM formula also drops the
    # ≤ log 2/d = 0.011 mixing entropy of the two clusters; 0.0096 with m = ones);
    # |f^e| ≤ 0.003 for t ≤ 0.5; |f^e(6) − α| ≤ 0.0016. Tolerances 0.015 / 0.01 / 0.01.
    n, d, sigma = 2**14, 64, 1.5
    train, g = _gmm_train(n, d, sigma, 0.5, seed=0)
    alpha = np.log(n) / d
    t_c = th.collapse_time_gmm(n, d, sigma)
    t_above = np.array([1.25, 1.5, 2.0, 3.0])
    t_below = np.array([0.1, 0.3, 0.5])
    t = np.r_[t_below, t_above, 6.0]
    f, se = me.excess_entropy_empirical(train, t, n_mc=2048, generator=g)
    assert f.dtype == np.float64 and np.all((se > 0) & (se < 0.003))
    assert np.all(t_above > t_c + 0.25)
    np.testing.assert_allclose(f[3:7], th.excess_entropy_gmm(t_above, alpha, sigma), atol=0.015)
    assert np.all(np.abs(f[:3]) < 0.01)
    assert f[-1] == pytest.approx(alpha, abs=0.01)


def test_excess_entropy_empirical_limits_and_budget():
    d = 16
    # n = 1: P^e is one Gaussian and f^e = 0 exactly: the control variate L + ‖z‖²/2 cancels
    # (up to round-off, 1e-12)
    one = torch.randn(1, d, dtype=torch.float64) * 1.5
    f, se = me.excess_entropy_empirical(
        one, [0.2, 2.0], n_mc=4000, generator=torch.Generator().manual_seed(1)
    )
    np.testing.assert_allclose(f, 0.0, atol=1e-12)
    # n = 2 points 200 apart at t = 0.5: the Gaussians never overlap (overlap term
    # ~e^{−‖Δa‖² e^{−2t}/(8Δ)} ≈ e^{−2900}), so s = s^sep and f^e = 0 up to MC error (5 SE)
    two = torch.zeros(2, d, dtype=torch.float64)
    two[1, 0] = 200.0
    f2, se2 = me.excess_entropy_empirical(
        two, [0.5], n_mc=4000, generator=torch.Generator().manual_seed(2)
    )
    assert abs(f2[0]) <= 5 * se2[0] + 1e-12
    # the same two points 0.01 apart at t = 3 overlap completely: f^e = α = ln 2/d (5 SE)
    two[1, 0] = 0.01
    f3, se3 = me.excess_entropy_empirical(
        two, [3.0], n_mc=4000, generator=torch.Generator().manual_seed(3)
    )
    assert abs(f3[0] - np.log(2) / d) < 5 * se3[0]
    # a tiny memory budget (forces many chunks over centres and samples) gives the same numbers
    train, _ = _gmm_train(3000, d, 0.7, 0.5, seed=5)
    t = [0.3, 1.0]
    fa, _ = me.excess_entropy_empirical(
        train, t, n_mc=700, generator=torch.Generator().manual_seed(6)
    )
    fb, _ = me.excess_entropy_empirical(
        train.numpy(), t, n_mc=700, budget_bytes=2**18, generator=torch.Generator().manual_seed(6)
    )
    np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        me.excess_entropy_empirical(train, [0.0], n_mc=10)


# ----------------------------------------------------------------------------- §5


def test_memorisation_ratio_and_fraction():
    d1 = np.array([1.0, 2.0, 1.0])
    d2 = np.array([4.0, 3.0, 3.0])
    np.testing.assert_allclose(me.memorisation_ratio(d1, d2), [0.25, 2 / 3, 1 / 3])
    # 30 of 100 below 1/3; exactly 1/3 is not memorised (strict inequality)
    ratio = np.r_[np.full(30, 0.1), np.full(60, 0.9), np.full(10, 1 / 3)]
    f, lo, hi = me.memorised_fraction(ratio, n_boot=4000, rng=0)
    assert f == 0.3
    # 95% bootstrap CI ≈ 0.3 ± 1.96 √(0.21/100) = [0.21, 0.39]; tolerance 0.03 on each end
    assert lo < f < hi
    assert lo == pytest.approx(0.21, abs=0.03) and hi == pytest.approx(0.39, abs=0.03)
    assert me.memorised_fraction(np.full(50, 0.9), rng=1) == (0.0, 0.0, 0.0)
    assert me.memorised_fraction(np.full(50, 0.01), rng=1) == (1.0, 1.0, 1.0)
    assert me.memorised_fraction(torch.tensor([0.1, 0.5]), threshold=0.6, rng=1)[0] == 1.0
