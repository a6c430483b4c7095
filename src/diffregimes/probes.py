"""Forward–backward probes: the trajectory seen from the data side (SCIENCE.md §8).

A data point a (a training point, or a held-out one) is noised to time t, x = a e^{−t} + √Δ_t z,
and the backward process of the run's score runs from t to t_min; the end point's clean
estimate x̂₀ is compared with a. Class retention: x̂₀ has a's class. Identity retention: the
training point nearest x̂₀ is the one nearest a (a itself for a training point). For an exact
score the backward run from x_t samples P(x₀ | x_t), and so does a: the two are exchangeable
given x_t, so class retention is φ(t) of cloning and identity retention of training points is
φ_C(t) (for the empirical score E Σ_μ w_μ(x_t)²): t_S and t_C from the other direction
(Sclocchi, Favero & Wyart, PNAS 2025), with binomial errors over the probed points.

`probe_store` records the raw outcomes (one boolean per origin, probe time and point);
`probe_metrics` turns them into retention curves with Wilson intervals and the crossing times
t_S (class retention through the φ* of speciation) and t_C (identity retention of training
points through ½), with bootstrap SEs that resample the probed points jointly over times.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from . import metrics, process, samplers, theory
from .neighbours import nearest

log = logging.getLogger(__name__)

ORIGINS = ("train", "held_out")
IDENTITY_LEVEL = 0.5  # t_C: where identity retention of training points falls through ½


def probe_indices(grid: np.ndarray, times: int, t_lo: float) -> np.ndarray:
    """`times` indices of the (descending) time grid, log-spaced in t from t_lo to T."""
    wanted = np.geomspace(t_lo, float(grid[0]), times)
    idx = np.abs(np.log(grid[:-1, None]) - np.log(wanted[None, :])).argmin(0)
    return np.unique(idx)


def forward_backward(score_fn, starts, grid, k: int, sampler: str, generator, noisy_last=False):
    """x̂₀ of the backward run of `score_fn` from each start noised to grid[k] (fresh noise
    from `generator`, on the starts' device) down to grid[-1]."""
    t = float(grid[k])
    z = torch.randn(starts.shape, generator=generator, dtype=starts.dtype, device=starts.device)
    x = process.noised(starts, t, z)
    end, _ = samplers.sample(score_fn, x, grid[k:], sampler, generator, noisy_last=noisy_last)
    return samplers.denoised(score_fn, end, float(grid[-1]))


def probe_store(
    score_fn,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    grid: np.ndarray,
    probe_cfg: dict,
    sampler: str,
    seed: int,
    budget_bytes: int,
    classify=None,
    noisy_last: bool = False,
    progress=None,
) -> xr.Dataset:
    """same_class and same_nearest (origin, probe_time, point) of forward–backward runs from
    `probe_cfg["points"]` training and held-out points (the first ones, all of a smaller set:
    both sets are drawn i.i.d. already; NaN pads the smaller) at `probe_cfg["times"]` times
    log-spaced over [t_lo, T] of `grid`.

    `classify(x) -> labels` classes start and end points alike (NaN same_class without it);
    `sampler` must be stochastic (a deterministic map is not a posterior sample)."""
    if sampler not in samplers.STOCHASTIC:
        raise ValueError(f"forward–backward probes need a stochastic sampler, not {sampler}")
    idx = probe_indices(grid, probe_cfg["times"], probe_cfg["t_lo"])
    gen = torch.Generator(device=train_x.device).manual_seed(seed)
    sets = (train_x[: probe_cfg["points"]], test_x[: probe_cfg["points"]])
    points = max(len(x) for x in sets)  # NaN beyond a set's own size (n < points)
    same_class = np.full((len(ORIGINS), len(idx), points), np.nan)
    same_nearest = np.full((len(ORIGINS), len(idx), points), np.nan)
    for o, starts in enumerate(sets):
        p = len(starts)
        _, own = nearest(starts, train_x, 1, budget_bytes)  # a itself for a training point
        start_class = classify(starts) if classify is not None else None
        for j, k in enumerate(idx):
            hat = forward_backward(score_fn, starts, grid, int(k), sampler, gen, noisy_last)
            _, end = nearest(hat, train_x, 1, budget_bytes)
            same_nearest[o, j, :p] = (end[:, 0] == own[:, 0]).cpu().numpy()
            if classify is not None:
                same_class[o, j, :p] = (classify(hat) == start_class).cpu().numpy()
            if progress is not None:
                progress(p * (len(grid) - 1 - int(k)))
    ds = xr.Dataset(
        {
            "same_class": (("origin", "probe_time", "point"), same_class),
            "same_nearest": (("origin", "probe_time", "point"), same_nearest),
        },
        coords={"origin": list(ORIGINS), "probe_time": grid[idx]},
    )
    ds["same_class"].attrs["description"] = (
        "x̂₀ of the backward run from the noised start has the start's class (NaN: no classes)"
    )
    ds["same_nearest"].attrs["description"] = (
        "the training point nearest x̂₀ is the one nearest the start (itself for a training point)"
    )
    ds.attrs.update(sampler=sampler, seed_probes=int(seed))
    return ds


def _falling_crossing(t, values, threshold, floor):
    """The largest t where a falling curve, linearly interpolated, crosses `threshold`; the
    `speciation_time_bootstrap` estimator signature, vectorised over leading axes."""
    rows = np.asarray(values, dtype=np.float64).reshape(-1, len(t))
    out = np.array([theory.crossing_time(t, -r, -threshold) for r in rows])
    return out.reshape(np.shape(values)[:-1]) if np.ndim(values) > 1 else float(out[0])


def _probed(same: np.ndarray) -> np.ndarray:
    """The (time, point) outcomes of the points probed at every time, as booleans (the NaN
    padding and a classless run's NaNs dropped)."""
    return same[:, np.isfinite(same).all(0)].astype(bool)


def probe_metrics(
    probes: xr.Dataset,
    n_train: int,
    phi_limit: float,
    threshold: float,
    n_boot: int,
    rng,
    level: float = 0.95,
    correct=None,
    estimator_for=None,
) -> xr.Dataset:
    """Retention curves with Wilson intervals (origin, probe_time), their large-t limits, and
    t_S_probe (class retention of held-out points through `threshold`, the φ* of cloning, by
    the cloning estimator and judge correction `correct`) and t_C_probe (identity retention of
    training points through ½), each with a bootstrap SE over the probed points; and
    t_S_probe_train, the class-retention t_S of training points. `estimator_for(points)` gives
    the t_S estimator for that many probed points (None: the cloning default)."""
    if "same_class" not in probes:  # no classes, or a judge too poor to correct
        probes = probes.assign(same_class=probes["same_nearest"] * np.nan)
    t = probes["probe_time"].values
    out = {}
    for name, var in (("class_retention", "same_class"), ("identity_retention", "same_nearest")):
        same = probes[var].values  # (origin, time, point)
        ok = np.isfinite(same)
        hits, trials = np.where(ok, same, 0).sum(-1), ok.sum(-1)
        low, high = metrics.binomial_interval(hits, trials, level)
        with np.errstate(invalid="ignore"):
            out[f"probe_{name}"] = (("origin", "probe_time"), hits / trials)
        out[f"probe_{name}_ci_low"] = (("origin", "probe_time"), low)
        out[f"probe_{name}_ci_high"] = (("origin", "probe_time"), high)
    t_s = {}
    for origin in ORIGINS:  # a start drawn from the law the score samples gives φ(t) exactly
        same = _probed(probes["same_class"].sel(origin=origin).values)
        t_s[origin] = (float("nan"), float("nan"))
        if same.size:
            fit = estimator_for(same.shape[1]) if estimator_for is not None else None
            t_s[origin] = metrics.speciation_time_bootstrap(
                t, same, n_boot, rng, threshold, phi_limit, correct, fit
            )[:2]
    own = _probed(probes["same_nearest"].sel(origin="train").values)
    t_c, t_c_se, _ = metrics.speciation_time_bootstrap(
        t, own, n_boot, rng, IDENTITY_LEVEL, 1.0 / n_train, estimator=_falling_crossing
    )
    ds = xr.Dataset(
        {
            **out,
            "probe_class_chance": phi_limit,
            "probe_identity_chance": 1.0 / n_train,
            "t_S_probe": t_s["held_out"][0],
            "t_S_probe_se": t_s["held_out"][1],
            "t_S_probe_train": t_s["train"][0],
            "t_S_probe_train_se": t_s["train"][1],
            "t_C_probe": t_c,
            "t_C_probe_se": t_c_se,
        },
        coords={"origin": probes["origin"].values, "probe_time": t},
    )
    text = {
        "probe_class_retention": "fraction of forward–backward end points x̂₀ of the start's class",
        "probe_identity_retention": (
            "fraction of end points whose nearest training point is the start's nearest"
        ),
        "probe_class_chance": "large-t limit of class retention, Σ_c p_c²",
        "probe_identity_chance": "large-t limit of identity retention of training points, 1/n",
        "t_S_probe": (
            f"largest t where class retention of held-out points crosses {threshold:.4g} (the "
            "φ* of cloning: for the population score class retention of the law's points is "
            "φ(t)); bootstrap SE over points"
        ),
        "t_S_probe_train": (
            "t_S_probe from training points (for the empirical score, whose law they are, "
            "class retention is its cloning φ(t))"
        ),
        "t_C_probe": (
            f"largest t where identity retention of training points crosses {IDENTITY_LEVEL} "
            "(linear interpolation); bootstrap SE over points. A collapse time for a memorising "
            "score; for one that generalises, the noise level that erases a point's identity"
        ),
    }
    for name, desc in text.items():
        ds[name].attrs["description"] = desc
    if not np.isfinite(probes["same_class"].values).any():
        for name in ("t_S_probe", "t_S_probe_train"):
            ds[name].attrs["not_applicable"] = "no classes"
    return ds
