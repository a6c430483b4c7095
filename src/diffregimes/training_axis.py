"""The training-time axis of a learned score (Bonnaire, Urfin, Biroli & Mézard 2025).

At a log-spaced subset of training checkpoints, the EMA network (with warm-up, train.ema_decay)
generates samples by the follow-up's protocol: deterministic DDIM (η = 0, `ddim_steps` steps)
from the same x_T at every checkpoint, so differences come from training alone; the sample is
the clean estimate x̂₀ of the end state. Their memorised fraction gives f_mem(step) with Wilson
intervals; τ_mem is the step at which it first reaches a level, with the interval the f_mem
intervals give it. On noised held-out
points, the mean squared distance of the learned score to the empirical score (memorising) and
to the population score (generalising) says which of the two the network is learning.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import xarray as xr

from . import metrics, process, samplers
from .neighbours import nearest
from .nets import LearnedScore
from .scores import EmpiricalScore
from .store import load_checkpoint
from .train import CHECKPOINT, checkpoint_steps

log = logging.getLogger(__name__)


def evaluated_steps(model_cfg: dict, count: int) -> list[int]:
    """`count` checkpoint steps, log-spaced over the checkpoint grid, always with the last."""
    grid = checkpoint_steps(model_cfg["steps"], model_cfg["checkpoints"])
    pick = np.unique(np.round(np.linspace(0, len(grid) - 1, min(count, len(grid)))).astype(int))
    return [grid[i] for i in pick]


def _first_reach(steps, f, level: float) -> float:
    """First step at which f reaches `level`, interpolated in log(step); NaN if never."""
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
    end).

    Returns (tau, low, high, censored). Where f_mem never reaches the level, tau is NaN,
    censored is True and the interval is (last step, inf): "> last step" as a lower bound.
    Without intervals, low and high are NaN."""
    steps = np.asarray(steps, dtype=np.float64)
    f = np.asarray(f_mem, dtype=np.float64)
    tau = _first_reach(steps, f, level)
    lo = hi = float("nan")
    if ci_low is not None and ci_high is not None:
        lo = _first_reach(steps, np.asarray(ci_high, dtype=np.float64), level)
        hi = _first_reach(steps, np.asarray(ci_low, dtype=np.float64), level)
        hi = float("inf") if np.isnan(hi) else hi
    censored = bool(np.isnan(tau))
    if censored:
        lo = float(steps[-1]) if not np.isfinite(lo) else max(lo, float(steps[-1]))
        hi = float("inf")
    return tau, lo, hi, censored


def score_errors(score_fn, reference, test_x, times, generator):
    """Δ_t · mean ‖s_θ − s_ref‖²/d at each t on noised held-out points (the ε-scale MSE).
    The noise is drawn on the held-out points' device, from `generator` (same device)."""
    out = np.empty(len(times))
    for k, t in enumerate(times):
        dt = process.delta(float(t))
        z = torch.randn(test_x.shape, generator=generator, dtype=test_x.dtype, device=test_x.device)
        x = test_x * math.exp(-t) + math.sqrt(dt) * z
        diff = score_fn(x, float(t)) - reference[k](x, float(t))
        out[k] = dt * float(diff.pow(2).mean())
    return out


def ddim_grid(time_cfg: dict, steps: int) -> np.ndarray:
    """The training axis's DDIM grid: `steps` steps from T to t_min with the run's spacing
    (a DDPM spacing gives `steps` equally spaced steps of the 1000-step schedule)."""
    return process.time_grid(time_cfg["T"], time_cfg["t_min"], steps, time_cfg["spacing"])


def measure_training_axis(
    net: torch.nn.Module,
    folder,
    model_cfg: dict,
    axis_cfg: dict,
    train: xr.Dataset,
    test: xr.Dataset,
    population,
    time_cfg: dict,
    seed: int,
    budget_bytes: int,
    device="cpu",
) -> xr.Dataset:
    """f_mem_by_step(step), score_error_{empirical,population}(step, time) and tau_mem.

    `population` is the law's exact score, or None where the law is unknown."""
    run_grid, keep = process.grid_from_settings(time_cfg)
    times = run_grid[keep]
    grid = ddim_grid(time_cfg, axis_cfg["ddim_steps"])
    level = axis_cfg.get("confidence_level", 0.95)
    steps = evaluated_steps(model_cfg, axis_cfg["checkpoints"])
    a = torch.as_tensor(train["x"].values, dtype=torch.float32, device=device)
    empirical = EmpiricalScore(a, budget_bytes)
    points = min(axis_cfg["score_points"], test.sizes["item"])
    test_x = torch.as_tensor(test["x"].values[:points], dtype=torch.float32, device=device)

    f_mem = np.empty((len(steps), 3))
    err_emp = np.empty((len(steps), len(times)))
    err_pop = np.full((len(steps), len(times)), np.nan)
    for j, step in enumerate(steps):
        state = load_checkpoint(folder / CHECKPOINT.format(step), device)
        net.load_state_dict(state["ema"])
        score = LearnedScore(net.to(device))
        gen = torch.Generator(device=device).manual_seed(seed)  # the same x_T at every step
        x_T = samplers.prior_sample(axis_cfg["samples"], a.shape[1], gen, device=device)
        end, _ = samplers.sample(score, x_T, grid, "ddim", gen)
        x_hat = samplers.denoised(score, end, float(grid[-1]))
        dist, _ = nearest(x_hat, a, k=2, budget_bytes=budget_bytes)
        ratio = metrics.memorisation_ratio(dist[:, 0].cpu(), dist[:, 1].cpu())
        f_mem[j] = metrics.memorised_fraction(ratio, axis_cfg["memorisation_threshold"], level)
        egen = torch.Generator(device=device).manual_seed(seed + 1)
        err_emp[j] = score_errors(score, [empirical] * len(times), test_x, times, egen)
        if population is not None:
            pgen = torch.Generator(device=device).manual_seed(seed + 1)
            err_pop[j] = score_errors(score, [population] * len(times), test_x, times, pgen)
        log.info(
            "step %d: f_mem = %.3f, score error vs empirical (t=%.3g) = %.4g",
            step,
            f_mem[j, 0],
            times[len(times) // 2],
            err_emp[j, len(times) // 2],
        )

    tau, tau_lo, tau_hi, censored = tau_mem(
        steps, f_mem[:, 0], axis_cfg["tau_mem_level"], f_mem[:, 1], f_mem[:, 2]
    )
    ds = xr.Dataset(
        {
            "f_mem_by_step": ("step", f_mem[:, 0]),
            "f_mem_by_step_ci_low": ("step", f_mem[:, 1]),
            "f_mem_by_step_ci_high": ("step", f_mem[:, 2]),
            "score_error_empirical": (("step", "time"), err_emp),
            "score_error_population": (("step", "time"), err_pop),
            "tau_mem": tau,
            "tau_mem_ci_low": tau_lo,
            "tau_mem_ci_high": tau_hi,
            "tau_mem_censored": censored,
        },
        coords={"step": np.asarray(steps, dtype=np.int64), "time": times},
    )
    ds["f_mem_by_step"].attrs["description"] = (
        f"fraction of x̂₀ of deterministic DDIM ({axis_cfg['ddim_steps']} steps, the same x_T "
        "at every step) from the EMA weights (warm-up min(ema, (1 + k)/(10 + k))) at this "
        "training step with d₁/d₂ < threshold; Wilson interval"
    )
    for ref in ("empirical", "population"):
        ds[f"score_error_{ref}"].attrs["description"] = (
            f"Δ_t · mean ‖s_θ − s_{ref}‖² / d on noised held-out points (ε-scale MSE)"
        )
    if population is None:
        ds["score_error_population"].attrs["not_applicable"] = "the data's law is unknown"
    ds["tau_mem"].attrs["description"] = (
        f"first step where f_mem_by_step reaches {axis_cfg['tau_mem_level']} "
        "(log-interpolated); NaN if never within training (tau_mem_censored)"
    )
    ds["tau_mem_ci_low"].attrs["description"] = (
        "early end of τ_mem's interval: where the f_mem upper bounds reach the level; the last "
        "step when the level is never reached (τ_mem > last step)"
    )
    ds["tau_mem_ci_high"].attrs["description"] = (
        "late end of τ_mem's interval: where the f_mem lower bounds reach the level (inf if "
        "they never do)"
    )
    ds["tau_mem_censored"].attrs["description"] = "f_mem never reached the level: τ_mem > last step"
    return ds
