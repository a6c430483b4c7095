"""The forward Ornstein–Uhlenbeck process, its DDPM dictionary and the time grids.

Convention (SCIENCE.md §1, the paper's eq. 1): dx = −x dt + dB with noise variance 2 dt, so
x(t) = a e^{−t} + √Δ_t z with Δ_t = 1 − e^{−2t}. Every time stored anywhere is this OU time t
(float64). A DDPM schedule maps onto it through ᾱ_k = e^{−2 t_k}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

SPACINGS = ("log_snr", "log", "linear", "ddpm_linear", "ddpm_cosine")


def delta(t):
    """Δ_t = 1 − e^{−2t}, the variance of the noise added by time t (accurate at small t)."""
    if isinstance(t, torch.Tensor):
        return -torch.expm1(-2.0 * t)
    if isinstance(t, float | int):
        return -math.expm1(-2.0 * t)
    return -np.expm1(-2.0 * np.asarray(t, dtype=np.float64))


def blurred_variance(t, sigma: float):
    """Γ_t = Δ_t + σ² e^{−2t}: the variance at time t of a point blurred by N(0, σ² I) at t = 0
    (a GMM component of width σ, a smoothed training point); a float for a float t."""
    if not isinstance(t, np.ndarray):  # a float, an int or a 0-d tensor or numpy scalar
        t = float(t)
        return delta(t) + float(sigma) ** 2 * math.exp(-2.0 * t)
    t = np.asarray(t, dtype=np.float64)
    return delta(t) + float(sigma) ** 2 * np.exp(-2.0 * t)


def log_snr(t):
    """Log signal-to-noise ratio λ(t) = log(e^{−2t} / Δ_t) (numpy float64, or torch)."""
    if isinstance(t, torch.Tensor):
        return -2.0 * t - torch.log(delta(t))
    t = np.asarray(t, dtype=np.float64)
    return -2.0 * t - np.log(delta(t))


def time_from_log_snr(lam):
    """Inverse of `log_snr`: e^{−2t} = σ(λ), so t = ½ log(1 + e^{−λ})."""
    return 0.5 * np.logaddexp(0.0, -np.asarray(lam, dtype=np.float64))


def noised(a: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor:
    """x(t) = a e^{−t} + √Δ_t z, the forward process from x(0) = a with noise z; t a float or
    one time per row of a."""
    if isinstance(t, torch.Tensor):
        shape = (-1, *([1] * (a.dim() - 1)))
        return a * torch.exp(-t).reshape(shape) + torch.sqrt(delta(t)).reshape(shape) * z
    return a * math.exp(-t) + math.sqrt(delta(float(t))) * z


def forward_sample(a: torch.Tensor, t: float, generator: torch.Generator | None = None):
    """Exact draw of x(t) given x(0) = a: a e^{−t} + √Δ_t z."""
    z = torch.randn(a.shape, generator=generator, dtype=a.dtype, device=a.device)
    return noised(a, t, z)


# --- DDPM dictionary ---------------------------------------------------------------------


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
    """Ho et al. 2020's linear β schedule (the paper's), float64."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def cosine_alphas_bar(num_steps: int = 1000, s: float = 0.008):
    """Nichol & Dhariwal 2021, eq. 17: ᾱ_k = f(k)/f(0), f(k) = cos²((k/K + s)/(1 + s) · π/2).

    β_k is clipped at 0.999 as in the paper (eq. 17 and the text after it)."""
    k = np.arange(num_steps + 1, dtype=np.float64)
    f = np.cos((k / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1 - betas)


def alphas_bar(schedule: str = "linear", num_steps: int = 1000):
    """ᾱ_k for k = 1..K (index 0 of the array is step 1)."""
    if schedule == "linear":
        return np.cumprod(1 - linear_betas(num_steps))
    if schedule == "cosine":
        return cosine_alphas_bar(num_steps)
    raise ValueError(f"unknown DDPM schedule {schedule!r}: use 'linear' or 'cosine'")


def step_to_time(alpha_bar):
    """OU time of a DDPM step: e^{−2 t_k} = ᾱ_k, t_k = −½ log ᾱ_k."""
    return -0.5 * np.log(np.asarray(alpha_bar, dtype=np.float64))


def time_to_step(t, alpha_bar):
    """Nearest DDPM step index (0-based into `alpha_bar`) to OU time(s) t."""
    tk = step_to_time(alpha_bar)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    idx = np.searchsorted(tk, t).clip(1, len(tk) - 1)
    nearer_left = np.abs(t - tk[idx - 1]) <= np.abs(tk[idx] - t)
    return np.where(nearer_left, idx - 1, idx)


# --- time grids ---------------------------------------------------------------------------


def time_grid(T: float, t_min: float, steps: int, spacing: str = "log_snr"):
    """Descending integration grid of `steps + 1` OU times from T to t_min (float64).

    - ``log_snr``: uniform in λ(t) = log(e^{−2t}/Δ_t) (Lu et al. 2022, DPM-Solver §3.3): steps
      are geometric near t_min, where the score varies like 1/Δ_t, and uniform in t at large t,
      where speciation happens.
    - ``log``: uniform in log t; ``linear``: uniform in t.
    - ``ddpm_linear`` / ``ddpm_cosine``: `steps` equally spaced steps of the 1000-step DDPM
      schedule, mapped to OU time by e^{−2t} = ᾱ; T and t_min are then the schedule's own.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown time spacing {spacing!r}: use one of {', '.join(SPACINGS)}")
    if spacing.startswith("ddpm_"):
        tk = step_to_time(alphas_bar(spacing.removeprefix("ddpm_"), 1000))
        idx = np.unique(np.round(np.linspace(0, len(tk) - 1, steps + 1)).astype(int))
        return tk[idx][::-1].copy()
    if not 0 < t_min < T:
        raise ValueError(f"time grid needs 0 < t_min < T, got t_min={t_min}, T={T}")
    if spacing == "log_snr":
        lam = np.linspace(log_snr(T), log_snr(t_min), steps + 1)
        grid = time_from_log_snr(lam)
    elif spacing == "log":
        grid = np.geomspace(T, t_min, steps + 1)
    else:
        grid = np.linspace(T, t_min, steps + 1)
    grid[0], grid[-1] = T, t_min  # exact end points despite round-off
    return grid


def saved_indices(num_times: int, saved: int):
    """Indices of the grid times kept in the trajectory store: `saved` of them, evenly spread
    over the grid (so as dense as the grid near t_min), always including both ends."""
    saved = min(max(saved, 2), num_times)  # saved < 2 would drop the final state
    return np.unique(np.round(np.linspace(0, num_times - 1, saved)).astype(int))


def clone_indices(grid, count: int, t_lo: float | None = None, t_hi: float | None = None):
    """Indices of `count` clone times among the grid times, spread evenly in t over
    [t_lo, t_hi] (default: the whole grid but its last point), without repeats.

    Speciation is a large-t phenomenon (t_S = ½ log Λ), so clone times are spread uniformly in
    t rather than in grid index, which crowds near t_min."""
    grid = np.asarray(grid)
    lo = grid[-2] if t_lo is None else t_lo
    hi = grid[0] if t_hi is None else t_hi
    targets = np.linspace(hi, lo, count)
    idx = np.abs(grid[None, :-1] - targets[:, None]).argmin(axis=1)
    return np.unique(idx)


def clone_indices_from_settings(grid, clone_cfg: dict, T: float):
    """Indices of the clone times of a `cloning` config section: the explicit OU times `at`
    (each must lie on the grid, as 1, 1.5, …, 10 do on a uniform dt = 0.01 grid from T = 10),
    else `times` of them spread evenly over [t_lo, T]."""
    grid = np.asarray(grid)
    at = clone_cfg.get("at")
    if not at:
        return clone_indices(grid, clone_cfg["times"], clone_cfg["t_lo"], T)
    at = np.asarray(at, dtype=np.float64)
    idx = np.abs(grid[None, :-1] - at[:, None]).argmin(axis=1)
    off = np.abs(grid[idx] - at) > 1e-6 * np.maximum(1.0, at)
    if off.any():
        t = float(at[off][0])
        near = float(grid[idx[off][0]])
        raise ValueError(
            f"cloning.at: {t:g} is not a time of the integration grid (nearest {near:.6g}); "
            "choose time.T, time.steps and time.spacing so that it is, or drop cloning.at"
        )
    return np.unique(idx)


@dataclass(frozen=True, eq=False)
class TimeGrid:
    """One job's time axis, built once from its `time` config section and handed to whatever
    in the job integrates, saves or clones on it.

    `times` is the descending integration grid (float64, `time_grid`), `saved` the indices kept
    in the trajectory store (`saved_indices`; a section without `saved`, like the probes',
    keeps both ends), `settings` the section itself (its `T` places clone times, and it goes
    into the store's attrs)."""

    times: np.ndarray
    saved: np.ndarray
    settings: dict = field(repr=False)

    @classmethod
    def from_settings(cls, time_cfg: dict, steps: int | None = None) -> TimeGrid:
        """The grid of a `time` section; `steps` replaces its step count (the training axis's
        DDIM grid keeps the run's T, t_min and spacing)."""
        steps = time_cfg["steps"] if steps is None else steps
        times = time_grid(time_cfg["T"], time_cfg["t_min"], steps, time_cfg["spacing"])
        return cls(times, saved_indices(len(times), time_cfg.get("saved", 2)), dict(time_cfg))

    def __len__(self) -> int:
        return len(self.times)

    @property
    def saved_times(self) -> np.ndarray:
        return self.times[self.saved]

    @property
    def noisy_last(self) -> bool:
        """A DDPM grid ends, as Ho et al.'s sampler does, with a noisy step to t_1 followed by
        the noiseless x̂₀ step; other grids drop the noise of their last step (pitfall 1)."""
        return self.settings["spacing"].startswith("ddpm_")

    def clone_indices(self, clone_cfg: dict) -> np.ndarray:
        """Indices of the clone times of a `cloning` section (`clone_indices_from_settings`)."""
        return clone_indices_from_settings(self.times, clone_cfg, self.settings["T"])
