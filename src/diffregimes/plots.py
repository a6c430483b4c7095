"""Figures of the reports, each a function of the summary store returning a Figure.

Every figure puts the measurement beside its theory so that agreement (or the lack of it) is
seen at a glance; the reports' captions say what to look for.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from . import theory

SCALARS = [
    "Lambda",
    "Lambda_all_channels",
    "alpha",
    "t_S_theory",
    "t_S_gmm",
    "t_S_ddpm",
    "t_S_measured",
    "t_S_measured_se",
    "t_S_no_crossing_fraction",
    "t_C_theory",
    "t_C_measured",
    "t_C_measured_se",
    "t_C_entropy",
    "t_C_entropy_se",
    "f_mem",
    "f_mem_ci_low",
    "f_mem_ci_high",
    "judge_accuracy",
    "tau_mem",
    "tau_mem_ci_low",
    "tau_mem_ci_high",
]


def run_table(summary: xr.Dataset) -> pd.DataFrame:
    """One row per run: its keys and the 0-d metrics."""
    keys = ["dataset", "d", "n", "seed", "score"]
    cols = {k: summary[k].values for k in keys}
    cols.update({v: summary[v].values for v in SCALARS if v in summary})
    return pd.DataFrame(cols).sort_values(keys).reset_index(drop=True)


def _points(ax, x, y, se, label, fmt="o", **kw):
    """Measured points with ±1 SE bars."""
    ax.errorbar(x, y, yerr=se, fmt=fmt, ms=3, capsize=2, label=label, **kw)


def _no_runs(ax) -> None:
    """Mark an empty figure (e.g. a grid without that score) instead of failing the report."""
    ax.text(0.5, 0.5, "no runs for this figure", ha="center", va="center")


def _panels_by_d(sub: xr.Dataset):
    """A row of panels, one per d (shared y axis): (fig, axes, [(ax, d, runs of that d)])."""
    ds_d = sorted({int(v) for v in sub.d.values})
    k = max(1, len(ds_d))
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), squeeze=False, sharey=True)
    if not ds_d:
        _no_runs(axes[0][0])
    panels = [
        (ax, d, sub.where(sub.d == d, drop=True))
        for ax, d in zip(axes[0][: len(ds_d)], ds_d, strict=True)
    ]
    return fig, axes, panels


def speciation_curves(summary: xr.Dataset, score: str = "population"):
    """φ(t) measured (points, ±1 SE) and the GMM closed form (line), one panel per d."""
    sub = summary.where(summary.score == score, drop=True)
    sub = sub.where(
        np.isfinite(sub.t_S_theory) & (sub.phi_class.count("clone_time") > 0), drop=True
    )
    fig, axes, panels = _panels_by_d(sub)
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            label = f"{run.dataset.item()} n={int(run.n)}"
            _points(ax, run.clone_time, run.phi_class, run.phi_class_se, label)
            ax.axvline(float(run.t_S_theory), color="grey", ls=":", lw=1)
        if np.isfinite(runs.phi_theory).any():
            best = runs.isel(run=0)
            ax.plot(best.clone_time, best.phi_theory, "k-", lw=1, label="theory (GMM)")
        ax.axhline(0.7752, color="red", lw=0.8, ls="--")
        ax.set(title=f"d = {d}", xlabel="clone time t", ylabel="φ(t)")
    _legend(axes[0][0], fontsize=7)
    fig.suptitle(f"Speciation by cloning ({score} score); dotted: t_S = ½ log Λ")
    fig.tight_layout()
    return fig


def measured_vs_theory(summary: xr.Dataset):
    """t_S and t_C measured against theory, one point per run, with the identity line. The t_S
    reference is the exact 0.7752 crossing for the GMM and ½ log Λ elsewhere."""
    table = run_table(summary)
    if "t_S_gmm" in table:
        table["t_S_theory"] = table.t_S_gmm.where(np.isfinite(table.t_S_gmm), table.t_S_theory)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (name, expected, measured, se) in zip(
        axes,
        [
            (
                "speciation time t_S (GMM: exact crossing)",
                "t_S_theory",
                "t_S_measured",
                "t_S_measured_se",
            ),
            ("collapse time t_C", "t_C_theory", "t_C_measured", "t_C_measured_se"),
        ],
        strict=True,
    ):
        ok = table[np.isfinite(table[measured])]
        for score, group in ok.groupby("score"):
            ax.errorbar(
                group[expected], group[measured], yerr=group[se], fmt="o", capsize=2, label=score
            )
        lim = [0, float(np.nanmax(ok[[expected, measured]].to_numpy(), initial=1.0)) * 1.1]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(xlabel=f"{name}, theory", ylabel=f"{name}, measured", title=name)
        _legend(ax, fontsize=8)
    fig.tight_layout()
    return fig


def speciation_table(summary: xr.Dataset) -> pd.DataFrame:
    """Measured t_S ± SE of every run with classes against both references, the deviations in
    units of the run's own SE: the paper's ½ log Λ and, for the GMM, the exact 0.7752 crossing
    ½ log(|m|² + 1 − σ²); the DDPM-quantised t_S of the paper's Table 1 beside them."""
    table = run_table(summary)
    table = table[np.isfinite(table.t_S_measured)].copy()
    se = table.t_S_measured_se
    out = table[["dataset", "d", "n", "score", "t_S_measured"]].copy()
    out["SE"] = se
    out["½ log Λ"] = table.t_S_theory
    out["(meas. − ½ log Λ)/SE"] = (table.t_S_measured - table.t_S_theory) / se
    if "t_S_gmm" in table:
        out["exact GMM"] = table.t_S_gmm
        out["(meas. − exact)/SE"] = (table.t_S_measured - table.t_S_gmm) / se
    if "t_S_ddpm" in table:
        out["DDPM-quantised"] = table.t_S_ddpm
    if "t_S_no_crossing_fraction" in table:
        out["no-crossing replicates"] = table.t_S_no_crossing_fraction
    return out.rename(columns={"t_S_measured": "t_S measured"}).reset_index(drop=True)


def excess_entropy(summary: xr.Dataset):
    """f^e(t)/α (Monte Carlo, points) and f(t)/α (theory, lines), one panel per d."""
    sub = summary.where(summary.score == summary.score[0], drop=True)  # f^e is score-free
    fig, axes, panels = _panels_by_d(sub)
    palette = sns.color_palette("viridis", n_colors=len(set(sub.n.values.tolist())))
    ns = sorted(set(int(v) for v in sub.n.values))
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            color = palette[ns.index(int(run.n))]
            alpha = float(run.alpha)
            ax.plot(run.time, run.f_theory / alpha, color=color, lw=1)
            ax.errorbar(
                run.time,
                run.f_excess / alpha,
                yerr=run.f_excess_se / alpha,
                fmt=".",
                color=color,
                ms=3,
                label=f"{run.dataset.item()} n={int(run.n)}",
            )
            ax.axvline(float(run.t_C_theory), color=color, ls=":", lw=1)
        ax.set(xscale="log", title=f"d = {d}", xlabel="t", ylabel="f(t) / α")
    _legend(axes[0][0], fontsize=7)
    fig.suptitle("Excess entropy: Monte Carlo f^e (points) and theory (lines); dotted: t_C")
    fig.tight_layout()
    return fig


def collapse_fractions(summary: xr.Dataset, score: str = "empirical"):
    """Fraction of trajectories collapsed onto their final training point, against t."""
    sub = summary.where(summary.score == score, drop=True)
    fig, axes, panels = _panels_by_d(sub)
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            (line,) = ax.plot(
                run.time, run.collapse_fraction, label=f"{run.dataset.item()} n={int(run.n)}"
            )
            ax.axvline(float(run.t_C_theory), color=line.get_color(), ls=":", lw=1)
        ax.set(xscale="log", title=f"d = {d}", xlabel="t", ylabel="collapsed fraction")
    _legend(axes[0][0], fontsize=7)
    fig.suptitle(f"Collapse ({score} score); dotted: t_C theory")
    fig.tight_layout()
    return fig


def collapse_vs_alpha(summary: xr.Dataset):
    """Measured t_C against α = ln n / d, with the GMM curve ½ log(1 + σ²/(e^{2α} − 1))."""
    table = run_table(summary)
    table = table[table.score == "empirical"]
    fig, ax = plt.subplots(figsize=(5, 4))
    if table.empty:
        _no_runs(ax)
        return fig
    sns.scatterplot(
        table, x="alpha", y="t_C_measured", hue="d", style="dataset", ax=ax, palette="viridis"
    )
    ax.errorbar(
        table.alpha, table.t_C_measured, yerr=table.t_C_measured_se, fmt="none", ecolor="k", lw=0.6
    )
    sns.scatterplot(
        table,
        x="alpha",
        y="t_C_theory",
        hue="d",
        style="dataset",
        ax=ax,
        palette="viridis",
        marker="x",
        legend=False,
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="α = ln n / d",
        ylabel="t_C",
        title="Collapse time against α (o measured, x theory)",
    )
    fig.tight_layout()
    return fig


def _learned(summary: xr.Dataset) -> xr.Dataset | None:
    if "f_mem_by_step" not in summary:
        return None
    sub = summary.where(summary.f_mem_by_step.notnull().any("step"), drop=True)
    return sub if sub.sizes["run"] else None


def memorisation_by_step(summary: xr.Dataset):
    """f_mem against training step for every learned run, one panel per d, a line per n;
    the dotted lines mark τ_mem. The follow-up's claim: τ_mem grows ∝ n."""
    sub = _learned(summary)
    if sub is None:
        return None
    ns = sorted({int(v) for v in sub.n.values})
    palette = sns.color_palette("viridis", n_colors=len(ns))
    fig, axes, panels = _panels_by_d(sub)
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            ok = run.f_mem_by_step.notnull()
            color = palette[ns.index(int(run.n))]
            ax.plot(
                run.step[ok],
                run.f_mem_by_step[ok],
                "o-",
                color=color,
                ms=3,
                label=f"{run.score.item()} n={int(run.n)}",
            )
            if np.isfinite(run.tau_mem):
                ax.axvline(float(run.tau_mem), color=color, ls=":", lw=1)
                lo, hi = float(run.tau_mem_ci_low), float(run.tau_mem_ci_high)
                if np.isfinite(lo) and np.isfinite(hi):  # τ_mem's interval
                    ax.axvspan(lo, hi, color=color, alpha=0.12, lw=0)
        ax.set(xscale="log", title=f"d = {d}", xlabel="training step", ylabel="f_mem")
    _legend(axes[0][0], fontsize=7)
    fig.suptitle("Memorisation along training; dotted: τ_mem")
    fig.tight_layout()
    return fig


def score_errors_by_step(summary: xr.Dataset, time_index: int | None = None):
    """Learned score's distance to the empirical (memorising) and population (generalising)
    scores against training step, at a mid-grid time, one panel per learned run."""
    sub = _learned(summary)
    if sub is None:
        return None
    k = sub.sizes["time"] // 2 if time_index is None else time_index
    t = float(sub.time[k])
    runs = sub.sizes["run"]
    cols = min(runs, 3)
    rows = int(np.ceil(runs / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, r in zip(axes.flat, range(runs), strict=False):
        run = sub.isel(run=r)
        ok = run.f_mem_by_step.notnull()
        for name, style in (("score_error_empirical", "o-"), ("score_error_population", "s--")):
            ax.plot(
                run.step[ok],
                run[name].isel(time=k)[ok],
                style,
                ms=3,
                label=name.removeprefix("score_error_"),
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="training step",
            title=f"d={int(run.d)} n={int(run.n)}",
        )
    for ax in axes.flat[runs:]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("Δ_t ‖s_θ − s‖²/d")
    _legend(axes[0][0], fontsize=7)
    fig.suptitle(f"Which score the network learns, at t = {t:.3g}")
    fig.tight_layout()
    return fig


# --- per-run figures (the run report) -----------------------------------------------------

REGIME_COLOURS = {"I": "#9e9e9e", "II": "#1f77b4", "III": "#d62728"}


def _legend(ax, **kw):
    """A legend when the axes have labelled artists (a NaN time draws no line, and matplotlib
    warns on an empty legend)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _vline(ax, x, label, **kw):
    if np.isfinite(x):
        ax.axvline(x, label=label, **kw)


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
            _points(ax, m.clone_time, raw, m.phi_class_raw_se, "φ as judged (raw)", "x", color="C7")
        if np.isfinite(m.phi_class).any():
            label = "φ corrected for the judge" if judged else "measured φ"
            _points(ax, m.clone_time, m.phi_class, m.phi_class_se, label)
        if np.isfinite(m.phi_theory).any():
            ax.plot(m.clone_time, m.phi_theory, "k-", lw=1, label="GMM closed form")
        level = float(m.phi_threshold) if "phi_threshold" in m else 0.7752
        if np.isfinite(level):
            ax.axhline(level, color="red", ls="--", lw=0.8, label=f"φ* = {level:.4f}")
        _vline(ax, float(m.t_S_theory), "t_S = ½ log Λ (paper)", color="grey", ls=":")
        if "t_S_gmm" in m:
            _vline(ax, float(m.t_S_gmm), "t_S exact GMM crossing", color="k", ls="--", lw=0.8)
        t_s = float(m.t_S_measured)
        if np.isfinite(t_s):
            se = float(m.t_S_measured_se)
            ax.axvspan(t_s - se, t_s + se, color="C1", alpha=0.2, lw=0)
            _vline(ax, t_s, f"t_S measured {t_s:.3f} ± {se:.3f}", color="C1", ls="-.")
        if judged:
            acc = float(m.judge_accuracy)
            ax.axhline(acc, color="C2", lw=0.8, label=f"class judge accuracy {acc:.3f}")
        if not np.isfinite(m.phi_class).any() and "not_applicable" in m.t_S_measured.attrs:
            ax.set_title(m.t_S_measured.attrs["not_applicable"], fontsize=7)
        if "phi_limit" in m and np.isfinite(float(m.phi_limit)):
            ax.axhline(float(m.phi_limit), color="k", ls=":", lw=0.8, label="Σ p_c² (t → ∞)")
        _legend(ax, fontsize=7)
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
    _vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    ax.set(xlabel="clone time t", ylabel="φ_C(t)", title="Clones end at the same training point")
    _legend(ax, fontsize=7)
    fig.tight_layout()
    return fig


def run_collapse(m: xr.Dataset):
    """Collapse fraction(t), the distribution of per-trajectory t̂_C, and f^e(t)/α."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(m.time, m.collapse_fraction, "-", color="C3")
    _vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    _vline(ax, float(m.t_C_measured), "mean t̂_C", color="C3", ls="-.")
    ax.set(xscale="log", xlabel="t", ylabel="fraction collapsed", title="Collapse fraction")
    _legend(ax, fontsize=7)
    ax = axes[1]
    sns.histplot(m.t_collapse.values, ax=ax, bins=30, color="C3")
    _vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    ax.set(xlabel="t̂_C", title="Per-trajectory collapse time")
    _legend(ax, fontsize=7)
    ax = axes[2]
    alpha = float(m.alpha)
    f, se = m.f_excess / alpha, m.f_excess_se / alpha
    ax.fill_between(m.time, f - se, f + se, alpha=0.3, color="C0")
    ax.plot(m.time, f, "-", color="C0", label="Monte Carlo f^e")
    ax.plot(m.time, m.f_theory / alpha, "k--", lw=1, label="theory f")
    if "f_spectrum" in m:
        ax.plot(m.time, m.f_spectrum / alpha, ":", color="C2", lw=1, label="training spectrum")
    _vline(ax, float(m.t_C_theory), "t_C theory", color="grey", ls=":")
    ax.set(xscale="log", xlabel="t", ylabel="f(t) / α", title="Excess entropy")
    _legend(ax, fontsize=7)
    fig.tight_layout()
    return fig


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
    _legend(ax, fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


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
    _legend(ax, fontsize=7)
    fig.tight_layout()
    return fig


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
    _vline(axes[1], tau, f"τ_mem {tau:.3g}" if np.isfinite(tau) else "τ_mem", color="k", ls=":")
    if bool(m.get("tau_mem_censored", False)):
        axes[1].set_title(f"f_mem never reached its level: τ_mem > {int(m.step.max())}", fontsize=8)
    axes[1].set(xscale="log", xlabel="step", ylabel="f_mem", title="Memorisation along training")
    _legend(axes[1], fontsize=7)
    fig.tight_layout()
    return fig


# --- grid figures (the curse-of-dimensionality report) -----------------------------------


def gmm_sigmas(summary: xr.Dataset) -> list[float]:
    """σ of the GMM datasets in the summary (the closed forms' parameter)."""
    if "sigma" not in summary.coords:
        return []
    kinds = summary["kind"].values
    return sorted(
        {
            float(s)
            for s, k in zip(summary["sigma"].values, kinds, strict=True)
            if k == "gmm" and np.isfinite(s)
        }
    )


def phase_diagram(summary: xr.Dataset, score: str = "empirical"):
    """The (α, t) plane: regime I above t_S (one line per d), III below t_C(α), II between;
    measured t_S (triangles) and t_C (circles) of every run of `score`."""
    table = run_table(summary)
    table = table[table.score == score]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if table.empty:
        _no_runs(ax)
        return fig
    alphas = np.geomspace(table.alpha.min() / 2, table.alpha.max() * 2, 200)
    ds_d = sorted(table.d.unique())
    palette = sns.color_palette("viridis", n_colors=len(ds_d))
    for colour, d in zip(palette, ds_d, strict=True):
        rows = table[table.d == d]
        ax.axhline(rows.t_S_theory.mean(), color=colour, ls=":", lw=1)
        _points(
            ax,
            rows.alpha,
            rows.t_S_measured,
            rows.t_S_measured_se,
            f"t_S, d={d}",
            "^",
            color=colour,
        )
        _points(
            ax, rows.alpha, rows.t_C_measured, rows.t_C_measured_se, f"t_C, d={d}", color=colour
        )
    for sigma in gmm_sigmas(summary):
        t_c = theory.collapse_time_gmm(np.exp(alphas), 1, sigma)  # depends on α = ln n/d only
        ax.plot(alphas, t_c, "k-", lw=1, label=f"t_C theory (GMM σ={sigma:g}, d→∞)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="α = ln n / d",
        ylabel="t",
        title="Phase diagram: I above t_S (dotted), III below t_C",
    )
    _legend(ax, fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def grid_heatmaps(summary: xr.Dataset):
    """Heatmaps over (dataset · d, n), one column per score: t_C/t_S (how much of the backward
    path is regime II), t_C measured/theory, and f_mem. (The collapsed fraction at t_min is
    1 by the definition of t̂_C, so it is not shown.)"""
    table = run_table(summary)
    table["t_C / t_S"] = table.t_C_measured / table.t_S_theory
    table["t_C measured / theory"] = table.t_C_measured / table.t_C_theory
    table["dataset · d"] = table.dataset + " · " + table.d.astype(str)
    scores = list(dict.fromkeys(table.score))
    quantities = ["t_C / t_S", "t_C measured / theory", "f_mem"]
    fig, axes = plt.subplots(
        len(quantities),
        len(scores),
        figsize=(3.8 * len(scores), 2.9 * len(quantities)),
        squeeze=False,
    )
    for j, score in enumerate(scores):
        sub = table[table.score == score]
        for i, q in enumerate(quantities):
            grid = sub.pivot_table(index="dataset · d", columns="n", values=q, aggfunc="mean")
            sns.heatmap(
                grid,
                annot=True,
                fmt=".2f",
                cmap="magma",
                ax=axes[i][j],
                cbar=False,
                vmin=0 if q == "f_mem" else None,  # t_C/t_S < 0 when Λ < 1 (t_S < 0)
                vmax=1 if q == "f_mem" else None,
                annot_kws={"fontsize": 7},
            )
            axes[i][j].set_title(f"{score}: {q}", fontsize=9)
    fig.tight_layout()
    return fig


def n_needed(summary: xr.Dataset, eps: float, score: str = "empirical"):
    """The training-set size that keeps t_C ≤ ε, against d: theory
    n ≥ [1 + σ²/(e^{2ε} − 1)]^{d/2} (lines) and the grid's measurement (points: log-n
    interpolation where the measured t_C crosses ε; an arrow when even the largest n does not
    reach it, a lower bound)."""
    table = run_table(summary)
    table = table[table.score == score]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if table.empty:
        _no_runs(ax)
        return fig
    ds_d = np.array(sorted(table.d.unique()))
    for sigma in gmm_sigmas(summary):
        dd = np.linspace(ds_d.min(), ds_d.max(), 100)
        ax.plot(
            dd,
            theory.n_for_collapse_below(eps, dd, sigma),
            "k-",
            lw=1,
            label=f"theory (GMM σ={sigma:g})",
        )
    for d in ds_d:
        rows = table[table.d == d].groupby("n").t_C_measured.mean().sort_index()
        ns, tc = rows.index.values.astype(float), rows.values
        below = np.flatnonzero(tc <= eps)
        if below.size == 0:
            ax.annotate(
                "",
                xy=(d, ns[-1] * 3),
                xytext=(d, ns[-1]),
                arrowprops={"arrowstyle": "->", "color": "C3"},
            )
            ax.plot(d, ns[-1], "v", color="C3")
            continue
        i = below[0]
        if i == 0:
            ax.plot(d, ns[0], "o", color="C0", mfc="none")  # already below at the smallest n
            continue
        w = (tc[i - 1] - eps) / (tc[i - 1] - tc[i])
        ax.plot(d, np.exp(np.log(ns[i - 1]) + w * np.log(ns[i] / ns[i - 1])), "o", color="C0")
    ax.plot([], [], "o", color="C0", label="measured (interpolated)")
    ax.plot([], [], "v", color="C3", label="not reached: n > largest n")
    ax.set(
        yscale="log",
        xlabel="d",
        ylabel=f"n needed for t_C ≤ {eps:g}",
        title="Curse of dimensionality: n ~ e^{αd}",
    )
    _legend(ax, fontsize=7)
    fig.tight_layout()
    return fig
