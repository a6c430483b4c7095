"""Tests of `diffregimes.scores` against autograd of their own densities and direct formulas.

σ ≠ 1 everywhere (SCIENCE.md §2: σ = 1 makes Γ_t ≡ 1 and hides bugs); float64 unless stated.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from diffregimes.process import delta
from diffregimes.scores import EmpiricalScore, GaussianScore, GMMScore

F64 = torch.float64
TIMES = [1e-3, 0.05, 0.3, 1.0, 3.0]
SIGMAS = [0.7, 1.6]


def _autograd_score(log_density, x, t):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(x, t).sum(), x)
    return grad


def _gmm(d, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, generator=g, dtype=F64)
    m = m / m.norm() * math.sqrt(d) * 0.8  # random direction, |m|² = d μ̃², μ̃ = 0.8
    return GMMScore(m, sigma), g


def _queries(score, t, batch, g):
    """Points typical of P_t: ± m e^{−t} + √Γ_t z, plus points near the decision boundary."""
    d = score.m.shape[0]
    sign = torch.where(torch.rand(batch, generator=g) < 0.5, -1.0, 1.0).to(F64)
    x = sign[:, None] * score.m * math.exp(-t)
    x = x + math.sqrt(score.gamma(t)) * torch.randn(batch, d, generator=g, dtype=F64)
    x[: batch // 4] -= (x[: batch // 4] @ score.m)[:, None] * score.m / (score.m @ score.m)
    return x


# --- GMM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("t", TIMES)
def test_gmm_score_is_gradient_of_log_density(sigma, t):
    score, g = _gmm(7, sigma)
    x = _queries(score, t, 64, g)
    expected = _autograd_score(score.log_density, x, t)
    # both in float64; the score scales like 1/Γ_t, so compare relative to its size
    torch.testing.assert_close(score(x, t), expected, rtol=1e-10, atol=1e-10 / score.gamma(t))


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("t", TIMES)
def test_gmm_log_density_is_the_mixture(sigma, t):
    score, g = _gmm(5, sigma, seed=1)
    x = _queries(score, t, 50, g)
    c, cov = score.m * math.exp(-t), score.gamma(t) * torch.eye(5, dtype=F64)
    lp = torch.stack(
        [MultivariateNormal(c, cov).log_prob(x), MultivariateNormal(-c, cov).log_prob(x)]
    )
    expected = torch.logsumexp(lp, 0) - math.log(2)
    torch.testing.assert_close(score.log_density(x, t), expected, rtol=1e-11, atol=1e-11)
    # and p_+ = ½ N(c) / P_t (Bayes on the two component densities)
    post = torch.exp(lp[0] - math.log(2) - expected)
    torch.testing.assert_close(score.class_posterior(x, t), post, rtol=1e-10, atol=1e-12)


def test_gmm_gamma_and_formula():
    score, g = _gmm(4, 0.7, seed=2)
    t = 0.4
    gam = delta(t) + 0.49 * math.exp(-2 * t)
    assert score.gamma(t) == pytest.approx(gam, rel=1e-14)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    u = math.exp(-t) * (x @ score.m) / gam
    expected = (-x + math.exp(-t) * torch.tanh(u)[:, None] * score.m) / gam
    torch.testing.assert_close(score(x, t), expected, rtol=1e-13, atol=1e-13)


def test_gmm_log_density_far_from_origin_is_finite():
    score, _ = _gmm(3, 0.7)
    x = 1e3 * score.m[None, :]
    ld = score.log_density(x, 1e-3)  # logcosh of a huge argument must not overflow
    assert torch.isfinite(ld).all()


# --- Gaussian -------------------------------------------------------------------------------


def _random_covariance(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)  # non-diagonal, eigenvalues spread
    mean = torch.randn(d, generator=g, dtype=F64)
    return mean, cov, g


@pytest.mark.parametrize("t", TIMES)
def test_gaussian_score_is_gradient_and_formula(t):
    mean, cov, g = _random_covariance(6, seed=3)
    score = GaussianScore.from_covariance(mean, cov)
    x = mean * math.exp(-t) + torch.randn(40, 6, generator=g, dtype=F64)
    expected = _autograd_score(score.log_density, x, t)
    got = score(x, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 / delta(t))
    # direct formula: s = −(e^{−2t}C + Δ_t I)^{−1}(x − μe^{−t})
    sig_t = math.exp(-2 * t) * cov + delta(t) * torch.eye(6, dtype=F64)
    direct = -torch.linalg.solve(sig_t, (x - mean * math.exp(-t)).T).T
    torch.testing.assert_close(got, direct, rtol=1e-9, atol=1e-9 / delta(t))
    # and the log density is that of N(μe^{−t}, e^{−2t}C + Δ_t I)
    lp = MultivariateNormal(mean * math.exp(-t), sig_t).log_prob(x)
    torch.testing.assert_close(score.log_density(x, t), lp, rtol=1e-10, atol=1e-10)


# --- empirical ------------------------------------------------------------------------------


def _train(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return 1.6 * torch.randn(n, d, generator=g, dtype=F64), g  # spread ≠ 1


def _empirical_queries(train, t, batch, g):
    """Exact samples of P_t^e (near the centres at small t) plus some broad points."""
    mu = torch.randint(train.shape[0], (batch,), generator=g)
    x = train[mu] * math.exp(-t) + math.sqrt(delta(t)) * torch.randn(
        batch, train.shape[1], generator=g, dtype=F64
    )
    x[: batch // 5] = 2 * torch.randn(batch // 5, train.shape[1], generator=g, dtype=F64)
    return x


def _direct_log_density(train, x, t):
    """log (1/n) Σ_μ N(x; a^μ e^{−t}, Δ_t I) by direct differences, float64, no chunking."""
    dt, n, d = delta(t), train.shape[0], train.shape[1]
    diff = x[:, None, :] - train[None, :, :] * math.exp(-t)
    logits = -(diff * diff).sum(-1) / (2 * dt)
    return torch.logsumexp(logits, 1) - math.log(n) - 0.5 * d * math.log(2 * math.pi * dt)


N_TRAIN = 301  # not a multiple of any chunk size chunk_sizes produces for these budgets


@pytest.mark.parametrize("t", [1e-3, 0.1, 2.0])
@pytest.mark.parametrize("budget", [4096, 2**26])
def test_empirical_score_matches_direct_autograd(t, budget):
    train, g = _train(N_TRAIN, 4, seed=4)
    x = _empirical_queries(train, t, 50, g)
    score = EmpiricalScore(train, budget_bytes=budget)
    expected = _autograd_score(lambda y, s: _direct_log_density(train, y, s), x, t)
    # the softmax weights carry relative error ~1e-16·‖x‖‖a‖/Δ_t; the score divides the mean by
    # Δ_t once more, so compare at a tolerance scaled by 1/Δ_t
    torch.testing.assert_close(score(x, t), expected, rtol=1e-9, atol=1e-10 / delta(t))


@pytest.mark.parametrize("t", [1e-3, 0.1, 2.0])
@pytest.mark.parametrize("budget", [4096, 2**26])
def test_empirical_log_density_matches_direct(t, budget):
    train, g = _train(N_TRAIN, 4, seed=5)
    x = _empirical_queries(train, t, 50, g)
    got = EmpiricalScore(train, budget_bytes=budget).log_density(x, t)
    # |log P| reaches ~1e3 for broad points at t = 1e-3: float64 relative 1e-12 is round-off
    torch.testing.assert_close(got, _direct_log_density(train, x, t), rtol=1e-12, atol=1e-10)


def test_empirical_float32_close_to_float64_at_small_t():
    t = 1e-3
    train, g = _train(N_TRAIN, 8, seed=6)
    x = _empirical_queries(train, t, 200, g)
    s64 = EmpiricalScore(train, budget_bytes=4096)(x, t)
    s32 = EmpiricalScore(train.float(), budget_bytes=4096)(x.float(), t).double()
    err = (s32 - s64).norm(dim=1) / s64.norm(dim=1)
    # float32 (ε ≈ 6e-8) on the mean of centres with |a| ~ 5 and Δ_t = 2e-3: expected relative
    # error of the score ~ ε|a|/(Δ_t|s|) ~ 1e-5 at worst. Measured: max 9.7e-6, median 1.2e-6;
    # the bound is 10× the measured maximum
    assert err.max().item() < 1e-4, err.max().item()
    assert torch.isfinite(s32).all()


@pytest.mark.parametrize("t", [1e-3, 0.5])
def test_empirical_float32_same_with_either_matrix_product(t, monkeypatch):
    """The float32 score through torch's oneDNN product (the CPU default where it works) and
    through addmm agree to float32 round-off, and both match float64 as above."""
    from diffregimes import neighbours

    train, g = _train(N_TRAIN, 8, seed=6)
    x = _empirical_queries(train, t, 200, g)
    s64 = EmpiricalScore(train, budget_bytes=4096)(x, t)
    fast = EmpiricalScore(train.float(), budget_bytes=4096)(x.float(), t).double()
    monkeypatch.setattr(neighbours, "_onednn_linear", lambda: None)
    slow = EmpiricalScore(train.float(), budget_bytes=4096)(x.float(), t).double()
    for s32 in (fast, slow):
        assert ((s32 - s64).norm(dim=1) / s64.norm(dim=1)).max().item() < 1e-4
    assert ((fast - slow).norm(dim=1) / slow.norm(dim=1)).max().item() < 1e-4


@pytest.mark.parametrize("t", [1e-3, 0.5, 3.0])
def test_empirical_with_one_point_is_point_mass_gaussian(t):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(1, 5, generator=g, dtype=F64)
    x = torch.randn(20, 5, generator=g, dtype=F64)
    emp = EmpiricalScore(a, budget_bytes=4096)
    gauss = GaussianScore.from_covariance(a[0], torch.zeros(5, 5, dtype=F64))  # C = 0
    torch.testing.assert_close(emp(x, t), gauss(x, t), rtol=1e-12, atol=1e-12 / delta(t))
    torch.testing.assert_close(
        emp.log_density(x, t), gauss.log_density(x, t), rtol=1e-12, atol=1e-10
    )


def test_empirical_score_accepts_float64_train_with_float32_queries():
    train, g = _train(50, 3, seed=8)
    x = _empirical_queries(train, 0.2, 10, g)
    s = EmpiricalScore(train)(x.float(), 0.2)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.double(), EmpiricalScore(train)(x, 0.2), rtol=1e-4, atol=1e-4)


def test_gaussian_baseline_is_the_closed_form_score_of_the_training_mean_and_covariance():
    """generate.gaussian_fit: s = −(e^{−2t}Ĉ + Δ_t I)^{−1}(x − μ̂e^{−t}) with μ̂, Ĉ (1/n) of the
    training set, on non-isotropic data (σ ≠ 1, a shifted mean)."""
    import numpy as np

    from diffregimes.generate import gaussian_fit

    rng = np.random.default_rng(0)
    d, n = 6, 500
    a = rng.normal(size=(n, d)) @ np.diag([2.0, 1.5, 1.0, 0.7, 0.5, 0.3]) + 0.8
    score = gaussian_fit(a, torch.float64)
    mu = a.mean(0)
    cov = (a - mu).T @ (a - mu) / n
    x = rng.normal(size=(4, d))
    for t in (0.05, 0.7, 3.0):
        m = np.exp(-2 * t) * cov + (1 - np.exp(-2 * t)) * np.eye(d)
        expected = -np.linalg.solve(m, (x - mu * np.exp(-t)).T).T
        got = score(torch.as_tensor(x), t).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------- the smoothed baseline (SCIENCE.md §7)


def _direct_blurred_log_density(train, x, t, blur):
    """log (1/n) Σ_μ N(x; a^μ e^{−t}, Γ_t I), Γ_t = Δ_t + σ_s² e^{−2t}: the training set
    blurred by N(0, σ_s² I) and noised to t, by direct differences in float64."""
    var = delta(t) + blur**2 * math.exp(-2 * t)
    n, d = train.shape
    diff = x[:, None, :] - train[None, :, :] * math.exp(-t)
    logits = -(diff * diff).sum(-1) / (2 * var)
    return torch.logsumexp(logits, 1) - math.log(n) - 0.5 * d * math.log(2 * math.pi * var)


@pytest.mark.parametrize("t", [1e-3, 0.3, 2.0])
def test_smoothed_score_is_the_score_of_the_blurred_training_set(t):
    """σ_s = 0.4: the gradient (autograd) of the blurred set's log-density, and that density."""
    train, g = _train(N_TRAIN, 4, seed=9)
    x = _empirical_queries(train, t, 50, g)
    score = EmpiricalScore(train, budget_bytes=4096, blur=0.4)
    expected = _autograd_score(lambda y, s: _direct_blurred_log_density(train, y, s, 0.4), x, t)
    torch.testing.assert_close(score(x, t), expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        score.log_density(x, t), _direct_blurred_log_density(train, x, t, 0.4), rtol=1e-12, atol=0
    )
    # and it is not the empirical score: at t = 1e-3 the blur dominates Δ_t
    assert not torch.allclose(score(x, t), EmpiricalScore(train)(x, t), rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smoothed_with_zero_blur_is_the_empirical_score(dtype):
    train, g = _train(N_TRAIN, 8, seed=10)
    x = _empirical_queries(train, 0.05, 64, g).to(dtype)
    train = train.to(dtype)
    for t in (1e-3, 0.05, 1.0):
        torch.testing.assert_close(
            EmpiricalScore(train, 4096, blur=0.0)(x, t),
            EmpiricalScore(train, 4096)(x, t),
            rtol=0,
            atol=0,
        )


# ------------------------------------------- the local patch score (Kamb & Ganguli, §7)


@pytest.mark.parametrize("budget", [2**12, 2**26])  # blocks of queries and of images, or one
@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0])
def test_local_score_with_a_patch_covering_the_image_is_the_empirical_score(t, budget):
    """P = 2·side − 1: from every pixel the (zero-padded) patch holds the whole image, so every
    pixel has the empirical weights."""
    from diffregimes.scores import LocalScore

    g = torch.Generator().manual_seed(0)
    n, c, side = 30, 2, 5
    a = torch.rand(n, c * side * side, generator=g, dtype=F64)
    x = torch.randn(7, c * side * side, generator=g, dtype=F64)
    local = LocalScore(a, (c, side, side), 2 * side - 1, budget)
    torch.testing.assert_close(local(x, t), EmpiricalScore(a)(x, t), rtol=1e-10, atol=1e-12)


def test_local_score_with_one_pixel_patches_has_pixelwise_independent_posteriors():
    """1×1 patches, one channel: each pixel's x̂₀ is the posterior mean of that pixel alone,
    w_μ(i) ∝ exp(−(x_i − a^μ_i e^{−t})²/(2Δ_t)), by brute force on a tiny set."""
    from diffregimes.scores import LocalScore

    g = torch.Generator().manual_seed(1)
    n, side, t = 30, 5, 0.2
    a = torch.rand(n, side * side, generator=g, dtype=F64)
    x = torch.randn(7, side * side, generator=g, dtype=F64)
    w = torch.softmax(-((x[:, None, :] - math.exp(-t) * a[None]) ** 2) / (2 * delta(t)), dim=1)
    expected = (w * a[None]).sum(1)
    local = LocalScore(a, (1, side, side), 1, 2**12)
    torch.testing.assert_close(local.denoised(x, t), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        local(x, t), (math.exp(-t) * expected - x) / delta(t), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="odd"):
        LocalScore(a, (1, side, side), 2)


def test_equivariant_local_score_compares_a_patch_with_the_training_patches_at_every_position():
    """ELS: x̂₀ of a pixel is the posterior mean of the centre of the training patches at any
    position given its own patch: brute force over all n·side² patches, 2 channels, 3×3, and
    1×1 (every training pixel value a candidate for every pixel)."""
    from diffregimes.scores import LocalScore

    g = torch.Generator().manual_seed(2)
    n, c, side, t = 20, 2, 4, 0.2
    a = torch.rand(n, c * side * side, generator=g, dtype=F64)
    x = torch.randn(5, c * side * side, generator=g, dtype=F64)

    def unfold(z):  # (N, L, C·9), channel-major as nn.functional.unfold orders it
        return torch.nn.functional.unfold(z.reshape(-1, c, side, side), 3, padding=1).transpose(
            1, 2
        )

    patches = unfold(a).reshape(-1, c * 9)
    logits = -((unfold(x)[:, :, None] - math.exp(-t) * patches[None, None]) ** 2).sum(-1)
    w = torch.softmax(logits / (2 * delta(t)), dim=2)
    expected = (w[..., None] * patches[None, None][..., [4, 13]]).sum(2)  # (B, L, C)
    els = LocalScore(a, (c, side, side), 3, 2**12, equivariant=True)
    got = els.denoised(x, t).reshape(5, c, side * side).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    gray = a[:, : side * side]
    values = gray.reshape(-1)
    w1 = torch.softmax(-((x[:, :16, None] - math.exp(-t) * values) ** 2) / (2 * delta(t)), dim=2)
    one = LocalScore(gray, (1, side, side), 1, 2**12, equivariant=True)
    torch.testing.assert_close(one.denoised(x[:, :16], t), (w1 * values).sum(2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("budget", [2**10, 2**26])  # training patches unfolded in blocks, or not
def test_local_score_is_the_per_pixel_posterior_given_its_patch_at_its_own_position(budget):
    """LS, 2 channels, 3×3 zero-padded patches: brute force over the training patches at the
    pixel's own position, channel-major layout (C, side, side) as the data are flattened."""
    from diffregimes.scores import LocalScore

    g = torch.Generator().manual_seed(3)
    n, c, side, t = 20, 2, 4, 0.3
    a = torch.rand(n, c * side * side, generator=g, dtype=F64)
    x = torch.randn(5, c * side * side, generator=g, dtype=F64)

    def unfold(z):  # (N, L, C·9)
        return torch.nn.functional.unfold(z.reshape(-1, c, side, side), 3, padding=1).transpose(
            1, 2
        )

    pa, px = unfold(a), unfold(x)  # (n, L, K), (B, L, K)
    logits = -((px[:, None] - math.exp(-t) * pa[None]) ** 2).sum(-1) / (2 * delta(t))  # (B, n, L)
    w = torch.softmax(logits, dim=1)
    pixels = a.reshape(n, c, side * side)  # (n, C, L)
    expected = torch.einsum("bnl,ncl->bcl", w, pixels).reshape(5, -1)
    local = LocalScore(a, (c, side, side), 3, budget)
    torch.testing.assert_close(local.denoised(x, t), expected, rtol=1e-12, atol=1e-14)
