"""Tests of `diffregimes.process`: Δ_t, log-SNR, DDPM dictionary and time grids (SCIENCE.md §1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffregimes.process import (
    SPACINGS,
    TimeGrid,
    alphas_bar,
    clone_indices,
    cosine_alphas_bar,
    delta,
    forward_sample,
    linear_betas,
    log_snr,
    saved_indices,
    step_to_time,
    time_from_log_snr,
    time_grid,
    time_to_step,
)

T, T_MIN, STEPS = 5.0, 1e-3, 200


# --- Δ_t and log-SNR ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float", "numpy", "torch"])
def test_delta_accurate_at_tiny_t(kind):
    t = 1e-8
    series = 2 * t - 2 * t**2 + 4 * t**3 / 3  # Taylor series of 1 − e^{−2t}
    arg = {"float": t, "numpy": np.array([t]), "torch": torch.tensor([t], dtype=torch.float64)}
    got = (
        float(np.asarray(delta(arg[kind])).ravel()[0])
        if kind != "torch"
        else delta(arg[kind]).item()
    )
    # 1 − exp(−2t) computed naively would be off by ~1e-9 relative; expm1 is good to ~1 ulp
    assert got == pytest.approx(series, rel=1e-14)


def test_delta_matches_definition_at_moderate_t():
    t = np.array([1e-3, 0.1, 1.0, 5.0])
    np.testing.assert_allclose(delta(t), 1 - np.exp(-2 * t), rtol=1e-12)


def test_log_snr_inverse():
    t = np.geomspace(1e-6, 10.0, 57)
    lam = log_snr(t)
    np.testing.assert_allclose(lam, np.log(np.exp(-2 * t) / (1 - np.exp(-2 * t))), rtol=1e-9)
    # the round trip loses only round-off (λ is smooth and monotone in t)
    np.testing.assert_allclose(time_from_log_snr(lam), t, rtol=1e-10)
    lam2 = np.linspace(-20.0, 20.0, 41)
    np.testing.assert_allclose(log_snr(time_from_log_snr(lam2)), lam2, rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(lam) < 0)  # λ decreases with t


def test_forward_sample_moments():
    g = torch.Generator().manual_seed(0)
    a = torch.full((20000, 3), 2.0, dtype=torch.float64)
    t = 0.4
    x = forward_sample(a, t, g)
    # mean a e^{−t}, variance Δ_t; 5 SE with SE = √(Δ/N) (mean) and Δ√(2/N) (variance)
    n = a.shape[0]
    dt = delta(t)
    assert torch.allclose(x.mean(0), a[0] * math.exp(-t), atol=5 * math.sqrt(dt / n))
    assert torch.allclose(
        x.var(0), torch.full((3,), dt, dtype=torch.float64), atol=5 * dt * math.sqrt(2 / n)
    )


# --- time grids -----------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS)
def test_time_grid_descending_with_ends(spacing):
    grid = time_grid(T, T_MIN, STEPS, spacing)
    assert grid.dtype == np.float64
    assert np.all(np.diff(grid) < 0), "grid must be strictly descending"
    if spacing.startswith("ddpm_"):
        tk = step_to_time(alphas_bar(spacing.removeprefix("ddpm_"), 1000))
        assert grid[0] == tk[-1] and grid[-1] == tk[0]  # the schedule's own ends
        assert len(grid) == STEPS + 1  # 1000 steps, 201 points: no collisions after rounding
    else:
        assert len(grid) == STEPS + 1
        assert grid[0] == T and grid[-1] == T_MIN


def test_ddpm_linear_grid_ends():
    grid = time_grid(T, T_MIN, STEPS, "ddpm_linear")
    ab = np.cumprod(1 - np.linspace(1e-4, 2e-2, 1000))
    # T = −½ log ᾱ_1000 ≈ 5.04, t_min = −½ log(1 − β_1) ≈ 5e-5
    assert grid[0] == pytest.approx(-0.5 * math.log(ab[-1]), rel=1e-12)
    assert 4.9 < grid[0] < 5.2
    assert grid[-1] == pytest.approx(-0.5 * math.log1p(-1e-4), rel=1e-12)


def test_log_snr_grid_uniform_in_lambda():
    grid = time_grid(T, T_MIN, STEPS, "log_snr")
    dl = np.diff(log_snr(grid))
    # float64 round trip through t: relative error of λ steps ~1e-12
    np.testing.assert_allclose(dl, dl[0], rtol=1e-8)
    assert dl[0] > 0


def test_log_and_linear_grids():
    np.testing.assert_allclose(
        np.diff(np.log(time_grid(T, T_MIN, 50, "log"))), math.log(T_MIN / T) / 50, rtol=1e-10
    )
    np.testing.assert_allclose(
        np.diff(time_grid(T, T_MIN, 50, "linear")), (T_MIN - T) / 50, rtol=1e-10
    )


def test_time_grid_rejects_bad_input():
    with pytest.raises(ValueError):
        time_grid(T, T_MIN, 10, "uniform")
    with pytest.raises(ValueError):
        time_grid(T, 0.0, 10, "log_snr")
    with pytest.raises(ValueError):
        time_grid(1e-3, 1.0, 10, "linear")


# --- DDPM dictionary ------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_dictionary(schedule):
    ab = alphas_bar(schedule, 1000)
    tk = step_to_time(ab)
    np.testing.assert_allclose(np.exp(-2 * tk), ab, rtol=1e-13)  # e^{−2 t_k} = ᾱ_k
    np.testing.assert_allclose(delta(tk), 1 - ab, rtol=1e-9, atol=1e-15)  # Δ_{t_k} = 1 − ᾱ_k
    np.testing.assert_array_equal(time_to_step(tk, ab), np.arange(1000))
    assert np.all(np.diff(tk) > 0)


def test_time_to_step_rounds_to_nearest():
    ab = alphas_bar("linear", 1000)
    tk = step_to_time(ab)
    mid = 0.5 * (tk[:-1] + tk[1:])
    k = np.arange(999)
    np.testing.assert_array_equal(time_to_step(mid - 1e-12, ab), k)
    np.testing.assert_array_equal(time_to_step(mid + 1e-12, ab), k + 1)
    assert time_to_step(0.0, ab)[0] == 0 and time_to_step(100.0, ab)[0] == 999


def test_linear_betas():
    b = linear_betas()
    assert b.shape == (1000,) and b[0] == 1e-4 and b[-1] == pytest.approx(2e-2)


def test_cosine_schedule():
    ab = cosine_alphas_bar(1000)
    assert ab.shape == (1000,)
    assert np.all(np.diff(ab) < 0)  # strictly decreasing
    assert np.all(ab > 0) and np.all(ab <= 1)
    # Nichol & Dhariwal eq. 17 without clipping, away from the clipped last step
    k = np.arange(1, 1001)
    s = 0.008
    f = np.cos((k / 1000 + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(ab[:990], f[:990], rtol=1e-10)


# --- saved and clone indices ----------------------------------------------------------------


@pytest.mark.parametrize("num, saved", [(201, 50), (201, 201), (201, 500), (11, 3), (2, 2)])
def test_saved_indices(num, saved):
    idx = saved_indices(num, saved)
    assert idx[0] == 0 and idx[-1] == num - 1
    assert np.all(np.diff(idx) > 0)
    assert len(idx) == min(saved, num)


@pytest.mark.parametrize("saved", [0, 1])
def test_saved_indices_keeps_both_ends_even_when_asked_for_fewer(saved):
    # the end state (index num − 1) is what every downstream metric reads
    np.testing.assert_array_equal(saved_indices(201, saved), [0, 200])
    np.testing.assert_array_equal(saved_indices(1, saved), [0])


def test_time_grid_from_settings():
    cfg = {"T": T, "t_min": T_MIN, "steps": 100, "spacing": "log_snr", "saved": 11}
    grid = TimeGrid.from_settings(cfg)
    np.testing.assert_array_equal(grid.times, time_grid(T, T_MIN, 100, "log_snr"))
    np.testing.assert_array_equal(grid.saved, np.arange(0, 101, 10))
    np.testing.assert_array_equal(grid.saved_times, grid.times[::10])
    assert len(grid) == 101 and not grid.noisy_last
    # another step count keeps T, t_min and spacing (the training axis's DDIM grid)
    ddim = TimeGrid.from_settings(cfg, steps=20)
    assert len(ddim) == 21 and ddim.times[0] == T and ddim.times[-1] == T_MIN
    # a section without `saved` (the probes') keeps both ends; a DDPM grid ends noisy
    bare = {k: v for k, v in cfg.items() if k != "saved"}
    np.testing.assert_array_equal(TimeGrid.from_settings(bare).saved, [0, 100])
    assert TimeGrid.from_settings(bare | {"spacing": "ddpm_linear"}).noisy_last
    # clone times come from the section's T (explicit times must lie on the grid)
    clone_cfg = {"at": None, "times": 5, "t_lo": 0.1}
    np.testing.assert_array_equal(
        grid.clone_indices(clone_cfg), clone_indices(grid.times, 5, 0.1, T)
    )


def test_clone_indices():
    grid = time_grid(T, T_MIN, STEPS, "log_snr")
    idx = clone_indices(grid, 20)
    assert len(np.unique(idx)) == len(idx)
    assert idx.min() >= 0 and idx.max() <= len(grid) - 2  # never the final time
    assert len(idx) >= 15  # few collisions on a 201-point grid
    ts = np.sort(grid[idx])
    # spread in t: covers the range and no gap much wider than the target spacing
    assert ts[0] < 0.05 and ts[-1] == T
    assert np.max(np.diff(ts)) < 2.5 * (T - T_MIN) / 19
    # restricted window
    idx2 = clone_indices(grid, 10, t_lo=0.5, t_hi=2.0)
    assert np.all((grid[idx2] > 0.4) & (grid[idx2] < 2.1))
