"""Tests of `diffregimes.samplers` with exact scores (SCIENCE.md §1–3).

Statistical tolerances were set from measurements with this very set-up (recorded in the
comments); every draw is seeded, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffregimes.process import delta, linear_betas, time_grid
from diffregimes.samplers import (
    SAMPLERS,
    STOCHASTIC,
    clone,
    denoised,
    euler_maruyama,
    prior_sample,
    sample,
)
from diffregimes.scores import GaussianScore, GMMScore

F64 = torch.float64
T, T_MIN, STEPS = 5.0, 1e-3, 200
D, SIGMA, MU = 16, 0.6, 0.5  # |m| = √d μ̃ = 2, Λ = σ² + dμ̃² = 4.36, t_S ≈ 0.74
N = 4000
DETERMINISTIC = sorted(set(SAMPLERS) - STOCHASTIC)


@pytest.fixture(scope="module")
def gmm():
    return GMMScore(torch.ones(D, dtype=F64) * MU, SIGMA)


@pytest.fixture(scope="module")
def grid():
    return time_grid(T, T_MIN, STEPS, "log_snr")


# Measured on this set-up (d = 16, σ = 0.6, μ̃ = 0.5, 200 log-SNR steps, T = 5, t_min = 1e-3),
# with 40 000 samples (statistical error ≈ 0.3% on the variance, 0.004 on the mean), the
# discretisation bias of the per-class residual variance / σ² − 1 is
#   euler_maruyama +2.4%, ddpm +1.7%, ddpm_posterior −3.6%, ddim −1.7%, heun +0.1%,
#   dpm_solver_2m +0.1%
# and of the per-class mean of m̂·x minus |m| at most −0.017 (EM, both ddpm, ddim), ~0.001 (2nd
# order). The biases halve with the step count for EM/ddpm/ddim and are O(h²) for heun/dpm.
# With N = 4000 (2000 per class) the statistical SE is 0.6/√2000 ≈ 0.013 on the mean and
# √(2/2000)/√16 ≈ 0.8% on the variance averaged over 16 coordinates; the tolerances below are
# bias + ≥ 4 SE. Measured in this test (seed 11, N = 4000), residual variance / σ² − 1 for the
# (+, −) classes: EM (+3.0%, +2.1%), ddpm (+2.2%, +1.1%), ddpm_posterior (−3.0%, −4.1%),
# ddim (−3.0%, −1.2%), heun (−1.2%, +0.6%), dpm_solver_2m (−1.2%, +0.7%); mean of m̂·x − |m|
# within ±0.025.
MEAN_TOL = 0.07  # absolute, on m̂·x (|m| = 2)
VAR_TOL = 0.08  # relative, on the residual variance


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reproduces_gmm(name, gmm, grid):
    g = torch.Generator().manual_seed(11)
    x_T = prior_sample(N, D, g, dtype=F64)
    x, traj = sample(gmm, x_T, grid, name, g)
    assert traj is None and x.shape == (N, D) and x.dtype == F64
    m = gmm.m
    norm = m.norm().item()
    y = x @ m / norm
    plus = y > 0
    frac = plus.double().mean().item()
    assert abs(frac - 0.5) < 3 * math.sqrt(0.25 / N), frac  # 3 binomial SE
    for sign, sel in ((1.0, plus), (-1.0, ~plus)):
        assert abs((sign * y[sel]).mean().item() - norm) < MEAN_TOL
        resid = x[sel] - sign * m
        rel = resid.var(0).mean().item() / SIGMA**2 - 1
        assert abs(rel) < VAR_TOL, (name, rel)


def test_heun_reproduces_nonisotropic_gaussian():
    d = 4
    g = torch.Generator().manual_seed(12)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    cov = q @ torch.diag(torch.tensor([0.05, 0.4, 1.7, 3.0], dtype=F64)) @ q.T
    mean = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=F64)
    score = GaussianScore.from_covariance(mean, cov)
    x, _ = sample(score, prior_sample(N, d, g, dtype=F64), time_grid(T, T_MIN, STEPS), "heun", g)
    # whiten with C^{−1/2}: the whitened sample mean has SE 1/√N = 0.016 per entry, the
    # whitened covariance SE √(2/N) = 0.022 (diagonal) and 0.016 (off-diagonal); heun's bias
    # is ~1e-4. Measured (seed 12): max |mean| 0.025, max |cov − I| 0.055. Tolerances: 0.08
    # (5 SE) on the mean, 0.1 (4.5 diagonal SE) on the covariance.
    evals, evecs = torch.linalg.eigh(cov)
    w = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    z = (x - mean) @ w
    assert z.mean(0).abs().max().item() < 0.08
    assert (torch.cov(z.T) - torch.eye(d, dtype=F64)).abs().max().item() < 0.1


@pytest.mark.parametrize("spacing", ["log_snr", "log", "ddpm_linear", "ddpm_cosine"])
@pytest.mark.parametrize("name, order", [("ddim", 1), ("heun", 2), ("dpm_solver_2m", 2)])
def test_deterministic_samplers_convergence_order(name, order, spacing):
    # For a Gaussian the probability-flow ODE is linear and solved exactly by
    # x(t) = x_T √(v_t/v_T), v_t = e^{−2t}v + Δ_t. Measured error ratios 100 → 200 steps:
    # ddim 1.99 (all four grids), heun 3.98–4.14, dpm_solver_2m 3.97–4.16; errors at 200 steps
    # ≤ 8.5e-3 (ddim) and ≤ 1.5e-3 (2nd order). (On the "linear" grid the last step spans
    # Δλ ≈ 4 and every solver is dominated by it, so that grid is not used here.)
    v = torch.tensor([0.36, 2.5], dtype=F64)
    score = GaussianScore(torch.zeros(2, dtype=F64), v, torch.eye(2, dtype=F64))
    x_T = torch.tensor([[1.0, -0.5]], dtype=F64)

    def var(t):
        return math.exp(-2 * t) * v + delta(t)

    err = []
    for steps in (100, 200):
        times = time_grid(T, T_MIN, steps, spacing)  # ddpm grids use the schedule's own ends
        exact = x_T * (var(times[-1]) / var(times[0])).sqrt()
        err.append((sample(score, x_T, times, name)[0] - exact).abs().max().item())
    assert err[0] / err[1] == pytest.approx(2**order, rel=0.15)
    assert err[1] < (2e-2 if order == 1 else 3e-3)


def test_sample_saves_requested_indices(gmm, grid):
    g = torch.Generator().manual_seed(13)
    x_T = prior_sample(64, D, g, dtype=F64)
    save = [0, 5, 77, STEPS]
    x, traj = sample(gmm, x_T, grid, "heun", g, save_idx=save)
    assert traj.shape == (4, 64, D) and traj.dtype == torch.float32 and traj.device.type == "cpu"
    torch.testing.assert_close(traj[0], x_T.float(), rtol=0, atol=0)  # index 0 = prior draw
    torch.testing.assert_close(traj[-1], x.float(), rtol=0, atol=0)
    # a deterministic run stopped at grid index 77 reaches the saved state
    x77, _ = sample(gmm, x_T, grid[:78], "heun")
    torch.testing.assert_close(traj[2], x77.float(), rtol=0, atol=0)


def test_sample_callback_counts_steps(gmm):
    seen = []
    sample(gmm, torch.zeros(3, D, dtype=F64), time_grid(T, T_MIN, 10), "ddim", callback=seen.append)
    assert seen == list(range(1, 11))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_output(name, gmm):
    times = time_grid(T, T_MIN, 30)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample(gmm, prior_sample(50, D, g, dtype=F64), times, name, g, save_idx=[0, 30])

    (a, ta), (b, tb), (c, _) = run(3), run(3), run(4)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_clone_shape_and_independent_noise(name, gmm, grid):
    g = torch.Generator().manual_seed(14)
    start = prior_sample(20, D, g, dtype=F64)
    ends = clone(gmm, start, grid, 150, name, g, copies=3)
    assert ends.shape == (3, 20, D)
    assert not torch.equal(ends[0], ends[1]) and not torch.equal(ends[1], ends[2])
    # copy c of pair p started from start[p]: with no noise left (start at the last grid
    # index) all copies are the start itself
    same = clone(gmm, start, grid, STEPS, name, g, copies=2)
    assert torch.equal(same[0], start) and torch.equal(same[1], start)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_clone_refuses_deterministic_sampler(name, gmm, grid):
    with pytest.raises(ValueError, match="stochastic"):
        clone(gmm, torch.zeros(2, D, dtype=F64), grid, 100, name)


def _same_class(ends, m):
    cls = (ends @ m) > 0  # (copies, pairs)
    return (cls[0] == cls[1]).double().mean().item()


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_cloning_phi_limits(name, gmm, grid):
    # φ(t) = P(two clones end in the same class): → 1 for t ≪ t_S ≈ 0.74, → ½ for t ≫ t_S.
    pairs = 400
    k_small = int(torch.tensor(grid).sub(0.01).abs().argmin())  # t ≈ 0.01
    g = torch.Generator().manual_seed(15)
    x_T = prior_sample(pairs, D, g, dtype=F64)
    _, states = sample(gmm, x_T, grid, name, g, save_idx=[0, k_small])
    start_T = states[0].double()
    phi_T = _same_class(clone(gmm, start_T, grid, 0, name, g), gmm.m)
    phi_small = _same_class(clone(gmm, states[1].double(), grid, k_small, name, g), gmm.m)
    # at t = 0.01, c_t²/Γ_t ≈ 11: closed-form φ = 1 − O(1e-6); allow a few flips
    assert phi_small > 0.98, phi_small
    # at t = T = 5, c_t²/Γ_t ≈ 2e-4: φ = ½; binomial SE √(¼/400) = 0.025, bound = 4 SE
    assert abs(phi_T - 0.5) < 0.1, phi_T


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nan_score_raises_with_time(name):
    def bad(x, t):
        return torch.full_like(x, math.nan) if t < 0.8 else -x  # NaN only at t = 0.5

    times = [2.0, 1.5, 1.0, 0.5, 0.2]
    # heun also evaluates the score at t_next, so it meets the NaN one step earlier
    where = r"t = 1 → 0\.5" if name == "heun" else r"t = 0\.5 → 0\.2"
    with pytest.raises(FloatingPointError, match=where):
        sample(bad, torch.zeros(4, 3, dtype=F64), times, name, torch.Generator().manual_seed(0))


# --- DDPM ancestral steps against Ho, Jain & Abbeel 2020 written in their own variables -----


def _ho_gaussian_score(mean, cov):
    """s(x, t) of N(μ, C) at OU time t, written out: −(e^{−2t}C + Δ_t I)^{−1}(x − μe^{−t})."""

    def score(x, t):
        a = math.exp(-2 * t)
        m = a * cov + (1 - a) * torch.eye(len(mean), dtype=F64)
        return -torch.linalg.solve(m, (x - mean * math.sqrt(a)).T).T

    return score


@pytest.mark.parametrize("k", [2, 40, 300, 1000])  # 1-based DDPM step index, x_k → x_{k−1}
@pytest.mark.parametrize("name, posterior", [("ddpm", False), ("ddpm_posterior", True)])
def test_ddpm_step_is_ho_et_al(name, posterior, k):
    # Ho et al. eq. (11) / Algorithm 2 line 4 with ε̂ = −√(1 − ᾱ_k) s and σ_k² = β_k (ddpm) or
    # β̃_k = β_k (1 − ᾱ_{k−1})/(1 − ᾱ_k) (ddpm_posterior), §3.2; OU times t_k = −½ log ᾱ_k.
    beta = torch.tensor(linear_betas(1000), dtype=F64)
    alpha_bar = torch.cumprod(1 - beta, 0)
    b_k, ab_k, ab_prev = beta[k - 1].item(), alpha_bar[k - 1].item(), alpha_bar[k - 2].item()
    t, t_prev = -0.5 * math.log(ab_k), -0.5 * math.log(ab_prev)
    g = torch.Generator().manual_seed(21)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    cov = q @ torch.diag(torch.tensor([0.04, 0.6, 2.5], dtype=F64)) @ q.T  # σ ≠ 1
    mu = torch.tensor([0.7, -1.2, 0.3], dtype=F64)
    score = _ho_gaussian_score(mu, cov)
    x = torch.randn(5, 3, generator=g, dtype=F64) * 1.3

    eps = -math.sqrt(1 - ab_k) * score(x, t)
    mean = (x - b_k / math.sqrt(1 - ab_k) * eps) / math.sqrt(1 - b_k)
    var = b_k * (1 - ab_prev) / (1 - ab_k) if posterior else b_k
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    expected = mean + math.sqrt(var) * z

    step = SAMPLERS[name]
    got, state = step(score, x, t, t_prev, torch.Generator().manual_seed(5), None, False)
    assert state is None
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    got_last, _ = step(score, x, t, t_prev, torch.Generator().manual_seed(5), None, True)
    torch.testing.assert_close(got_last, mean, rtol=1e-10, atol=1e-12)  # last: no noise
    # through `sample` on the two-point grid: the noise only with noisy_last
    g2 = torch.Generator().manual_seed(5)
    torch.testing.assert_close(sample(score, x, [t, t_prev], name, g2)[0], mean)
    g2 = torch.Generator().manual_seed(5)
    torch.testing.assert_close(
        sample(score, x, [t, t_prev], name, g2, noisy_last=True)[0], expected
    )


def test_denoised_is_ho_et_al_final_step():
    # Ho et al.'s last step x_1 → x_0 (z = 0): x_0 = (x_1 − β_1/√(1 − ᾱ_1) ε̂)/√α_1 with ᾱ_1 = α_1
    # = 1 − β_1, which is Tweedie's x̂₀ at t_1 = −½ log ᾱ_1, the last time of a DDPM grid.
    b_1 = float(linear_betas(1000)[0])
    t_1 = -0.5 * math.log(1 - b_1)
    assert time_grid(T, T_MIN, 1000, "ddpm_linear")[-1] == pytest.approx(t_1, rel=1e-12)
    score = _ho_gaussian_score(
        torch.tensor([0.5, -0.2], dtype=F64), torch.diag(torch.tensor([0.01, 0.3], dtype=F64))
    )
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(22), dtype=F64) * 0.3
    eps = -math.sqrt(b_1) * score(x, t_1)
    x_0 = (x - b_1 / math.sqrt(b_1) * eps) / math.sqrt(1 - b_1)
    torch.testing.assert_close(denoised(score, x, t_1), x_0, rtol=1e-10, atol=1e-12)


def _ho_chain_variance(s2, posterior):
    """Exact variance of x̂₀ after Ho et al.'s chain for x_0 ~ N(0, s²), x_1000 ~ N(0, 1): the
    chain is linear, x_{k−1} = a_k x_k + σ_k z with a_k = (1 − β_k/v_k)/√α_k, v_k = ᾱ_k s² + 1 − ᾱ_k
    (the marginal variance, so s = −x/v_k), then x̂₀ = (1 − (1 − ᾱ_1)/v_1) x_1/√ᾱ_1."""
    beta = linear_betas(1000)
    alpha_bar = (1 - beta).cumprod()
    var = 1.0
    for k in range(999, 0, -1):  # 0-based index k is Ho's step k + 1: x_{k+1} → x_k
        v = alpha_bar[k] * s2 + 1 - alpha_bar[k]
        a = (1 - beta[k] / v) / math.sqrt(1 - beta[k])
        noise = beta[k] * (1 - alpha_bar[k - 1]) / (1 - alpha_bar[k]) if posterior else beta[k]
        var = a * a * var + noise
    v = alpha_bar[0] * s2 + 1 - alpha_bar[0]
    return (1 - (1 - alpha_bar[0]) / v) ** 2 / alpha_bar[0] * var


def test_ddpm_final_variance_of_low_variance_direction():
    # SCIENCE.md pitfall 6: N(0, s²) with s = 0.1 (a low-variance direction), exact score, Ho et
    # al.'s 1000-step linear schedule (the ddpm_linear grid t_1000 → t_1, 999 noisy steps with
    # noisy_last) and the final step x̂₀. The chain is linear, so the exact variance of x̂₀ is
    # known (`_ho_chain_variance`): Var/s² − 1 = +1.54% for ddpm (σ² = β), −7.24% for
    # ddpm_posterior (σ² = β̃); for s = 0.05: +1.55% and −14.3%; s = 0.2: +0.93% and −3.7%.
    # With N = 20 000 the SE of a sample variance is s²√(2/(N − 1)) = 1.0% of s², so ddpm is
    # within 4 SE of s² (bias 1.5 SE) and ddpm_posterior is below s² by more than 3 SE (7.2 SE
    # expected). Measured, Var(x̂₀)/s² − 1: seed 23, N = 20 000: ddpm +1.2%, ddpm_posterior −7.5%;
    # seed 1, N = 400 000 (SE 0.22%): +1.47% and −7.31%, so at such N ddpm's +1.5% bias (the
    # chain's, not the sampler's) would exceed 4 SE of s².
    s, n = 0.1, 20_000
    times = time_grid(T, T_MIN, 1000, "ddpm_linear")  # the schedule's own ends
    assert len(times) == 1000 and times[-1] < 1e-4

    def score(x, t):
        return -x / (math.exp(-2 * t) * s * s + delta(t))

    se = s * s * math.sqrt(2 / (n - 1))
    rel = {}
    for name in ("ddpm", "ddpm_posterior"):
        g = torch.Generator().manual_seed(23)
        x, _ = sample(score, prior_sample(n, 1, g, dtype=F64), times, name, g, noisy_last=True)
        v = denoised(score, x, times[-1]).var().item()
        exact = _ho_chain_variance(s * s, name == "ddpm_posterior")
        assert abs(v - exact) < 4 * se, (name, v, exact)  # the sampler is Ho et al.'s chain
        rel[name] = v / s**2 - 1
        if name == "ddpm":
            assert abs(v - s * s) < 4 * se, rel
        else:
            assert v < s * s - 3 * se, rel
    assert _ho_chain_variance(s * s, False) / s**2 - 1 == pytest.approx(0.0154, abs=1e-3)
    assert _ho_chain_variance(s * s, True) / s**2 - 1 == pytest.approx(-0.0724, abs=1e-3)


@pytest.mark.parametrize("name", ["ddpm", "ddpm_posterior", "euler_maruyama"])
def test_clone_noisy_last(name, gmm, grid):
    # one grid step left: the copies are the same mean without the last noise, differ with it
    start = prior_sample(6, D, torch.Generator().manual_seed(24), dtype=F64)
    g = torch.Generator().manual_seed(25)
    same = clone(gmm, start, grid, STEPS - 1, name, g, copies=2)
    assert torch.equal(same[0], same[1])
    noisy = clone(gmm, start, grid, STEPS - 1, name, g, copies=2, noisy_last=True)
    assert not torch.equal(noisy[0], noisy[1])


@pytest.mark.parametrize("noisy_last", [False, True])
def test_nan_replay_honours_noisy_last(noisy_last):
    # NaN at the last step's score: `_locate` replays from the prior with the generator state
    # saved there, so the generator ends after as many draws as the replayed steps took.
    def bad(x, t):
        return torch.full_like(x, math.nan) if t < 0.8 else -x

    times = [2.0, 1.5, 0.7, 0.2]
    x = torch.zeros(4, 3, dtype=F64)
    g = torch.Generator().manual_seed(26)
    with pytest.raises(FloatingPointError, match=r"t = 0\.7 → 0\.2"):
        sample(bad, x, times, "ddpm", g, noisy_last=noisy_last)
    ref = torch.Generator().manual_seed(26)
    for _ in range(3 if noisy_last else 2):
        torch.randn(x.shape, generator=ref, dtype=F64)
    assert torch.equal(g.get_state(), ref.get_state())


@pytest.mark.parametrize("last", [False, True])
def test_fused_gmm_step_equals_the_generic_euler_maruyama_step(last):
    """GMMScore.euler_maruyama_step (affine + rank one, three passes) is the generic step
    x + h(x + 2s) + √(2h) ξ with the same noise draw, at σ ≠ 1."""
    from diffregimes.scores import GMMScore

    d, t, t_next = 64, 1.3, 1.25
    m = torch.linspace(-1.0, 2.0, d)
    score = GMMScore(m, 0.7)
    x = torch.randn(32, d, generator=torch.Generator().manual_seed(3))
    fused, _ = euler_maruyama(score, x, t, t_next, torch.Generator().manual_seed(5), None, last)
    plain, _ = euler_maruyama(
        lambda y, s: score(y, s), x, t, t_next, torch.Generator().manual_seed(5), None, last
    )
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
