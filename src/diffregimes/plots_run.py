"""Figures of one run's report (workflow/notebooks/run.ipynb): each a function of the run's
metrics store (and its trajectories and training set) returning a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr

from .plots import finish, legend, points, vline

REGIME_COLOURS = {"I": "#9e9e9e", "II": "#1f77b4", "III": "#d62728"}


def run_speciation(m: xr.Dataset):
    """φ(t) by cloning (±1 SE; raw and corrected for the judge's errors where a judge labels
    the clones) with the GMM closed form, both t_S references and the measured t_S (± SE);
    φ_C(t) beside it."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    ax = axes[0]
    judged = "judge_accuracy" in m and np.isfinite(float(m.judge_accuracy))
    raw = m.phi_class_raw if "phi_class_raw" in m else m.phi_class
    if np.isfinite(raw).any():
        if judged:
            points(ax, m.clone_time, raw, m.phi_class_raw_se, "φ as judged (raw)", "x", color="C7")
        if np.isfinite(m.phi_class).any():
            label = "φ corrected for the judge" if judged else "measured φ"
            points(ax, m.clone_time, m.phi_class, m.phi_class_se, label)
        if np.isfinite(m.phi_theory).any():
            ax.plot(m.clone_time, m.phi_theory, "k-", lw=1, label="GMM closed form")
        level = float(m.phi_threshold) if "phi_threshold" in m else 0.7752
        if np.isfinite(level):
            ax.axhline(level, color="red", ls="--", lw=0.8, label=f"φ* = {level:.4f}")
        vline(ax, float(m.t_S_theory), "t_S = ½ log Λ (paper)", color="grey", ls=":")
        if "t_S_gmm" in m:
            vline(ax, float(m.t_S_gmm), "t_S exact GMM crossing", color="k", ls="--", lw=0.8)
        t_s = float(m.t_S_measured)
        if np.isfinite(t_s):
            se = float(m.t_S_measured_se)
            ax.axvspan(t_s - se, t_s + se, color="C1", alpha=0.2, lw=0)
            vline(ax, t_s, f"t_S measured {t_s:.3f} ± {se:.3f}", color="C1", ls="-.")
        if judged:
            acc = float(m.judge_accuracy)
            ax.axhline(acc, color="C2", lw=0.8, label=f"class judge accuracy {acc:.3f}")
        if not np.isfinite(m.phi_class).any() and "not_applicable" in m.t_S_measured.attrs:
            ax.set_title(m.t_S_measured.attrs["not_applicable"], fontsize=7)
        if "phi_limit" in m and np.isfinite(float(m.phi_limit)):
            ax.axhline(float(m.phi_limit), color="k", ls=":", lw=0.8, label="Σ p_c² (t → ∞)")
        legend(ax, fontsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            m.phi_class.attrs.get("not_applicable", "no classes"),
            ha="center",
            va="center",
            wrap=True,
            fontsize=8,
            transform=ax.transAxes,
        )
    ax.set(xlabel="clone time t", ylabel="φ(t) = P(same class)")
    ax.set_title("Speciation", loc="left")
    ax = axes[1]
    ax.errorbar(
        m.clone_time, m.phi_train, yerr=m.phi_train_se, fmt="s", ms=3, capsize=2, color="C3"
    )
    vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    ax.set(xlabel="clone time t", ylabel="φ_C(t)", title="Clones end at the same training point")
    return finish(fig, ax, fontsize=7)


def run_collapse(m: xr.Dataset):
    """Collapse fraction(t), the distribution of per-trajectory t̂_C, and f^e(t)/α."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(m.time, m.collapse_fraction, "-", color="C3")
    vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    vline(ax, float(m.t_C_measured), "mean t̂_C", color="C3", ls="-.")
    ax.set(xscale="log", xlabel="t", ylabel="fraction collapsed", title="Collapse fraction")
    legend(ax, fontsize=7)
    ax = axes[1]
    sns.histplot(m.t_collapse.values, ax=ax, bins=30, color="C3")
    vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    ax.set(xlabel="t̂_C", title="Per-trajectory collapse time")
    legend(ax, fontsize=7)
    ax = axes[2]
    alpha = float(m.alpha)
    f, se = m.f_excess / alpha, m.f_excess_se / alpha
    ax.fill_between(m.time, f - se, f + se, alpha=0.3, color="C0")
    ax.plot(m.time, f, "-", color="C0", label="Monte Carlo f^e")
    ax.plot(m.time, m.f_theory / alpha, "k--", lw=1, label="theory f")
    if "f_spectrum" in m:
        ax.plot(m.time, m.f_spectrum / alpha, ":", color="C2", lw=1, label="training spectrum")
    vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    ax.set(xscale="log", xlabel="t", ylabel="f(t) / α", title="Excess entropy")
    return finish(fig, ax, fontsize=7)


def projection(traj: xr.Dataset, train: xr.Dataset):
    """Unit direction(s) that show the regimes: m̂ for the GMM, else the top two principal
    components of the training data. Returns a (d, k) matrix and axis labels."""
    if "m" in train:
        m = train["m"].values
        return (m / np.linalg.norm(m))[:, None], ["m̂·x"]
    x = train["x"].values.astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    return vt[:2].T, ["PC1·x", "PC2·x"]


def run_trajectories(traj: xr.Dataset, train: xr.Dataset, m: xr.Dataset, shown: int = 40):
    """Backward trajectories projected on the direction that separates the classes, against
    t, coloured by regime: I above t_S (noise), II between t_S and the trajectory's own t̂_C
    (class chosen), III below t̂_C (collapsed onto a training point)."""
    proj, labels = projection(traj, train)
    t = traj.time.values
    x = traj.x.isel(sample=slice(0, shown)).values @ proj[:, 0]  # (sample, time)
    t_s = float(m.t_S_measured) if np.isfinite(m.t_S_measured) else float(m.t_S_theory)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i in range(x.shape[0]):
        t_c = float(m.t_collapse[i])
        regime = np.where(t > t_s, "I", np.where(t > t_c, "II", "III"))
        for name, colour in REGIME_COLOURS.items():
            mask = regime == name
            if mask.any():  # include the joining point so segments connect
                idx = np.flatnonzero(mask)
                idx = np.unique(np.clip(np.r_[idx, idx[-1] + 1], 0, len(t) - 1))
                ax.plot(t[idx], x[i, idx], color=colour, lw=0.7, alpha=0.8)
    ends = train["x"].values @ proj[:, 0]
    ax.plot(np.full(len(ends), t[-1] * 0.7), ends, "k_", ms=6, label="training points")
    for name, colour in REGIME_COLOURS.items():
        ax.plot([], [], color=colour, label=f"regime {name}")
    ax.axvline(t_s, color="grey", ls=":", lw=1)
    ax.set(
        xscale="log",
        xlabel="t (backward: right to left)",
        ylabel=labels[0],
        title="Trajectories and their regimes",
    )
    ax.invert_xaxis()
    return finish(fig, ax, fontsize=7, loc="upper left")


def _as_pictures(x: np.ndarray, train: xr.Dataset) -> np.ndarray:
    """Flattened centred pixels → images (N, side, side[, 3]) in [0, 1] for imshow."""
    c, h, w = (int(v) for v in train.attrs["image_shape"])
    pix = (x + train["pixel_mean"].values[None, :]).reshape(-1, c, h, w).clip(0, 1)
    return pix[:, 0] if c == 1 else pix.transpose(0, 2, 3, 1)


def image_samples(traj: xr.Dataset, train: xr.Dataset, shown: int = 12):
    """Generated images x̂₀ (top row) above their nearest training images (bottom row), each
    titled with d₁/d₂ (red below 1/3: a copy of a training image)."""
    x = traj["x_hat"].values[:shown].astype(np.float64)
    a = train["x"].values.astype(np.float64)
    d2 = (x**2).sum(1)[:, None] - 2 * x @ a.T + (a**2).sum(1)[None, :]  # few points: direct
    order = np.argsort(d2, axis=1)[:, :2]
    dist = np.sqrt(np.maximum(np.take_along_axis(d2, order, axis=1), 0))
    ratio = dist[:, 0] / np.maximum(dist[:, 1], 1e-12)
    gen, near = _as_pictures(x, train), _as_pictures(a[order[:, 0]], train)
    k = len(x)
    fig, axes = plt.subplots(2, k, figsize=(0.95 * k, 2.3), squeeze=False)
    for j in range(k):
        for row, pics in enumerate((gen, near)):
            ax = axes[row][j]
            ax.imshow(pics[j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set(xticks=[], yticks=[])
        axes[0][j].set_title(f"{ratio[j]:.2f}", fontsize=7, color="C3" if ratio[j] < 1 / 3 else "k")
    axes[0][0].set_ylabel("generated", fontsize=7)
    axes[1][0].set_ylabel("nearest\ntraining", fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig


def run_memorisation(m: xr.Dataset):
    """Histogram of d₁/d₂ of the end points, with the 1/3 line and f_mem."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.histplot(m.nn_ratio.values, bins=40, binrange=(0, 1), ax=ax, color="C4")
    ax.axvline(1 / 3, color="red", ls="--", lw=1, label="1/3")
    ax.set(
        xlabel="d₁ / d₂",
        title=f"Memorisation: f_mem = {float(m.f_mem):.3f} "
        f"[{float(m.f_mem_ci_low):.3f}, {float(m.f_mem_ci_high):.3f}]",
    )
    return finish(fig, ax, fontsize=7)


def run_training(m: xr.Dataset, log: xr.Dataset):
    """Training loss and f_mem(step) of a learned score, τ_mem dotted."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.5))
    axes[0].plot(log.step, log.loss, "-", color="C0")
    axes[0].set(
        xscale="log", yscale="log", xlabel="step", ylabel="DSM loss (ε-MSE)", title="Training loss"
    )
    ok = m.f_mem_by_step.notnull()
    axes[1].fill_between(
        m.step[ok], m.f_mem_by_step_ci_low[ok], m.f_mem_by_step_ci_high[ok], alpha=0.3, color="C3"
    )
    axes[1].plot(m.step[ok], m.f_mem_by_step[ok], "o-", color="C3", ms=3)
    tau = float(m.tau_mem)
    if "tau_mem_ci_low" in m and np.isfinite(tau):
        lo, hi = float(m.tau_mem_ci_low), float(m.tau_mem_ci_high)
        axes[1].axvspan(lo, hi if np.isfinite(hi) else float(m.step.max()), color="k", alpha=0.1)
    vline(axes[1], tau, f"τ_mem {tau:.3g}" if np.isfinite(tau) else "τ_mem", color="k", ls=":")
    if bool(m.get("tau_mem_censored", False)):
        axes[1].set_title(f"f_mem never reached its level: τ_mem > {int(m.step.max())}", fontsize=8)
    axes[1].set(xscale="log", xlabel="step", ylabel="f_mem", title="Memorisation along training")
    return finish(fig, axes[1], fontsize=7)


def run_probes(m: xr.Dataset):
    """Forward–backward retention (SCIENCE.md §8) against the probe time, Wilson bands: class
    retention (left; chance Σp²) with t_S from the probes and from cloning, identity retention
    (right; chance 1/n) with t_C from the probes and from the trajectories."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.5))
    t = m.probe_time.values
    panels = (
        ("class", "t_S_probe", "t_S_measured", "t_S", "cloning"),
        ("identity", "t_C_probe", "t_C_measured", "t_C", "trajectories"),
    )
    for ax, (kind, probe, other, label, how) in zip(axes, panels, strict=True):
        if not np.isfinite(m[f"probe_{kind}_retention"].values).any():  # data without classes
            ax.text(0.5, 0.5, f"no {kind}es to retain", ha="center", va="center")
            ax.set(xlabel="probe time t", ylabel=f"{kind} retention")
            continue
        for i, origin in enumerate(m.origin.values):
            sel = dict(origin=origin)
            value = m[f"probe_{kind}_retention"].sel(sel).values
            low = m[f"probe_{kind}_retention_ci_low"].sel(sel).values
            high = m[f"probe_{kind}_retention_ci_high"].sel(sel).values
            ax.fill_between(t, low, high, color=f"C{i}", alpha=0.2, lw=0)
            ax.plot(t, value, "o-", color=f"C{i}", ms=3, label=f"from {origin} points")
        ax.axhline(float(m[f"probe_{kind}_chance"]), color="grey", ls="--", lw=1, label="chance")
        vline(ax, float(m[probe]), f"{label} probes", color="k", ls=":")
        vline(ax, float(m[other]), f"{label} {how}", color="C3", ls="-.")
        ax.set(xscale="log", xlabel="probe time t", ylabel=f"{kind} retention", ylim=(-0.02, 1.02))
        legend(ax, fontsize=7)
    axes[0].set_title("Class kept by noise-and-denoise")
    axes[1].set_title("Training point kept")
    fig.tight_layout()
    return fig


R2_FLOOR = -0.5  # r² far below 0 (a reference the network does not follow at all) is clipped


def run_score_r2(m: xr.Dataset):
    """r²(t) of the final checkpoint's score against each closed-form reference (SCIENCE.md
    §7), ±1 SE, clipped below at R2_FLOOR; which score the network has learned at each t."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    last = m.sel(step=m.step.max())
    for i, ref in enumerate(m.reference.values):
        r2 = last.score_r2.sel(reference=ref).values
        se = last.score_r2_se.sel(reference=ref).values
        t = m.time.values
        ax.fill_between(t, np.maximum(r2 - se, R2_FLOOR), np.maximum(r2 + se, R2_FLOOR), alpha=0.2)
        ax.plot(t, np.maximum(r2, R2_FLOOR), "o-", ms=3, color=f"C{i}", label=str(ref))
    ax.axhline(1, color="k", lw=0.5)
    ax.set(
        xscale="log",
        ylim=(R2_FLOOR - 0.05, 1.05),
        xlabel="t",
        ylabel="r²(s_θ, s_ref)",
        title=f"Which score the network learned (step {int(m.step.max())})",
    )
    return finish(fig, ax, fontsize=7)
