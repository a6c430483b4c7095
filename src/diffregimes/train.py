"""Denoising score matching in OU time, with EMA, checkpoints and exact resume.

Loss (Vincent 2011; Ho et al. 2020, eq. 14, "simple" ε-prediction): for a training point a,
t drawn uniformly in log-SNR between λ(T) and λ(t_min) (the same law as the sampling grid),
z ~ N(0, I) and x = a e^{−t} + √Δ_t z, minimise ‖ε̂_θ(x, t) − z‖²/d. The score is then
s_θ = −ε̂_θ/√Δ_t (nets.LearnedScore).

Checkpoints hold tensors and plain containers only (loaded with ``weights_only=True``): model,
EMA weights, optimiser, step, RNG state and the loss history. They sit on a log-spaced grid of
steps plus the last, so a killed job resumes from the newest one and the training-time axis
(f_mem against step, the follow-up paper's τ_mem) can be measured on them.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from . import process
from .store import load_checkpoint, save_atomic

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint_step{:08d}.pt"
STATE_KEYS = {"model", "ema", "optimizer", "rng", "step", "history", "window", "fingerprint"}


def checkpoint_steps(total: int, count: int, first: int = 10) -> list[int]:
    """`count` log-spaced steps from `first` to `total` (integers, unique, `total` last)."""
    first = min(first, total)
    steps = np.unique(np.round(np.geomspace(first, total, max(count, 1))).astype(int))
    return sorted({*steps.tolist(), total})


def ema_decay(ema: float, step: int) -> float:
    """EMA decay at (0-based) step k with warm-up: min(ema, (1 + k)/(10 + k)) (SCIENCE.md §5).

    A constant decay lags the raw weights by ~1/(1 − ema) steps from initialisation (with
    ema = 0.9999 the average is still 90 % the initial network at step 1000); the warm-up
    makes the average forget the initialisation at the rate of the early steps."""
    return min(float(ema), (1.0 + step) / (10.0 + step))


def _newest_checkpoint(folder: Path, fingerprint: str, device):
    """The newest checkpoint in `folder` written with the same settings, or None.

    Checkpoints of other settings are stale (the config changed): they are removed."""
    for path in sorted(folder.glob("checkpoint_step*.pt"), reverse=True):
        state = load_checkpoint(path, device)
        if state.get("fingerprint") == fingerprint and STATE_KEYS <= set(state):
            return path, state
        log.info("removing %s: written with other settings or code", path.name)
        path.unlink()
    return None, None


def _draw_times(batch, lam_lo, lam_hi, generator, device):
    """t with λ(t) uniform on [λ(T), λ(t_min)], as the log-SNR sampling grid spaces it."""
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    lam = lam_lo + (lam_hi - lam_lo) * u
    return (0.5 * torch.nn.functional.softplus(-lam)).float()  # t = ½ log(1 + e^{−λ})


def train(
    net: torch.nn.Module,
    data: torch.Tensor,
    cfg: dict,
    time_cfg: dict,
    seed: int,
    folder: str | os.PathLike,
    fingerprint: str,
    device="cpu",
    progress=None,
) -> dict:
    """Train `net` on `data` (n, d) by denoising score matching; return the final state.

    `cfg` is the model's config entry (steps, batch_size, lr, weight_decay, warmup, ema,
    grad_clip, checkpoints, log_every, compile); `fingerprint` identifies the settings so a
    rerun resumes only from checkpoints of the same run. Raises FloatingPointError when the
    loss turns NaN or inf, naming the step and the last finite loss."""
    device = torch.device(device)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = net.to(device)
    data = data.to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    # Parameter lists once: walking the modules for them at every step cost ~5 % of a step.
    params, ema_params = list(net.parameters()), list(ema.parameters())
    # foreach: one multi-tensor kernel per Adam operation instead of one per parameter (torch's
    # CPU default); on the small MLPs here its gain is within the noise (0.96–1.06× in
    # bench/train_loop.py).
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], foreach=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    total = int(cfg["steps"])
    save_at = set(checkpoint_steps(total, cfg["checkpoints"]))
    hist = {"step": [], "loss": [], "lr": [], "steps_per_s": []}
    window: list[float] = []
    step = 0

    path, state = _newest_checkpoint(folder, fingerprint, device)
    if state is not None:
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"].cpu())
        step = int(state["step"])
        hist = {k: v.tolist() for k, v in state["history"].items()}
        window = state["window"].tolist()  # losses since the last log entry
        log.info("resuming from %s at step %d of %d", path.name, step, total)
    else:
        log.info("training from scratch: %d steps, batch %d", total, cfg["batch_size"])

    use_cuda = device.type == "cuda"
    forward = net
    if use_cuda and cfg.get("compile", "auto") in ("auto", True):
        forward = torch.compile(net)
        log.info("torch.compile on; bf16 autocast on")
    lam_lo = float(process.log_snr(time_cfg["T"]))
    lam_hi = float(process.log_snr(time_cfg["t_min"]))
    n, d = data.shape
    last_finite = float("nan")
    tick = time.perf_counter()
    ticked_at = step
    net.train()
    while step < total:
        lr = cfg["lr"] * min(1.0, (step + 1) / max(1, cfg["warmup"]))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, n, (cfg["batch_size"],), generator=gen, device=device)
        t = _draw_times(cfg["batch_size"], lam_lo, lam_hi, gen, device)
        z = torch.randn(cfg["batch_size"], d, generator=gen, device=device)
        x = process.noised(data[idx], t, z)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
            loss = (forward(x, t).float() - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"], foreach=True)
        opt.step()
        with torch.no_grad():  # EMA: θ_ema ← θ_ema + (1 − decay_k)(θ − θ_ema)
            torch._foreach_lerp_(ema_params, params, 1 - ema_decay(cfg["ema"], step))
        step += 1
        # On the CPU the check is free; on a GPU it would sync every step, so it runs per log.
        if not use_cuda or step % cfg["log_every"] == 0 or step == total:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss is {value} at step {step} (last finite loss "
                    f"{last_finite:.6g}); lower models.*.lr or raise grad_clip and rerun"
                )
            last_finite = value
            window.append(value)
        if step % cfg["log_every"] == 0 or step == total:
            now = time.perf_counter()
            rate = (step - ticked_at) / max(now - tick, 1e-9)
            tick, ticked_at = now, step
            hist["step"].append(step)
            hist["loss"].append(float(np.mean(window)) if window else float(loss.detach()))
            hist["lr"].append(lr)
            hist["steps_per_s"].append(rate)
            window = []
        if step in save_at:
            save_atomic(
                _state(net, ema, opt, gen, step, hist, window, fingerprint),
                folder / CHECKPOINT.format(step),
            )
        if progress is not None:
            progress(step)
    log.info(
        "finished at step %d, final loss %.5g",
        step,
        hist["loss"][-1] if hist["loss"] else float("nan"),
    )
    return {"ema": ema.state_dict(), "history": hist, "step": step}


def _state(net, ema, opt, gen, step, hist, window, fingerprint):
    return {
        "model": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": gen.get_state(),
        "step": torch.tensor(step),
        "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in hist.items()},
        "window": torch.tensor(window, dtype=torch.float64),
        "fingerprint": fingerprint,
    }


def history_dataset(hist: dict) -> xr.Dataset:
    """The training log store: loss, learning rate and steps/s at each logged step."""
    ds = xr.Dataset(
        {
            "loss": ("step", np.asarray(hist["loss"], dtype=np.float64)),
            "lr": ("step", np.asarray(hist["lr"], dtype=np.float64)),
            "steps_per_s": ("step", np.asarray(hist["steps_per_s"], dtype=np.float64)),
        },
        coords={"step": np.asarray(hist["step"], dtype=np.int64)},
    )
    ds["loss"].attrs["description"] = "ε-prediction MSE ‖ε̂ − z‖²/d, mean over the logging window"
    ds["steps_per_s"].attrs["description"] = "optimiser steps per second over the window"
    return ds
