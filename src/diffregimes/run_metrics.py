"""Rule `metrics`: every per-run measurement of one run's trajectories (φ, t_S, t̂_C, the
collapse fraction, φ_C, d₁/d₂ and f_mem on the clean samples x̂₀), joined with its data cell's
theory store into the metrics store whose variable names are the contract of DESIGN.md; a
learned score's training axis is added by `add_training_axis`.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch
import xarray as xr
from scipy import stats

from . import metrics, probes, process, theory
from .data import law
from .judge_correction import correctable, corrected_phi, speciation_threshold
from .neighbours import half_sq_norms, nearest
from .speciation import speciation_time_fit
from .store import estimate

log = logging.getLogger(__name__)

NOT_APPLICABLE_NO_CLASSES = "the data have no classes (a single Gaussian law): φ is undefined"

NO_JUDGE = "no class judge was given for these images: φ is undefined"


def _classify(train: xr.Dataset, x: torch.Tensor, judge=None):
    """Class of generated points: sign(m·x) for the GMM (SCIENCE.md §3), the class judge's
    label for images; None without classes."""
    if "m" in train:
        m = torch.as_tensor(train["m"].values, dtype=x.dtype)
        return (x @ m > 0).long()
    if judge is not None:
        from .judge import judge_classes

        return judge_classes(judge, x.float())
    return None


def _clone_labels(traj: xr.Dataset, train: xr.Dataset, a, judge, budget: int, device):
    """(nearest training index, class or None) of every clone's x̂₀, shaped (clone_time, pair,
    copy): as the sample job recorded them for every pair (`clone_nearest`, `clone_class`), or
    from the stored end points `x_hat_clone`; a class judge (images) labels the end points."""
    if "clone_nearest" in traj:
        cidx = traj["clone_nearest"].values
        if "clone_class" in traj:  # labelled in the sample job (GMM sign, or the judge)
            return cidx, traj["clone_class"].values.astype(np.int64)
        if judge is None and "m" not in train:
            return cidx, None
        if traj.sizes["pair"] < traj.sizes["clone_pair"]:
            raise ValueError(
                f"the class judge needs every clone end point, but the trajectory store keeps "
                f"{traj.sizes['pair']} of {traj.sizes['clone_pair']} pairs: remove "
                "cloning.stored_pairs for this dataset and rerun"
            )
    xc = torch.as_tensor(traj["x_hat_clone"].values, device=device)  # (clone_time, pair, 2, f)
    flat = xc.reshape(-1, xc.shape[-1])
    if "clone_nearest" not in traj:
        cidx = nearest(flat, a, k=1, budget_bytes=budget)[1][:, 0].reshape(xc.shape[:3])
        cidx = cidx.cpu().numpy()
    labels = _classify(train, flat.cpu(), judge)
    return cidx, None if labels is None else labels.numpy().reshape(xc.shape[:3])


def _no_classes_reason(train: xr.Dataset, judge_reason: str | None) -> str:
    if judge_reason:
        return judge_reason
    if law(train).get("kind") == "gaussian":
        return NOT_APPLICABLE_NO_CLASSES
    return NO_JUDGE


def _phi_limit(train: xr.Dataset) -> float:
    """φ's large-t limit Σ_c p_c²: ½ for the GMM's law (balanced by construction), the
    training labels' class proportions for real data (SCIENCE.md §3, pitfall 5)."""
    if "m" in train:
        return 0.5
    counts = np.unique(train["label"].values, return_counts=True)[1]
    return float(((counts / counts.sum()) ** 2).sum())


def _undo_judge(phi, confusion):
    """φ with the class judge's errors undone (for every bootstrap replicate of φ)."""
    return corrected_phi(phi, confusion)[0]


def _speciation_estimator(train: xr.Dataset, pairs: int, cfg: dict):
    """The fit of φ(t) for t_S: η linear in t for the GMM (its exact shape at σ = 1), and
    quadratic with a curvature prior for data whose φ has an unknown shape (speciation)."""
    if "m" in train:
        return speciation_time_fit
    return functools.partial(
        speciation_time_fit, pairs=pairs, curvature_sd=cfg.get("t_S_curvature_sd", 0.5)
    )


def nearest_per_time(x: torch.Tensor, a: torch.Tensor, times, budget: int, half_sq=None):
    """(sample, time) index of the training point a^μ e^{−t} nearest to x(sample, t, ·) at every
    saved time: one `nearest` call per saved time for all samples at once, with the centres
    scaled inside it (no scaled copy of the training set per time)."""
    if half_sq is None:
        half_sq = half_sq_norms(a)
    idx = [
        nearest(x[:, k], a, 1, budget, scale=math.exp(-float(t)), half_sq=half_sq)[1][:, 0]
        for k, t in enumerate(times)
    ]
    return torch.stack(idx, dim=1).cpu().numpy()


def run_metrics(
    traj: xr.Dataset,
    train: xr.Dataset,
    theory_ds: xr.Dataset,
    cfg: dict,
    seed: int,
    device="cpu",
    judge=None,
    judge_accuracy: float = float("nan"),
    judge_reason: str | None = None,
    judge_confusion=None,
    probes_ds: xr.Dataset | None = None,
) -> xr.Dataset:
    """Every per-run metric of DESIGN.md from a trajectory store and its training set.

    The generated samples are the clean estimates x̂₀ (`x_hat`, `x_hat_clone`): d₁/d₂, f_mem,
    φ_C and the classes of clone end points are taken on them (SCIENCE.md §5). For images,
    `judge` (judge.Judge) labels the clone end points; φ is then corrected for its errors with
    its held-out confusion matrix `judge_confusion` before t_S is read off (SCIENCE.md §3).
    Without classes, φ is NaN with `judge_reason`. With `probes_ds` (the probe store), the
    forward–backward retentions and t_S_probe, t_C_probe (probes.probe_metrics: the judge
    correction and the t_S estimator of cloning) are added."""
    rng = np.random.default_rng(seed)
    budget = int(cfg["memory_budget_mb"] * 2**20)
    level = cfg.get("confidence_level", 0.95)
    a = torch.as_tensor(train["x"].values, dtype=torch.float32, device=device)
    times = traj["time"].values
    if not np.allclose(times, theory_ds["time"].values, rtol=1e-12, atol=0):
        raise ValueError("trajectory and theory stores have different time grids: rerun both")
    x = torch.as_tensor(traj["x"].values, device=device)  # (sample, time, feature)

    # Collapse: nearest training point a^μ e^{−t} at every saved time (float64 refinement).
    log.info("nearest neighbours of %d samples at %d times", x.shape[0], len(times))
    half_sq = half_sq_norms(a)
    nn_index = nearest_per_time(x, a, times, budget, half_sq)
    t_collapse = metrics.collapse_times(nn_index, times)
    collapsed, collapsed_lo, collapsed_hi = metrics.collapse_fraction(t_collapse, times, level)

    # Memorisation of the generated samples x̂₀: d₁/d₂ against the training set itself.
    x_hat = torch.as_tensor(traj["x_hat"].values, device=device)
    dist, _ = nearest(x_hat, a, k=2, budget_bytes=budget, half_sq=half_sq)
    nn_ratio = metrics.memorisation_ratio(dist[:, 0].cpu(), dist[:, 1].cpu())
    f_mem, f_mem_lo, f_mem_hi = metrics.memorised_fraction(
        nn_ratio, cfg["memorisation_threshold"], level, cfg.get("interval", "wilson")
    )

    # Clones: same class (φ) and same nearest training point (φ_C), both on x̂₀.
    cidx, labels = _clone_labels(traj, train, a, judge, budget, device)
    ct, pairs = cidx.shape[:2]
    phi_train, phi_train_se = metrics.same_nearest_fraction(cidx[..., 0], cidx[..., 1])
    clone_times = traj["clone_time"].values

    spec = law(train)
    phi_limit = _phi_limit(train) if labels is not None else np.nan
    nan_ct = np.full(ct, np.nan)
    phi = phi_se = phi_raw = phi_raw_se = phi_theory = nan_ct
    t_s = t_s_se = t_s_interp = no_cross = float("nan")
    threshold, correction_reason, correct = float("nan"), None, None
    if labels is not None:
        labels = np.asarray(labels).reshape(ct, pairs, 2)
        phi_raw, phi_raw_se = metrics.same_class_fraction(labels[..., 0], labels[..., 1])
        same = labels[..., 0] == labels[..., 1]
        threshold = speciation_threshold(phi_limit)  # GMM classes are exact: correct is None
        if judge is not None:
            correction_reason = correctable(judge_confusion, cfg.get("judge_min_accuracy", 0.6))
            if correction_reason is None:
                correct = functools.partial(_undo_judge, confusion=judge_confusion)
                phi, phi_se = corrected_phi(phi_raw, judge_confusion, se=phi_raw_se)
        else:
            phi, phi_se = phi_raw, phi_raw_se
        if correction_reason is None:
            t_s_interp = metrics.speciation_time_measured(clone_times, phi, threshold)
            t_s, t_s_se, no_cross = metrics.speciation_time_bootstrap(
                clone_times,
                same,
                cfg["bootstrap"],
                rng,
                threshold=threshold,
                floor=phi_limit,
                correct=correct,
                estimator=_speciation_estimator(train, pairs, cfg),
            )
        if "m" in train:
            mu_sq = float((train["m"].values ** 2).sum())
            blur = theory_ds.attrs.get("blur_sigma", 0.0)  # a smoothed baseline: σ² + σ_s²
            phi_theory = theory.phi_gmm_time(clone_times, mu_sq, math.hypot(spec["sigma"], blur))

    ds = xr.Dataset(
        {
            **estimate("phi_class", "clone_time", phi, se=phi_se),
            **estimate("phi_class_raw", "clone_time", phi_raw, se=phi_raw_se),
            "phi_theory": (("clone_time",), phi_theory),
            **estimate("phi_train", "clone_time", phi_train, se=phi_train_se),
            **estimate("collapse_fraction", "time", collapsed, ci=(collapsed_lo, collapsed_hi)),
            "t_collapse": (("sample",), t_collapse),
            "nn_ratio": (("sample",), nn_ratio),
            **estimate("t_S_measured", (), t_s, se=t_s_se),
            "t_S_no_crossing_fraction": no_cross,
            "t_S_interpolated": t_s_interp,
            "phi_threshold": threshold,
            **estimate("t_C_measured", (), np.mean(t_collapse), se=stats.sem(t_collapse)),
            **estimate("f_mem", (), f_mem, ci=(f_mem_lo, f_mem_hi)),
            "phi_limit": phi_limit,
            "judge_accuracy": float(judge_accuracy),
        },
        coords={
            "clone_time": clone_times,
            "time": times,
            "sample": traj["sample"].values,
        },
    )
    for name in THEORY_VARIABLES:
        if name in theory_ds:
            ds[name] = theory_ds[name]
    k_s = float(theory_ds["k_S_ddpm"]) if "k_S_ddpm" in theory_ds else float("nan")
    ds["t_S_measured_k_over_k_S"] = ddpm_step_of_time(t_s) / k_s if k_s > 0 else float("nan")
    if labels is None:
        reason = _no_classes_reason(train, judge_reason)
        for name in (
            "phi_class",
            "phi_class_se",
            "phi_class_raw",
            "phi_class_raw_se",
            "phi_theory",
            "t_S_measured",
            "t_S_measured_se",
            "t_S_interpolated",
            "t_S_no_crossing_fraction",
        ):
            ds[name].attrs["not_applicable"] = reason
    elif "m" not in train:
        ds["phi_theory"].attrs["not_applicable"] = "no closed form of φ(t) for real data"
    if correction_reason is not None:
        for name in ("phi_class", "phi_class_se", "t_S_measured", "t_S_measured_se"):
            ds[name].attrs["not_applicable"] = correction_reason
    if judge is None:
        ds["judge_accuracy"].attrs["not_applicable"] = (
            "no class judge (GMM classes are exact: sign(m·x))"
            if "m" in train
            else _no_classes_reason(train, judge_reason)
        )
    if probes_ds is not None:  # classes the judge cannot be corrected for are not used
        usable = probes_ds if correction_reason is None else probes_ds.drop_vars("same_class")
        fit = functools.partial(_speciation_estimator, train, cfg=cfg)  # fit(points)
        args = (a.shape[0], phi_limit, threshold, cfg["bootstrap"], rng, level, correct, fit)
        ds = ds.merge(probes.probe_metrics(usable, *args))
    _describe(ds)
    ds.attrs.update(traj.attrs)
    ds.attrs["law"] = train.attrs.get("law", "{}")  # the training set's law, for the summary
    ds.attrs.update(
        metrics_settings=cfg,
        seed_metrics=int(seed),
        theory_seed_job=theory_ds.attrs["seed_job"],
        # σ_s of the blurred training set whose theory this run is measured against (a
        # smoothed baseline's), 0 for the training set itself
        theory_blur_sigma=float(theory_ds.attrs.get("blur_sigma", 0.0)),
    )
    return ds


# Variables of the theory store that every metrics store carries.
THEORY_VARIABLES = (
    "f_excess",
    "f_excess_se",
    "f_theory",
    "f_spectrum",
    "Lambda",
    "Lambda_channel0",
    "Lambda_all_channels",
    "Lambda_population",
    "alpha",
    "t_S_theory",
    "t_S_gmm",
    "t_S_ddpm",
    "k_S_ddpm",
    "t_C_theory",
    "t_C_entropy",
    "t_C_entropy_se",
    "t_C_entropy_level",
)


def ddpm_step_of_time(t: float) -> float:
    """The (fractional) step k of the linear 1000-step DDPM schedule at OU time t, counted from
    0 as in `theory.speciation_step_ddpm` and interpolated linearly between steps: the paper's
    k axis (Table 1: k/k_S)."""
    if not np.isfinite(t):
        return float("nan")
    tk = process.step_to_time(process.alphas_bar("linear", 1000))
    return float(np.interp(t, tk, np.arange(tk.size), left=np.nan, right=np.nan))


def _describe(ds: xr.Dataset):
    text = {
        "phi_class": "P(two clones branched at t end in the same class), corrected for the "
        "class judge's errors where a judge labels them",
        "phi_class_se": "standard error of phi_class (Wilson 1σ, scaled by the correction)",
        "phi_class_raw": "φ as the classes (or the judge) label the clone end points, uncorrected",
        "phi_class_raw_se": "Wilson 1σ standard error of phi_class_raw",
        "phi_theory": "GMM closed form of φ(t) (SCIENCE.md §3)",
        "phi_train": "P(two clones end at the same nearest training point), φ_C",
        "collapse_fraction": "fraction of trajectories already collapsed at t (Wilson CI)",
        "t_collapse": "t̂_C: largest saved t after which the nearest training point never changes",
        "nn_ratio": "d₁/d₂ of the generated sample x̂₀ to the training set (unsquared)",
        "t_S_measured": "largest t where a binomial fit of φ(t) over every clone time "
        "(speciation.speciation_time_fit: η linear in t for the GMM, quadratic with a curvature "
        "prior otherwise) crosses phi_threshold",
        "t_S_measured_se": "bootstrap SE of t_S_measured (parents resampled jointly)",
        "t_S_no_crossing_fraction": "fraction of bootstrap replicates of φ(t) with no crossing",
        "t_S_interpolated": "largest t where φ, linearly interpolated, crosses phi_threshold",
        "phi_threshold": "φ* = Σp² + (1 − Σp²)(0.7752 − ½)/½: the crossing that defines t_S",
        "t_S_measured_k_over_k_S": "measured t_S as a step of the linear 1000-step DDPM schedule, "
        "over k_S (the paper's k/k_S)",
        "t_C_measured": "mean of t̂_C over trajectories",
        "t_C_measured_se": "standard error of the mean of t̂_C",
        "f_mem": "fraction of generated samples x̂₀ with d₁/d₂ < threshold (Wilson CI)",
        "phi_limit": "large-t limit of φ: Σ_c p_c² over the training labels",
        "judge_accuracy": "held-out accuracy of the class judge that labels clone end points",
    }
    for name, desc in text.items():
        ds[name].attrs["description"] = desc


TRAINING_AXIS = (
    "f_mem_by_step",
    "f_mem_by_step_ci_low",
    "f_mem_by_step_ci_high",
    "score_error_empirical",
    "score_error_population",
    "tau_mem",
    "tau_mem_ci_low",
    "tau_mem_ci_high",
    "tau_mem_censored",
    "score_error_population_mean",
    "score_error_population_mean_se",
    "dsm_gap",
    "dsm_gap_se",
    "dsm_gap_mean",
    "dsm_gap_mean_se",
    "dsm_gap_relative",
    "energy_distance",
    "energy_distance_se",
    "tau_mem_dsm",
    "tau_mem_dsm_ci_low",
    "tau_mem_dsm_ci_high",
    "tau_mem_dsm_censored",
    "tau_gen",
    "tau_gen_bracket_low",
    "tau_gen_bracket_high",
    "tau_gen_end",
    "tau_gen_end_bracket_low",
    "tau_gen_end_bracket_high",
    "tau_gen_energy",
    "tau_gen_energy_bracket_low",
    "tau_gen_energy_bracket_high",
    "score_r2",
    "score_r2_se",
    "model_width",
    "model_batch_size",
    "model_steps",
)


def add_training_axis(run: xr.Dataset, axis: xr.Dataset) -> xr.Dataset:
    """Join a learned score's training-time axis (same saved times) into its metrics."""
    if not np.allclose(run["time"].values, axis["time"].values, rtol=1e-12, atol=0):
        raise ValueError("training-axis and trajectory stores have different time grids")
    out = run.copy()
    axis = axis.assign_coords(time=run["time"].values)  # identical up to round-off
    for name in TRAINING_AXIS:
        out[name] = axis[name]
    out.attrs["training_axis_settings"] = axis.attrs.get("settings", "")
    return out
