"""The training-time axis of a learned score (Bonnaire, Urfin, Biroli & Mézard 2025).

At a log-spaced subset of training checkpoints, the EMA network (with warm-up, train.ema_decay)
generates samples by the follow-up's protocol: deterministic DDIM (η = 0, `ddim_steps` steps)
from the same x_T at every checkpoint, so differences come from training alone; the sample is
the clean estimate x̂₀ of the end state. Their memorised fraction gives f_mem(step) with Wilson
intervals; τ_mem is the step at which it first reaches a level, with the interval the f_mem
intervals give it. On noised held-out points, the mean squared distance of the learned score
to the empirical score (memorising) and to the population score (generalising) says which of
the two the network is learning. Two more measurements per checkpoint: the held-out-minus-
training DSM loss gap per noise level (a second τ_mem that needs no sampling) and the quality
of the samples (the population-score error where the law is known, the energy distance between
x̂₀ and held-out points always), whose descent gives τ_gen (memorisation.py).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr
from scipy import stats

from . import memorisation, metrics, process, samplers
from .memorisation import tau_mem
from .neighbours import nearest
from .nets import LearnedScore
from .scores import EmpiricalScore
from .store import load_checkpoint
from .train import checkpoint_steps

log = logging.getLogger(__name__)


def evaluated_steps(model_cfg: dict, count: int) -> list[int]:
    """`count` checkpoint steps, log-spaced over the checkpoint grid, always with the last."""
    grid = checkpoint_steps(model_cfg["steps"], model_cfg["checkpoints"])
    pick = np.unique(np.round(np.linspace(0, len(grid) - 1, min(count, len(grid)))).astype(int))
    return [grid[i] for i in pick]


def score_errors(score_fn, reference, test_x, times, generator):
    """Δ_t · mean ‖s_θ − s_ref‖²/d at each t on noised held-out points (the ε-scale MSE), with
    reference[k] the reference score at times[k]. The noise is drawn on the held-out points'
    device, from `generator` (same device)."""
    return np.array(
        [
            reference_errors(score_fn, {"ref": ref}, test_x, [t], generator)[0][0, :, 0].mean()
            for ref, t in zip(reference, times, strict=True)
        ]
    )


def measure_training_axis(
    net: torch.nn.Module,
    checkpoints: dict,
    model_cfg: dict,
    axis_cfg: dict,
    train: xr.Dataset,
    test: xr.Dataset,
    population,
    grid: process.TimeGrid,
    seed: int,
    budget_bytes: int,
    device="cpu",
    references: dict | None = None,
) -> xr.Dataset:
    """f_mem_by_step(step), score_error_{empirical,population}(step, time), dsm_gap(step, time),
    energy_distance(step), tau_mem, tau_mem_dsm and tau_gen with their intervals, and
    score_r2(step, reference, time) against each of `references`.

    `checkpoints` maps a training step to its checkpoint file (`store.recorded_checkpoints`:
    the ones the model file records); `population` is the law's exact score, or None where the
    law is unknown; `references` maps a name (gaussian, a baseline's) to a further closed-form
    score the network is compared with by r² (SCIENCE.md §7), beside population and empirical."""
    times = grid.saved_times  # the run's saved times: score errors, DSM gap, r²
    # the DDIM grid: ddim_steps steps with the run's T, t_min and spacing (a DDPM spacing gives
    # equally spaced steps of the 1000-step schedule)
    ddim = process.TimeGrid.from_settings(grid.settings, steps=axis_cfg["ddim_steps"]).times
    level = axis_cfg.get("confidence_level", 0.95)
    steps = evaluated_steps(model_cfg, axis_cfg["checkpoints"])
    a = torch.as_tensor(train["x"].values, dtype=torch.float32, device=device)
    empirical = EmpiricalScore(a, budget_bytes)
    points = min(axis_cfg["score_points"], test.sizes["item"])
    test_x = torch.as_tensor(test["x"].values[:points], dtype=torch.float32, device=device)
    train_x = a[: min(axis_cfg["score_points"], a.shape[0])]
    held_out = torch.as_tensor(test["x"].values, dtype=torch.float32, device=device)
    draws = axis_cfg.get("dsm_draws", 2)

    f_mem = np.empty((len(steps), 3))
    err_emp = np.empty((len(steps), len(times)))
    err_pop = np.full((len(steps), len(times)), np.nan)
    err_pop_mean = np.full((len(steps), 2), np.nan)  # mean over t, SE over held-out points
    gap = np.empty((len(steps), len(times)))
    gap_se = np.empty((len(steps), len(times)))
    gap_mean = np.empty((len(steps), 2))
    loss_held_out = np.empty(len(steps))
    energy = np.empty((len(steps), 2))
    refs = {"population": population} if population is not None else {}
    refs["empirical"] = empirical
    refs.update(references or {})  # gaussian, the baselines
    names = list(refs)
    r2 = np.empty((len(steps), len(refs), len(times)))
    r2_se = np.empty_like(r2)
    for j, step in enumerate(steps):
        if step not in checkpoints:
            raise KeyError(
                f"no checkpoint of training step {step} is recorded (have {sorted(checkpoints)})"
            )
        state = load_checkpoint(checkpoints[step], device)
        net.load_state_dict(state["ema"])
        score = LearnedScore(net.to(device))
        gen = torch.Generator(device=device).manual_seed(seed)  # the same x_T at every step
        x_T = samplers.prior_sample(axis_cfg["samples"], a.shape[1], gen, device=device)
        end, _ = samplers.sample(score, x_T, ddim, "ddim", gen)
        x_hat = samplers.denoised(score, end, float(ddim[-1]))
        dist, _ = nearest(x_hat, a, k=2, budget_bytes=budget_bytes)
        ratio = metrics.memorisation_ratio(dist[:, 0].cpu(), dist[:, 1].cpu())
        f_mem[j] = metrics.memorised_fraction(ratio, axis_cfg["memorisation_threshold"], level)
        energy[j] = memorisation.energy_distance(x_hat, held_out)
        # one pass over the same noised held-out points at every checkpoint: the errors
        # against empirical and population, and r² against every reference
        egen = torch.Generator(device=device).manual_seed(seed + 1)
        errors, r2[j], r2_se[j] = reference_errors(score, refs, test_x, times, egen)
        err_emp[j] = errors[names.index("empirical")].mean(0)
        if population is not None:
            per_point = errors[names.index("population")]
            err_pop[j] = per_point.mean(0)
            err_pop_mean[j] = memorisation.mean_se(per_point.mean(1))
        # the same noise for every checkpoint: the gap's changes come from training alone
        test_loss = memorisation.dsm_losses(
            score, test_x, times, torch.Generator(device=device).manual_seed(seed + 2), draws
        )
        train_loss = memorisation.dsm_losses(
            score, train_x, times, torch.Generator(device=device).manual_seed(seed + 3), draws
        )
        gap[j], gap_se[j], gap_mean[j, 0], gap_mean[j, 1] = memorisation.dsm_gap(
            test_loss, train_loss
        )
        loss_held_out[j] = test_loss.mean()
        log.info(
            "step %d: f_mem = %.3f, DSM gap = %.3g ± %.2g, energy distance = %.3g ± %.2g",
            step,
            f_mem[j, 0],
            gap_mean[j, 0],
            gap_mean[j, 1],
            energy[j, 0],
            energy[j, 1],
        )

    tau, tau_lo, tau_hi, censored = tau_mem(
        steps, f_mem[:, 0], axis_cfg["tau_mem_level"], f_mem[:, 1], f_mem[:, 2]
    )
    # relative gap (held-out − training)/held-out: scale-free, so one level serves every cell
    z = stats.norm.ppf(0.5 + level / 2)
    rel = gap_mean[:, 0] / loss_held_out
    rel_half = z * gap_mean[:, 1] / loss_held_out
    gap_level = axis_cfg.get("dsm_gap_level", 0.5)
    tau_d, tau_d_lo, tau_d_hi, censored_d = tau_mem(
        steps, rel, gap_level, rel - rel_half, rel + rel_half
    )
    # τ_gen: the middle of the descent of the quality measure (population-score error where
    # the law is known, else the energy distance); τ_gen_end: the end of that descent
    quality = err_pop_mean[:, 0] if population is not None else energy[:, 0]
    gen = memorisation.tau_gen(steps, quality)
    gen_energy = memorisation.tau_gen(steps, energy[:, 0])
    tolerance = axis_cfg.get("plateau_tolerance", 0.1)
    gen_end = memorisation.tau_gen(steps, quality, tolerance)
    width = model_cfg.get("width", model_cfg.get("widths", [np.nan])[0])
    ds = xr.Dataset(
        {
            "f_mem_by_step": ("step", f_mem[:, 0]),
            "f_mem_by_step_ci_low": ("step", f_mem[:, 1]),
            "f_mem_by_step_ci_high": ("step", f_mem[:, 2]),
            "score_error_empirical": (("step", "time"), err_emp),
            "score_error_population": (("step", "time"), err_pop),
            "score_error_population_mean": ("step", err_pop_mean[:, 0]),
            "score_error_population_mean_se": ("step", err_pop_mean[:, 1]),
            "dsm_gap": (("step", "time"), gap),
            "dsm_gap_se": (("step", "time"), gap_se),
            "dsm_gap_mean": ("step", gap_mean[:, 0]),
            "dsm_gap_mean_se": ("step", gap_mean[:, 1]),
            "dsm_gap_relative": ("step", rel),
            "energy_distance": ("step", energy[:, 0]),
            "energy_distance_se": ("step", energy[:, 1]),
            "tau_mem": tau,
            "tau_mem_ci_low": tau_lo,
            "tau_mem_ci_high": tau_hi,
            "tau_mem_censored": censored,
            "tau_mem_dsm": tau_d,
            "tau_mem_dsm_ci_low": tau_d_lo,
            "tau_mem_dsm_ci_high": tau_d_hi,
            "tau_mem_dsm_censored": censored_d,
            "tau_gen": gen[0],
            "tau_gen_bracket_low": gen[1],
            "tau_gen_bracket_high": gen[2],
            "tau_gen_end": gen_end[0],
            "tau_gen_end_bracket_low": gen_end[1],
            "tau_gen_end_bracket_high": gen_end[2],
            "tau_gen_energy": gen_energy[0],
            "tau_gen_energy_bracket_low": gen_energy[1],
            "tau_gen_energy_bracket_high": gen_energy[2],
            "score_r2": (("step", "reference", "time"), r2),
            "score_r2_se": (("step", "reference", "time"), r2_se),
            "model_width": float(width),
            "model_batch_size": int(model_cfg["batch_size"]),
            "model_steps": int(model_cfg["steps"]),
        },
        coords={
            "step": np.asarray(steps, dtype=np.int64),
            "time": times,
            "reference": np.asarray(names, dtype=object),
        },
    )
    describe(ds, axis_cfg, population is not None, gap_level, tolerance)
    if population is None:
        ds["score_error_population"].attrs["not_applicable"] = "the data's law is unknown"
    return ds


def reference_errors(score_fn, references: dict, test_x, times, generator):
    """Against each reference score, on held-out points noised to each t (one noise draw per
    t, shared by every reference, on the points' device from `generator`): Δ_t ‖s_θ − s_ref‖²/d
    per point (reference, point, time) and `metrics.r_squared` with its SE (reference, time)."""
    errors = np.empty((len(references), test_x.shape[0], len(times)))
    r2 = np.empty((2, len(references), len(times)))
    for k, t in enumerate(times):
        z = torch.randn(test_x.shape, generator=generator, dtype=test_x.dtype, device=test_x.device)
        x = process.noised(test_x, float(t), z)
        s = score_fn(x, float(t))
        for i, ref in enumerate(references.values()):
            s_ref = ref(x, float(t))
            diff = s - s_ref
            errors[i, :, k] = (process.delta(float(t)) * diff.pow(2).mean(1)).double().cpu().numpy()
            r2[:, i, k] = metrics.r_squared(s, s_ref)
    return errors, r2[0], r2[1]


def describe(ds: xr.Dataset, axis_cfg: dict, known_law: bool, gap_level, tolerance) -> None:
    """The variables' descriptions (what each number is, in the store)."""
    quality = "score_error_population_mean" if known_law else "energy_distance"
    text = {
        "f_mem_by_step": (
            f"fraction of x̂₀ of deterministic DDIM ({axis_cfg['ddim_steps']} steps, the same x_T "
            "at every step) from the EMA weights (warm-up min(ema, (1 + k)/(10 + k))) at this "
            "training step with d₁/d₂ < threshold; Wilson interval"
        ),
        "score_error_population_mean": (
            "Δ_t ‖s_θ − s_population‖²/d on noised held-out points, mean over the saved times "
            "(the quality measure of τ_gen where the law is known); SE over the points"
        ),
        "dsm_gap": (
            "held-out minus training DSM loss ‖ε̂ − z‖²/d at each noise level, the same noise at "
            "every step; SE in dsm_gap_se (the two point sets independent)"
        ),
        "dsm_gap_mean": "dsm_gap averaged over the saved times (per point first); SE in _se",
        "dsm_gap_relative": "dsm_gap_mean over the held-out DSM loss (scale-free)",
        "energy_distance": (
            "energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| (U-statistics) between the x̂₀ samples "
            "and the held-out set; delete-a-block jackknife SE"
        ),
        "tau_mem": (
            f"first step where f_mem_by_step reaches {axis_cfg['tau_mem_level']} "
            "(log-interpolated); NaN if never within training (tau_mem_censored)"
        ),
        "tau_mem_ci_low": (
            "early end of τ_mem's interval: where the f_mem upper bounds reach the level; the "
            "last step when the level is never reached (τ_mem > last step)"
        ),
        "tau_mem_ci_high": (
            "late end of τ_mem's interval: where the f_mem lower bounds reach the level (inf if "
            "they never do)"
        ),
        "tau_mem_censored": "f_mem never reached the level: τ_mem > last step",
        "tau_mem_dsm": (
            f"first step where dsm_gap_relative reaches {gap_level} (log-interpolated), with "
            "the interval its CI gives; a second τ_mem that needs no sampling"
        ),
        "tau_gen": (
            f"first step where the quality measure ({quality}) has made half its drop from its "
            "first value to its best (the middle of the descent to the generalisation "
            "plateau); bracket: the evaluated checkpoints around it"
        ),
        "tau_gen_end": (
            f"first step where the quality measure ({quality}) has made all but {tolerance} of "
            "its drop to its best value (the end of the descent; its target follows the best "
            "value, which falls ∝ 1/n); bracket: the checkpoints around it"
        ),
        "tau_gen_energy": "τ_gen from energy_distance (the same rule)",
        "model_width": "hidden width of the MLP (first width of a U-Net)",
        "score_r2": (
            "r² = 1 − E‖s_θ − s_ref‖²/E‖s_θ − E s_θ‖² of the EMA network's score against each "
            "reference on held-out points noised to t (the same points at every step)"
        ),
        "score_r2_se": "delta-method SE of score_r2 over the held-out points",
    }
    for name, desc in text.items():
        ds[name].attrs["description"] = desc
    for ref in ("empirical", "population"):
        ds[f"score_error_{ref}"].attrs["description"] = (
            f"Δ_t · mean ‖s_θ − s_{ref}‖² / d on noised held-out points (ε-scale MSE)"
        )
