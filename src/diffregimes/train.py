"""Denoising score matching in OU time, with EMA, checkpoints and exact resume.

Loss (Vincent 2011; Ho et al. 2020, eq. 14, "simple" ε-prediction): for a training point a,
t drawn uniformly in log-SNR between λ(T) and λ(t_min) (the same law as the sampling grid),
z ~ N(0, I) and x = a e^{−t} + √Δ_t z, minimise ‖ε̂_θ(x, t) − z‖²/d. The score is then
s_θ = −ε̂_θ/√Δ_t (nets.LearnedScore).

Checkpoints hold tensors and plain containers only (loaded with ``weights_only=True``): model,
EMA weights, optimiser, step, RNG state (with the device type of its generator) and the loss
history. They sit on a log-spaced grid of steps plus the last, so a killed job resumes from the
newest one and the training-time axis (f_mem against step, the follow-up paper's τ_mem) can be
measured on them. A checkpoint written on another device type (CPU ↔ CUDA) resumes too: its
generator state cannot go into this device's generator, so the generator is reseeded from
(seed, step) and the run goes on deterministically, though not bitwise as an uninterrupted one.

The host reads the losses once per logging interval (and at checkpoints), not per step: each
step keeps its loss on the device, and a flush copies them over in one transfer, checks that
they are finite (naming the first step that was not) and logs their mean. On CUDA a per-step
read would wait for the device at every step, and the loop would be launch-bound.

Importing this module loads neither xarray nor zarr (`store` is imported where a checkpoint is
read or written, xarray in `history_dataset`), so bench/gpu.py can train with torch alone.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import process

if TYPE_CHECKING:
    import xarray as xr

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
    from .store import load_checkpoint  # here: store imports xarray and zarr (module doc)

    for path in sorted(folder.glob("checkpoint_step*.pt"), reverse=True):
        state = load_checkpoint(path, device)
        if state.get("fingerprint") == fingerprint and STATE_KEYS <= set(state):
            return path, state
        log.info("removing %s: written with other settings or code", path.name)
        path.unlink()
    return None, None


def batch_indices(n: int, batch: int, full: bool, generator, device) -> torch.Tensor:
    """The training points of one step: all n (full-batch training, B = n: every point at every
    step) or `batch` drawn uniformly with replacement."""
    if full:
        return torch.arange(n, device=device)
    return torch.randint(0, n, (batch,), generator=generator, device=device)


def _draw_times(batch, lam_lo, lam_hi, generator, device):
    """t with λ(t) uniform on [λ(T), λ(t_min)], as the log-SNR sampling grid spaces it."""
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    lam = lam_lo + (lam_hi - lam_lo) * u
    return (0.5 * torch.nn.functional.softplus(-lam)).float()  # t = ½ log(1 + e^{−λ})


def _resume_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed from (seed, step): the same for every resume at that step."""
    words = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _restore_rng(gen: torch.Generator, state: dict, seed: int, step: int, name: str) -> None:
    """Put the checkpoint's generator state into `gen`, or reseed it from (seed, step) where the
    state is another device type's (a CPU state is a Mersenne-Twister table, a CUDA one a seed
    and an offset: neither fits the other's generator)."""
    saved = state["rng"].cpu()
    kind = state.get("rng_device")  # absent in checkpoints written before it was saved
    here = gen.device.type
    if kind is None:  # tell by the size: only a CPU generator has a state of that size
        kind = "cpu" if saved.numel() == torch.Generator().get_state().numel() else "non-CPU"
    if kind == here and saved.numel() == gen.get_state().numel():
        gen.set_state(saved)
        return
    gen.manual_seed(_resume_seed(seed, step))
    log.warning(
        "%s holds a %s generator state (%d bytes); this job's generator is on %s: reseeded "
        "from (seed %d, step %d), so the run goes on deterministically but not bitwise as "
        "an uninterrupted run would",
        name,
        kind,
        saved.numel(),
        here,
        seed,
        step,
    )


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict, kind: dict) -> None:
    """Load the optimiser state and keep this device's update kernel: the saved groups carry
    the writer's foreach/fused flags, and Adam's step counts belong on the device for fused,
    on the host otherwise (a foreach update reads them every step)."""
    opt.load_state_dict(saved)
    for group in opt.param_groups:
        group.update({"foreach": None, "fused": None, **kind})
    fused = bool(kind.get("fused"))
    for param, entry in opt.state.items():
        if "step" in entry:
            where = param.device if fused else torch.device("cpu")
            entry["step"] = entry["step"].to(device=where, dtype=torch.float32)


CPU_COMPILE_MIN_STEPS = 20_000  # compile: 'auto' compiles a CPU run of at least this many steps


def _compiles(compile_, device: torch.device, steps: int) -> bool:
    """Whether `train` compiles: True always, False never, 'auto' on CUDA and on the CPU for a
    run of at least CPU_COMPILE_MIN_STEPS steps: a CPU job pays seconds to trace the step with
    Inductor (more with a cold cache) and saves a fraction of each step, so it pays only on long
    runs (bench/train_loop.py measures both)."""
    if compile_ is True:
        return True
    if compile_ != "auto":
        return False
    if device.type == "cuda":
        return True
    # Inductor on the CPU writes C++: without a compiler 'auto' stays eager rather than failing
    has_cxx = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
    return steps >= CPU_COMPILE_MIN_STEPS and has_cxx


class _CompiledCPUStep:
    """One training step on the CPU as two Inductor graphs, with no per-parameter Python work.

    Graph 1, the forward (noising, network, loss), with AOTAutograd's backward compiled with it
    and run by `loss.backward()`; graph 2, the update: gradient clipping, AdamW and the EMA lerp
    fused into one C++ kernel over all parameters. The update is written out here (torch's
    `opt.step` breaks the graph on purpose) and keeps its state in `opt.state` in torch's own
    layout (step, exp_avg, exp_avg_sq), so checkpoints load in either mode. Learning rate and
    EMA weight enter as 0-d tensors, so warm-up and the EMA schedule trigger no recompile.
    Eager and compiled losses agree to float rounding, not bitwise (Inductor fuses and
    reorders the elementwise sums; tests/test_train.py bounds the difference)."""

    def __init__(self, net, ema, opt, cfg, autocast: bool):
        self.params = list(net.parameters())
        self.ema_params = list(ema.parameters())
        self.opt = opt
        group = opt.param_groups[0]
        b1, b2 = group["betas"]
        eps, wd, max_norm = group["eps"], group["weight_decay"], float(cfg["grad_clip"])
        for p in self.params:  # torch's lazy initialisation (Adam._init_group), done up front
            if p not in opt.state or not opt.state[p]:
                opt.state[p] = {
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        self.lr = torch.tensor(0.0)
        self.weight = torch.tensor(0.0)
        params, ema_params = self.params, self.ema_params
        states = [opt.state[p] for p in params]

        def loss_fn(a, t, z):
            x = process.noised(a, t, z)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return (net(x, t).float() - z).pow(2).mean()

        def update(lr, weight, grads):
            # clip_grad_norm_: the 2-norm of all gradients, scaled to at most max_norm
            norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
            coef = torch.clamp(max_norm / (torch.linalg.vector_norm(norms) + 1e-6), max=1.0)
            for p, g, state, e in zip(params, grads, states, ema_params, strict=True):
                g = g * coef  # AdamW as torch's single-tensor update (torch/optim/adam.py)
                step = state["step"]
                step.add_(1)
                p.mul_(1 - lr * wd)
                state["exp_avg"].lerp_(g, 1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (state["exp_avg_sq"].sqrt() / (1 - b2**step).sqrt()).add_(eps)
                p.sub_(lr / (1 - b1**step) * state["exp_avg"] / denom)
                e.lerp_(p, weight)

        self.loss_fn = torch.compile(loss_fn, fullgraph=True)
        self.update = torch.compile(update, fullgraph=True)

    def __call__(self, a, t, z, lr: float, weight: float) -> torch.Tensor:
        self.lr.fill_(lr)
        self.weight.fill_(weight)
        for group in self.opt.param_groups:
            group["lr"] = lr  # what a checkpoint's optimiser state records
        loss = self.loss_fn(a, t, z)
        for p in self.params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            self.update(self.lr, self.weight, [p.grad for p in self.params])
        return loss.detach()


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
    bf16: bool | None = None,
) -> dict:
    """Train `net` on `data` (n, d) by denoising score matching; return the final state.

    `cfg` is the model's config entry (steps, batch_size, lr, weight_decay, warmup, ema,
    grad_clip, checkpoints, log_every, compile: see `_compiles`; on CUDA the network is
    compiled, on the CPU the whole step, `_CompiledCPUStep`); `bf16` turns bf16 autocast of the
    network on (None: on CUDA);
    `fingerprint` identifies the settings so a rerun resumes only from checkpoints of the same
    run. Raises FloatingPointError when the loss turns NaN or inf, naming the step and the
    last finite loss (found at the next log or checkpoint step, see the module doc)."""
    from .store import save_atomic  # here: store imports xarray and zarr (module doc)

    device = torch.device(device)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = net.to(device)
    data = data.to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    # Parameter lists once: walking the modules for them at every step costs time every step.
    params, ema_params = list(net.parameters()), list(ema.parameters())
    use_cuda = device.type == "cuda"
    # CPU: foreach, one multi-tensor kernel per Adam operation instead of one per parameter
    # (torch's CPU default); on the small MLPs here its gain is within the noise
    # (bench/train_loop.py). CUDA: fused, one kernel for the whole update, which also keeps
    # Adam's step counts on the device (foreach reads them on the host: a sync per step once
    # a checkpoint has put them on the GPU).
    adam_kernel = {"fused": True} if use_cuda else {"foreach": True}
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], **adam_kernel)
    gen = torch.Generator(device=device).manual_seed(seed)
    total = int(cfg["steps"])
    save_at = set(checkpoint_steps(total, cfg["checkpoints"]))
    hist = {"step": [], "loss": [], "lr": [], "steps_per_s": []}
    window: list[float] = []  # the losses since the last log entry that the host has read
    pending: list[torch.Tensor] = []  # the later ones, still on the device
    step = 0

    path, state = _newest_checkpoint(folder, fingerprint, device)
    if state is not None:
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        _load_optimizer(opt, state["optimizer"], adam_kernel)
        step = int(state["step"])
        _restore_rng(gen, state, seed, step, path.name)
        hist = {k: v.tolist() for k, v in state["history"].items()}
        window.extend(state["window"].tolist())  # losses since the last log entry
        log.info("resuming from %s at step %d of %d", path.name, step, total)
    else:
        log.info("training from scratch: %d steps, batch %d", total, cfg["batch_size"])

    compiled = _compiles(cfg.get("compile", "auto"), device, total)
    autocast = use_cuda if bf16 is None else bool(bf16)
    forward, cpu_step = net, None
    if compiled and use_cuda:
        forward = torch.compile(net)
    elif compiled:  # the whole step, forward to EMA (_CompiledCPUStep)
        cpu_step = _CompiledCPUStep(net, ema, opt, cfg, autocast)
    log.info(
        "torch.compile %s; bf16 autocast %s",
        "off" if not compiled else ("the network" if use_cuda else "the whole step"),
        "on" if autocast else "off",
    )
    compile_s = 0.0  # the compiled step's first call: Dynamo, Inductor (or its cache), a step
    lam_lo = float(process.log_snr(time_cfg["T"]))
    lam_hi = float(process.log_snr(time_cfg["t_min"]))
    n, d = data.shape
    last_finite = float("nan")

    def flush():
        """Read the pending losses (one device→host copy) and check them; `step` is the last."""
        nonlocal last_finite
        if not pending:
            return
        values = torch.stack(pending).double().cpu().tolist()
        first = step - len(values) + 1
        for k, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss is {value} at step {first + k} (last finite loss "
                    f"{last_finite:.6g}); lower models.*.lr or raise grad_clip and rerun"
                )
            last_finite = value
        window.extend(values)
        pending.clear()

    tick = time.perf_counter()
    ticked_at = step
    net.train()
    while step < total:
        lr = cfg["lr"] * min(1.0, (step + 1) / max(1, cfg["warmup"]))
        idx = batch_indices(n, cfg["batch_size"], cfg.get("full_batch", False), gen, device)
        t = _draw_times(cfg["batch_size"], lam_lo, lam_hi, gen, device)
        z = torch.randn(cfg["batch_size"], d, generator=gen, device=device)
        if cpu_step is not None:
            started = time.perf_counter()
            loss = cpu_step(data[idx], t, z, lr, 1 - ema_decay(cfg["ema"], step))
            if not compile_s:  # the first call traces and compiles both graphs
                compile_s = time.perf_counter() - started
                tick += compile_s  # the log's steps/s is the training's, compile aside
        else:
            for group in opt.param_groups:
                group["lr"] = lr
            x = process.noised(data[idx], t, z)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = (forward(x, t).float() - z).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"], foreach=True)
            opt.step()
            with torch.no_grad():  # EMA: θ_ema ← θ_ema + (1 − decay_k)(θ − θ_ema)
                torch._foreach_lerp_(ema_params, params, 1 - ema_decay(cfg["ema"], step))
        step += 1
        pending.append(loss.detach())  # no host read here (module doc)
        logged = step % cfg["log_every"] == 0 or step == total
        if logged or step in save_at:
            flush()  # before a checkpoint too: never save weights a NaN step has reached
        if logged:
            now = time.perf_counter()  # after the flush, which waited for the device
            rate = (step - ticked_at) / max(now - tick, 1e-9)
            tick, ticked_at = now, step
            hist["step"].append(step)
            hist["loss"].append(float(np.mean(window)))  # the window's mean, on every device
            hist["lr"].append(lr)
            hist["steps_per_s"].append(rate)
            window.clear()
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
    if compiled:
        log.info("compiling took %.1f s", compile_s)
    return {"ema": ema.state_dict(), "history": hist, "step": step, "compile_s": compile_s}


def _state(net, ema, opt, gen, step, hist, window, fingerprint):
    return {
        "model": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": gen.get_state(),
        "rng_device": gen.device.type,
        "step": torch.tensor(step),
        "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in hist.items()},
        "window": torch.tensor(window, dtype=torch.float64),
        "fingerprint": fingerprint,
    }


def history_dataset(hist: dict) -> xr.Dataset:
    """The training log store: loss, learning rate and steps/s at each logged step."""
    import xarray as xr  # here: the training loop itself needs no xarray (module doc)

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
