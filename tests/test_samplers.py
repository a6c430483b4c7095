"""Tests of `diffregimes.samplers` with exact scores (SCIENCE.md §1–3).

Statistical tolerances were set from measurements with this very set-up (recorded in the
comments); every draw is seeded, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffregimes.process import delta, time_grid
from diffregimes.samplers import SAMPLERS, STOCHASTIC, clone, prior_sample, sample
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
#   euler_maruyama +2.4%, ddpm −3.7%, ddim −1.7%, heun +0.1%, dpm_solver_2m +0.1%
# and of the per-class mean of m̂·x minus |m| at most −0.015 (EM, ddpm, ddim), ~0.001 (2nd
# order). The biases halve with the step count for EM/ddpm/ddim and are O(h²) for heun/dpm.
# With N = 4000 (2000 per class) the statistical SE is 0.6/√2000 ≈ 0.013 on the mean and
# √(2/2000)/√16 ≈ 0.8% on the variance averaged over 16 coordinates; the tolerances below are
# bias + ≥ 4 SE. Measured in this test (seed 11, N = 4000), residual variance / σ² − 1 for the
# (+, −) classes: EM (+3.0%, +2.1%), ddpm (−3.0%, −4.1%), ddim (−3.0%, −1.2%),
# heun (−1.2%, +0.6%), dpm_solver_2m (−1.2%, +0.7%); mean of m̂·x − |m| within ±0.025.
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
