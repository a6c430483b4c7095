"""Closed forms of SCIENCE.md §1, §3, §4 (diffregimes.theory). σ ≠ 1 wherever it matters."""

import numpy as np
import pytest
import torch
from scipy import integrate, optimize

from diffregimes import theory as th

# ----------------------------------------------------------------------------- §1


def test_delta_small_t_and_values():
    # Δ_t = 1 − e^{−2t} ≈ 2t − 2t² at small t: expm1 keeps full relative precision
    assert th.delta(1e-12) == pytest.approx(2e-12, rel=1e-10)
    t = np.array([0.1, 1.0, 3.0])
    np.testing.assert_allclose(th.delta(t), 1 - np.exp(-2 * t), rtol=1e-14)


# ----------------------------------------------------------------------------- §3, φ


def _phi_quad(c, gamma):
    """φ straight from SCIENCE.md §3: ½∫(G₊² + G₋²)/(G₊ + G₋) dy, unnormalised y."""

    def g(y, mu):
        return np.exp(-((y - mu) ** 2) / (2 * gamma)) / np.sqrt(2 * np.pi * gamma)

    def integrand(y):
        gp, gm = g(y, c), g(y, -c)
        s = gp + gm
        return 0.0 if s == 0 else 0.5 * (gp**2 + gm**2) / s

    lim = abs(c) + 40 * np.sqrt(gamma)
    return integrate.quad(integrand, -lim, lim, points=[-c, 0.0, c], epsabs=1e-13, limit=400)[0]


def test_phi_at_speciation():
    # SCIENCE.md §3: φ(c² = Γ) = 0.7752 (4 digits); quadrature agrees with quad to 1e-10
    assert th.PHI_AT_SPECIATION == pytest.approx(0.7752, abs=5e-5)
    assert th.PHI_AT_SPECIATION == pytest.approx(_phi_quad(1.0, 1.0), abs=1e-10)


@pytest.mark.parametrize("c,gamma", [(0.3, 0.49), (1.5, 2.25), (2.0, 1.7), (6.0, 1.3)])
def test_phi_depends_on_q_only_and_matches_quad(c, gamma):
    # Γ ≠ 1 (σ ≠ 1): the reduction to q = c²/Γ must hold; tolerance 1e-9 (quad accuracy)
    assert th.phi_gmm(c**2 / gamma) == pytest.approx(_phi_quad(c, gamma), abs=1e-9)


def test_phi_table_sigma_one():
    # SCIENCE.md §3 table, σ = 1, Λ = 1 + dμ̃² with dμ̃² = 1e4 (Λ large): φ(t_S + δ).
    # Closed form gives 0.99497, 0.92620, 0.77518, 0.63909, 0.56006, 0.50899; the table is
    # rounded to 3 digits, so tolerance 5e-4 (the finite-Λ shift at δ = 0 is 2e-5).
    mu_sq = 1e4
    t_s = th.speciation_time(1.0 + mu_sq)
    dl = np.array([-1, -0.5, 0, 0.5, 1, 2])
    expected = np.array([0.995, 0.926, 0.775, 0.639, 0.560, 0.509])
    np.testing.assert_allclose(th.phi_gmm_time(t_s + dl, mu_sq, 1.0), expected, atol=5e-4)


def test_phi_monotone_and_limits():
    q = np.logspace(-8, 4, 600)
    phi = th.phi_gmm(q)
    assert np.all(np.diff(phi) >= 0)  # non-decreasing everywhere
    assert np.all(np.diff(phi[q < 30]) > 0)  # strictly increasing before saturating at 1
    assert th.phi_gmm(0.0) == 0.5
    # small q: φ − ½ ≈ q/2 (E tanh(q + √q z) ≈ q − q² ...), so 1e-8 → 5e-9
    assert th.phi_gmm(1e-8) == pytest.approx(0.5 + 5e-9, abs=1e-12)
    assert 1 - th.phi_gmm(50.0) < 1e-6
    assert th.phi_gmm(np.inf) == 1.0
    assert th.phi_gmm(np.array([[0.5, 1.0], [2.0, 4.0]])).shape == (2, 2)


def test_speciation_crossing_gmm_sigma_ne_one():
    # φ = PHI_AT_SPECIATION ⇔ c_t² = Γ_t ⇔ dμ̃² e^{−2t} = Δ_t + σ² e^{−2t}
    # ⇔ t* = ½ log(dμ̃² + 1 − σ²); close to t_S = ½ log Λ, Λ = σ² + dμ̃².
    sigma, d, mu = 1.5, 100, 0.8
    mu_sq = d * mu**2
    t_star = 0.5 * np.log(mu_sq + 1 - sigma**2)
    assert th.phi_gmm_time(t_star, mu_sq, sigma) == pytest.approx(th.PHI_AT_SPECIATION, abs=1e-12)
    t_s = th.speciation_time(sigma**2 + mu_sq)
    # |t* − t_S| = ½ log(Λ/(Λ + 1 − 2σ²)) = 0.027 here
    assert abs(t_star - t_s) == pytest.approx(0.5 * np.log(66.25 / 62.75), abs=1e-12)
    assert abs(t_star - t_s) < 0.03


# ----------------------------------------------------------------------------- §3, Λ


def test_top_eigenvalue_known_covariance():
    rng = np.random.default_rng(1)
    d, n = 10, 20000
    lam = np.array([4.0, 2.0, 1.5] + [1.0] * (d - 3))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = q @ np.diag(lam) @ q.T
    x = rng.multivariate_normal(3.0 * np.ones(d), cov, size=n)  # non-zero mean: centred inside
    # sampling SE of the top eigenvalue ≈ λ √(2/n) = 0.04; tolerance 5 SE = 0.2
    assert th.top_eigenvalue(x) == pytest.approx(4.0, abs=0.2)
    ev = th.covariance_spectrum(torch.as_tensor(x))
    assert ev.dtype == np.float64 and np.all(np.diff(ev) <= 0)
    np.testing.assert_allclose(ev, np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1], rtol=1e-10)


def test_covariance_spectrum_gram_path():
    # n < d uses the n×n Gram matrix; non-zero eigenvalues agree with the d×d route to 1e-10
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 100)) * 1.7
    ev = th.covariance_spectrum(x)
    assert ev.shape == (30,)
    xc = x - x.mean(0)
    ref = np.linalg.eigvalsh(xc.T @ xc / 30)[::-1][:30]
    np.testing.assert_allclose(ev[:29], ref[:29], rtol=1e-10)
    assert ev[29] < 1e-10  # centring removes one direction


# ----------------------------------------------------------------------------- §4


def test_excess_entropy_gmm_equals_spectrum_with_gmm_spectrum():
    sigma, d, alpha = 0.7, 20, 0.3
    t = np.linspace(0.01, 5, 400)
    lam = np.full(d, sigma**2)
    for clip in (True, False):
        np.testing.assert_allclose(
            th.excess_entropy_spectrum(t, alpha, lam, d, clip=clip),
            th.excess_entropy_gmm(t, alpha, sigma, clip=clip),
            rtol=1e-12,
            atol=1e-14,
        )
    # missing eigenvalues are zeros
    lam5 = np.array([3.0, 2.0, 1.0, 0.5, 0.1])
    np.testing.assert_allclose(
        th.excess_entropy_spectrum(t, alpha, lam5, d, clip=False),
        th.excess_entropy_spectrum(t, alpha, np.r_[lam5, np.zeros(d - 5)], d, clip=False),
        rtol=1e-14,
    )
    # f → α at large t, clipped at 0 near t = 0
    assert th.excess_entropy_gmm(20.0, alpha, sigma) == pytest.approx(alpha, abs=1e-12)
    assert th.excess_entropy_gmm(1e-4, alpha, sigma) == 0.0


@pytest.mark.parametrize("n,d,sigma", [(2**12, 20, 0.7), (2**14, 64, 1.5), (10**5, 200, 1.3)])
def test_collapse_time_gmm_is_root(n, d, sigma):
    alpha = np.log(n) / d
    t_c = th.collapse_time_gmm(n, d, sigma)
    assert th.excess_entropy_gmm(t_c, alpha, sigma, clip=False) == pytest.approx(0.0, abs=1e-12)
    # from a numeric curve, grid step 1e-3: un-clipped interpolation error measured ~5e-7;
    # clipped curve returns the last grid point with f ≤ 0 (error < grid step); tolerance 1e-3
    t = np.linspace(0.001, 5, 5000)
    f = th.excess_entropy_gmm(t, alpha, sigma, clip=False)
    assert th.collapse_time_from_curve(t, f) == pytest.approx(t_c, abs=1e-3)
    assert th.collapse_time_from_curve(t, np.maximum(f, 0)) == pytest.approx(t_c, abs=1e-3)
    assert th.collapse_time_from_curve(t[::-1], f[::-1]) == pytest.approx(t_c, abs=1e-3)


@pytest.mark.parametrize("n,d,sigma,blur", [(2**12, 20, 0.7, 0.3), (2**14, 64, 1.5, 1.0)])
def test_blurred_collapse_time_is_the_root_of_the_blurred_excess_entropy(n, d, sigma, blur):
    """The smoothed baseline (SCIENCE.md §7): Δ_t → Δ_t + σ_s² e^{−2t} in f; its root is
    ½ log(1 + σ²/(n^{2/d} − 1) − σ_s²), below the unblurred t_C, and the spectrum form with the
    GMM's spectrum (σ² in every direction) gives the same f."""
    alpha = np.log(n) / d
    t_c = th.collapse_time_gmm(n, d, sigma, blur=blur)
    assert 0 < t_c < th.collapse_time_gmm(n, d, sigma)
    assert th.excess_entropy_gmm(t_c, alpha, sigma, clip=False, blur=blur) == pytest.approx(
        0.0, abs=1e-12
    )
    t = np.linspace(0.01, 4, 50)
    np.testing.assert_allclose(
        th.excess_entropy_spectrum(t, alpha, np.full(d, sigma**2), d, clip=False, blur=blur),
        th.excess_entropy_gmm(t, alpha, sigma, clip=False, blur=blur),
        rtol=1e-12,
        atol=1e-14,
    )
    # a blur wider than σ/√(n^{2/d} − 1) never collapses: f(t) > 0 down to t → 0, t_C = 0
    wide = 1.01 * sigma / np.sqrt(np.expm1(2 * alpha))
    assert th.collapse_time_gmm(n, d, sigma, blur=wide) == 0.0
    assert th.excess_entropy_gmm(1e-6, alpha, sigma, clip=False, blur=wide) > 0


def test_collapse_time_from_curve_spectrum_and_nan():
    # non-GMM spectrum: compare with the root from brentq, tolerance 1e-3 (grid 1e-3)
    d, alpha = 50, 0.2
    lam = np.linspace(4.0, 0.1, 30)

    def f(t):
        return th.excess_entropy_spectrum(t, alpha, lam, d, clip=False)

    t = np.linspace(0.001, 5, 5000)
    root = optimize.brentq(f, 1e-3, 5)
    assert th.collapse_time_from_curve(t, f(t)) == pytest.approx(root, abs=1e-3)
    assert np.isnan(th.collapse_time_from_curve(t, np.ones_like(t)))  # never ≤ 0
    assert np.isnan(th.collapse_time_from_curve(t, -np.ones_like(t)))  # never back above 0
    # t = 0 gives f = −inf: handled (crossing found between finite points)
    t0 = np.linspace(0.0, 5, 5001)
    assert th.collapse_time_from_curve(t0, f(t0)) == pytest.approx(root, abs=1e-3)


def test_n_for_collapse_below_inverts_collapse_time():
    sigma = 1.5
    for d in (16, 64, 256):
        for eps in (0.05, 0.3, 1.0):
            n = th.n_for_collapse_below(eps, d, sigma)
            assert th.collapse_time_gmm(n, d, sigma) == pytest.approx(eps, rel=1e-10)
    # log domain: d = 1e4 overflows n but not log n
    log_n = th.n_for_collapse_below(0.1, 10_000, sigma, log=True)
    assert np.isfinite(log_n) and np.isinf(th.n_for_collapse_below(0.1, 10_000, sigma))
    # t_C = ½ log(1 + σ²/expm1(2 log n/d)) with log n supplied through α: same ε back
    assert 0.5 * np.log1p(sigma**2 / np.expm1(2 * log_n / 10_000)) == pytest.approx(0.1)


def test_speciation_time():
    assert th.speciation_time(np.e**2) == pytest.approx(1.0)
    np.testing.assert_allclose(th.speciation_time([1.0, 100.0]), [0.0, np.log(10)])


def test_speciation_time_gmm_is_the_exact_crossing():
    """½ log(|m|² + 1 − σ²) is where φ_GMM = 0.7752, and ½ log Λ is above it (σ ≠ 1)."""
    for mu_sq, sigma in ((8.0, 1.0), (16.0, 1.5), (64.0, 0.7)):
        t_star = float(th.speciation_time_gmm(mu_sq, sigma))
        assert float(th.phi_gmm_time(t_star, mu_sq, sigma)) == pytest.approx(
            th.PHI_AT_SPECIATION, abs=1e-12
        )
    # SCIENCE.md §3: 0.06 lower than ½ log Λ at d = 8, σ = 1; 0.11 at d = 64, μ̃ = 0.5, σ = 1.5
    assert th.speciation_time(9.0) - th.speciation_time_gmm(8.0, 1.0) == pytest.approx(
        0.0589, abs=1e-3
    )
    lam = 1.5**2 + 64 * 0.25
    assert th.speciation_time(lam) - th.speciation_time_gmm(16.0, 1.5) == pytest.approx(
        0.1065, abs=1e-3
    )


@pytest.mark.parametrize(
    "lam, k_s, t_s",
    # the paper's Table 1 (DDPM-quantised t_S, k_S; PAPER.md A): MNIST, CIFAR-10, ImageNet16,
    # ImageNet32, LSUN64
    [
        (7.66, 446, 1.0182),
        (16.72, 526, 1.4118),
        (3.05, 329, 0.5584),
        (12.11, 495, 1.2517),
        (60.52, 635, 2.0518),
    ],
)
def test_speciation_step_ddpm_reproduces_table_1(lam, k_s, t_s):
    from diffregimes import process

    k, t = th.speciation_step_ddpm(lam, process.alphas_bar("linear", 1000))
    assert k == k_s and t == pytest.approx(t_s, abs=1e-4)
    # the first step below 1/Λ: the previous one is not below
    ab = process.alphas_bar("linear", 1000)
    assert ab[k_s] < 1 / lam <= ab[k_s - 1]
    assert np.isnan(th.speciation_step_ddpm(1e9, ab)[0])  # never below 1/Λ
    assert np.isnan(th.speciation_step_ddpm(0.78, ab)[0])  # Λ < 1 (the 8×8 digits): t_S < 0


def test_theory_store_of_a_smoothed_baseline_has_the_blurred_references():
    """The blurred set's law: Λ + σ_s² for ½ log Λ, σ² + σ_s² in the GMM's exact crossing and
    its collapse time; the unblurred store keeps the training set's."""
    from diffregimes import data
    from diffregimes.theory_store import theory_store

    spec = {"kind": "gmm", "mu": 1.0, "sigma": 1.5, "direction": "ones", "test_size": 1}
    train, _ = data.make_synthetic(spec, "g", 16, 64, 0)
    times = np.geomspace(0.01, 4, 12)
    plain = theory_store(train, times, 2, 0, 2**24)
    blurred = theory_store(train, times, 2, 0, 2**24, blur=0.7)
    lam, mu_sq = float(plain.Lambda), float((train["m"].values ** 2).sum())
    assert float(blurred.Lambda) == lam and blurred.attrs["blur_sigma"] == 0.7
    assert float(blurred.t_S_theory) == pytest.approx(0.5 * np.log(lam + 0.49), rel=1e-12)
    assert float(blurred.t_S_gmm) == pytest.approx(
        th.speciation_time_gmm(mu_sq, np.hypot(1.5, 0.7)), rel=1e-12
    )
    assert float(plain.t_S_gmm) == pytest.approx(th.speciation_time_gmm(mu_sq, 1.5), rel=1e-12)
    assert float(blurred.t_C_theory) == pytest.approx(th.collapse_time_gmm(64, 16, 1.5, blur=0.7))
