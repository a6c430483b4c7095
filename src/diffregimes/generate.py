"""The sampling stage: backward trajectories and clones from one score, as an xarray Dataset.

Trajectories start from x_T ~ N(0, I) and follow the configured sampler down the time grid; the
states at the saved times are kept. Clones (the paper's speciation protocol) restart copies of
the first `pairs` trajectories at each clone time with independent noise.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from . import process, samplers
from .scores import EmpiricalScore, GaussianScore, GMMScore

log = logging.getLogger(__name__)
EXACT_SCORES = ("population", "empirical")


def build_score(
    score: str,
    train: xr.Dataset,
    budget_bytes: int,
    device,
    dtype=torch.float32,
    model_path=None,
):
    """The score named `score` for the training store `train`: population, empirical, or a
    learned model whose final weights are at `model_path`."""
    if model_path is not None:
        from .nets import LearnedScore, load_trained

        return LearnedScore(load_trained(model_path, device))
    if score == "empirical":
        x = torch.as_tensor(train["x"].values, dtype=dtype, device=device)
        return EmpiricalScore(x, budget_bytes)
    if score != "population":
        raise ValueError(f"score {score!r}: exact scores are {EXACT_SCORES}")
    from .data import gaussian_spectrum, law

    spec, d = law(train), train.sizes["feature"]
    kind = spec["kind"]
    if kind == "gmm":
        m = torch.as_tensor(train["m"].values, dtype=dtype, device=device)
        return GMMScore(m, spec["sigma"])
    if kind == "gaussian":
        lam = gaussian_spectrum(d, spec["lambda_max"], spec["decay"])
        eye = torch.eye(d, dtype=dtype, device=device)
        lam = torch.as_tensor(lam, dtype=dtype, device=device)
        return GaussianScore(torch.zeros(d, dtype=dtype, device=device), lam, eye)
    raise ValueError(f"no population score is known for dataset kind {kind!r}")


def sample_trajectories(
    score_fn,
    d: int,
    time_cfg: dict,
    sampler_cfg: dict,
    clone_cfg: dict,
    seed: int,
    device="cpu",
    progress=None,
) -> xr.Dataset:
    """Run the sampler and the clones; return the trajectory store's Dataset.

    `progress(n_steps)` is called as integration steps complete (for a progress bar). A NaN or
    inf state raises FloatingPointError naming the step, its times and the run (main or the
    clones of one branch time)."""
    grid, keep = process.grid_from_settings(time_cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    name = sampler_cfg["name"]
    samples = sampler_cfg["samples"]
    pairs = clone_cfg["pairs"]
    # Clone pairs branch from the first `pairs` trajectories of the main run, which runs
    # max(samples, pairs) of them; the store keeps the first `samples` in full.
    x_T = samplers.prior_sample(max(samples, pairs), d, gen, device=device)
    clone_sampler = name if name in samplers.STOCHASTIC else "euler_maruyama"
    # A DDPM grid ends, as Ho et al.'s sampler does, with a noisy step to t_1 and the noiseless
    # x̂₀ step (below); other grids drop the noise of their last step (pitfall 1).
    noisy_last = time_cfg["spacing"].startswith("ddpm_")
    idx = process.clone_indices(grid, clone_cfg["times"], clone_cfg["t_lo"], time_cfg["T"])
    # One pass saves both the stored times and the clone branch points.
    union = np.union1d(keep, idx)
    t_min = float(grid[-1])
    log.info("sampling %d trajectories with %s over %d steps", len(x_T), name, len(grid) - 1)
    try:
        end, states = samplers.sample(
            score_fn, x_T, grid, name, gen, save_idx=union, callback=progress, noisy_last=noisy_last
        )
    except FloatingPointError as err:
        raise FloatingPointError(f"{err} in the main run of {len(x_T)} trajectories") from err
    traj = states[np.searchsorted(union, keep), :samples]
    x_hat = clean_estimate(score_fn, end[:samples], t_min)

    clones, clones_hat = [], []
    for j, k in enumerate(idx):
        log.info("cloning %d pairs at t = %.4g (%d/%d)", pairs, grid[k], j + 1, len(idx))
        start = states[np.searchsorted(union, k), :pairs].to(device)
        try:
            ends = samplers.clone(
                score_fn,
                start,
                grid,
                int(k),
                clone_sampler,
                gen,
                callback=progress,
                noisy_last=noisy_last,
            )
        except FloatingPointError as err:  # its steps count from the branch point
            raise FloatingPointError(f"{err} in the clones branched at t = {grid[k]:.6g}") from err
        clones.append(ends.float().cpu())
        hat = clean_estimate(score_fn, ends.reshape(-1, d), t_min)
        clones_hat.append(hat.reshape(ends.shape))
    # (clone_time, pair, copy, feature)
    x_clone = torch.stack(clones).permute(0, 2, 1, 3)
    x_hat_clone = torch.stack(clones_hat).permute(0, 2, 1, 3)

    ds = xr.Dataset(
        {
            "x": (("sample", "time", "feature"), traj.permute(1, 0, 2).numpy()),
            "x_hat": (("sample", "feature"), x_hat.numpy()),
            "x_clone": (("clone_time", "pair", "copy", "feature"), x_clone.numpy()),
            "x_hat_clone": (("clone_time", "pair", "copy", "feature"), x_hat_clone.numpy()),
        },
        coords={
            "sample": np.arange(samples),
            "time": grid[keep],
            "feature": np.arange(d),
            "clone_time": grid[idx],
            "pair": np.arange(pairs),
            "copy": np.arange(2),
        },
    )
    ds["time"].attrs["description"] = "OU time t, descending from T to t_min"
    ds["clone_time"].attrs["description"] = "OU time at which pairs of clones branch"
    ds["x"].attrs["description"] = "state x(t) of each trajectory at the saved times"
    ds["x_hat"].attrs["description"] = (
        "the generated sample: Tweedie estimate x̂₀ = (x + Δ s(x, t_min)) e^{t_min} of the end "
        "state (SCIENCE.md §5)"
    )
    ds["x_clone"].attrs["description"] = "end states x(t_min) of the clones"
    ds["x_hat_clone"].attrs["description"] = "Tweedie estimate x̂₀ of each clone's end state"
    ds.attrs.update(
        sampler=name,
        clone_sampler=clone_sampler,
        seed_job=int(seed),
        device=str(device),
        settings={"time": time_cfg, "sampler": sampler_cfg, "cloning": clone_cfg},
    )
    return ds


def clean_estimate(score_fn, x: torch.Tensor, t: float, batch: int = 4096) -> torch.Tensor:
    """The generated samples: x̂₀ = (x + Δ_t s(x, t)) e^{t} of end states x at time t, as a
    float32 CPU tensor (SCIENCE.md §5: for the exact empirical score it is Σ_μ w_μ a^μ, a
    training point once collapsed; for a DDPM grid it is the final noiseless step)."""
    out = [samplers.denoised(score_fn, xb, t).float().cpu() for xb in x.split(batch)]
    return torch.cat(out) if out else torch.empty(0, x.shape[-1])


def planned_steps(time_cfg: dict, clone_cfg: dict) -> int:
    """Integration steps one sampling job takes (main run plus every clone run), for a bar."""
    grid, _ = process.grid_from_settings(time_cfg)
    idx = process.clone_indices(grid, clone_cfg["times"], clone_cfg["t_lo"], time_cfg["T"])
    return (len(grid) - 1) + int(sum(len(grid) - 1 - k for k in idx))
