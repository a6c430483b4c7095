"""The training-time axis of a learned score (Bonnaire, Urfin, Biroli & Mézard 2025).

At a log-spaced subset of training checkpoints, the EMA network generates samples (same prior
noise at every checkpoint, so differences come from training alone) whose memorised fraction
gives f_mem(step); τ_mem is the step at which it first reaches a level. On noised held-out
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


def tau_mem(steps, f_mem, level: float) -> float:
    """First training step at which f_mem reaches `level`, interpolated in log(step) between
    evaluated checkpoints; NaN if it never does."""
    steps, f_mem = np.asarray(steps, dtype=np.float64), np.asarray(f_mem, dtype=np.float64)
    above = np.flatnonzero(f_mem >= level)
    if above.size == 0:
        return float("nan")
    i = above[0]
    if i == 0:
        return float(steps[0])
    w = (level - f_mem[i - 1]) / (f_mem[i] - f_mem[i - 1])
    return float(np.exp(np.log(steps[i - 1]) + w * (np.log(steps[i]) - np.log(steps[i - 1]))))


def score_errors(score_fn, reference, test_x, times, generator):
    """Δ_t · mean ‖s_θ − s_ref‖²/d at each t on noised held-out points (the ε-scale MSE)."""
    out = np.empty(len(times))
    for k, t in enumerate(times):
        dt = process.delta(float(t))
        z = torch.randn(test_x.shape, generator=generator, dtype=test_x.dtype)
        x = test_x * math.exp(-t) + math.sqrt(dt) * z
        diff = score_fn(x, float(t)) - reference[k](x, float(t))
        out[k] = dt * float(diff.pow(2).mean())
    return out


def measure_training_axis(
    net: torch.nn.Module,
    folder,
    model_cfg: dict,
    axis_cfg: dict,
    train: xr.Dataset,
    test: xr.Dataset,
    population,
    time_cfg: dict,
    sampler_cfg: dict,
    seed: int,
    budget_bytes: int,
    device="cpu",
) -> xr.Dataset:
    """f_mem_by_step(step), score_error_{empirical,population}(step, time) and tau_mem.

    `population` is the law's exact score, or None where the law is unknown."""
    grid, keep = process.grid_from_settings(time_cfg)
    times = grid[keep]
    steps = evaluated_steps(model_cfg, axis_cfg["checkpoints"])
    a = torch.as_tensor(train["x"].values, dtype=torch.float32, device=device)
    empirical = EmpiricalScore(a, budget_bytes)
    points = min(axis_cfg["score_points"], test.sizes["item"])
    test_x = torch.as_tensor(test["x"].values[:points], dtype=torch.float32, device=device)
    rng = np.random.default_rng(seed)

    f_mem = np.empty((len(steps), 3))
    err_emp = np.empty((len(steps), len(times)))
    err_pop = np.full((len(steps), len(times)), np.nan)
    for j, step in enumerate(steps):
        state = load_checkpoint(folder / CHECKPOINT.format(step), device)
        net.load_state_dict(state["ema"])
        score = LearnedScore(net.to(device))
        gen = torch.Generator(device=device).manual_seed(seed)  # same prior noise per step
        x0 = samplers.prior_sample(axis_cfg["samples"], a.shape[1], gen, device=device)
        end, _ = samplers.sample(score, x0, grid, sampler_cfg["name"], gen)
        dist, _ = nearest(end, a, k=2, budget_bytes=budget_bytes)
        ratio = metrics.memorisation_ratio(dist[:, 0].cpu(), dist[:, 1].cpu())
        f_mem[j] = metrics.memorised_fraction(ratio, axis_cfg["memorisation_threshold"], 200, rng)
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

    ds = xr.Dataset(
        {
            "f_mem_by_step": ("step", f_mem[:, 0]),
            "f_mem_by_step_ci_low": ("step", f_mem[:, 1]),
            "f_mem_by_step_ci_high": ("step", f_mem[:, 2]),
            "score_error_empirical": (("step", "time"), err_emp),
            "score_error_population": (("step", "time"), err_pop),
            "tau_mem": tau_mem(steps, f_mem[:, 0], axis_cfg["tau_mem_level"]),
        },
        coords={"step": np.asarray(steps, dtype=np.int64), "time": times},
    )
    ds["f_mem_by_step"].attrs["description"] = (
        "fraction of samples from the EMA weights at this step with d₁/d₂ < threshold"
    )
    for ref in ("empirical", "population"):
        ds[f"score_error_{ref}"].attrs["description"] = (
            f"Δ_t · mean ‖s_θ − s_{ref}‖² / d on noised held-out points (ε-scale MSE)"
        )
    if population is None:
        ds["score_error_population"].attrs["not_applicable"] = "the data's law is unknown"
    ds["tau_mem"].attrs["description"] = (
        f"first step where f_mem_by_step reaches {axis_cfg['tau_mem_level']} "
        "(log-interpolated); NaN if never within training"
    )
    return ds
