"""Figures of the grid report (workflow/notebooks/summary.ipynb): each a function of the
summary store returning a Figure (or a table), the measurement beside its theory."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from . import theory
from .plots import finish, gmm_sigmas, legend, log_axes, no_runs, panels_by_d, points, run_table


def speciation_curves(summary: xr.Dataset, score: str = "population"):
    """φ(t) measured (points, ±1 SE) and the GMM closed form (line), one panel per d."""
    sub = summary.where(summary.score == score, drop=True)
    sub = sub.where(
        np.isfinite(sub.t_S_theory) & (sub.phi_class.count("clone_time") > 0), drop=True
    )
    fig, axes, panels = panels_by_d(sub)
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            label = f"{run.dataset.item()} n={int(run.n)}"
            points(ax, run.clone_time, run.phi_class, run.phi_class_se, label)
            ax.axvline(float(run.t_S_theory), color="grey", ls=":", lw=1)
        if np.isfinite(runs.phi_theory).any():
            best = runs.isel(run=0)
            ax.plot(best.clone_time, best.phi_theory, "k-", lw=1, label="theory (GMM)")
        ax.axhline(0.7752, color="red", lw=0.8, ls="--")
        ax.set(title=f"d = {d}", xlabel="clone time t", ylabel="φ(t)")
    return finish(
        fig, axes[0][0], f"Speciation by cloning ({score} score); dotted: t_S = ½ log Λ", fontsize=7
    )


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
        legend(ax, fontsize=8)
    return finish(fig)


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
    # f^e is the training set's for every score but a smoothed baseline (its blurred set's)
    plain = summary.where(summary.blur == 0, drop=True) if "blur" in summary else summary
    sub = plain.where(plain.score == plain.score[0], drop=True)
    fig, axes, panels = panels_by_d(sub)
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
    title = "Excess entropy: Monte Carlo f^e (points) and theory (lines); dotted: t_C"
    return finish(fig, axes[0][0], title, fontsize=7)


def collapse_fractions(summary: xr.Dataset, score: str = "empirical"):
    """Fraction of trajectories collapsed onto their final training point, against t."""
    sub = summary.where(summary.score == score, drop=True)
    fig, axes, panels = panels_by_d(sub)
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            (line,) = ax.plot(
                run.time, run.collapse_fraction, label=f"{run.dataset.item()} n={int(run.n)}"
            )
            ax.axvline(float(run.t_C_theory), color=line.get_color(), ls=":", lw=1)
        ax.set(xscale="log", title=f"d = {d}", xlabel="t", ylabel="collapsed fraction")
    return finish(fig, axes[0][0], f"Collapse ({score} score); dotted: t_C theory", fontsize=7)


def collapse_vs_alpha(summary: xr.Dataset):
    """Measured t_C (mean t̂_C ± SE) against α = ln n / d, one colour per (dataset, d), with
    the finite-d closed form of each run (x) and the d → ∞ GMM curve ½ log(1 + σ²/(e^{2α} − 1))
    that every d should approach."""
    table = run_table(summary)
    table = table[table.score == "empirical"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if table.empty:
        no_runs(ax)
        return fig
    for (name, d), rows in table.groupby(["dataset", "d"]):
        rows = rows.sort_values("alpha")
        line = ax.errorbar(
            rows.alpha,
            rows.t_C_measured,
            yerr=rows.t_C_measured_se,
            fmt="o-",
            ms=3,
            lw=0.6,
            capsize=2,
            label=f"{name}, d = {d}",
        )
        ax.plot(rows.alpha, rows.t_C_theory, "x", color=line[0].get_color(), ms=5)
    alpha = np.geomspace(table.alpha.min(), table.alpha.max(), 200)
    for sigma in gmm_sigmas(summary):
        ax.plot(
            alpha,
            0.5 * np.log1p(sigma**2 / np.expm1(2 * alpha)),
            "k-",
            lw=1,
            label=f"d → ∞ (GMM σ={sigma:g})",
        )
    title = "Collapse time against α (o measured, x closed form at d)"
    log_axes(ax, xlabel="α = ln n / d", ylabel="t_C", title=title)
    return finish(fig, ax, fontsize=6, ncol=2)


def phase_diagram(summary: xr.Dataset, score: str = "empirical"):
    """The (α, t) plane: regime I above t_S (one line per d), III below t_C(α), II between;
    measured t_S (triangles) and t_C (circles) of every run of `score`."""
    table = run_table(summary)
    table = table[table.score == score]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if table.empty:
        no_runs(ax)
        return fig
    alphas = np.geomspace(table.alpha.min() / 2, table.alpha.max() * 2, 200)
    ds_d = sorted(table.d.unique())
    palette = sns.color_palette("viridis", n_colors=len(ds_d))
    for colour, d in zip(palette, ds_d, strict=True):
        rows = table[table.d == d]
        ax.axhline(rows.t_S_theory.mean(), color=colour, ls=":", lw=1)
        points(
            ax,
            rows.alpha,
            rows.t_S_measured,
            rows.t_S_measured_se,
            f"t_S, d={d}",
            "^",
            color=colour,
        )
        points(ax, rows.alpha, rows.t_C_measured, rows.t_C_measured_se, f"t_C, d={d}", color=colour)
    for sigma in gmm_sigmas(summary):
        t_c = theory.collapse_time_gmm(np.exp(alphas), 1, sigma)  # depends on α = ln n/d only
        ax.plot(alphas, t_c, "k-", lw=1, label=f"t_C theory (GMM σ={sigma:g}, d→∞)")
    title = "Phase diagram: I above t_S (dotted), III below t_C"
    log_axes(ax, xlabel="α = ln n / d", ylabel="t", title=title)
    return finish(fig, ax, fontsize=6, ncol=2)


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
    if "kind" in table:  # the closed form is the GMM's: its grids of n at each d
        table = table[table.kind == "gmm"]
    n_per_d = table.groupby("d").n.nunique()
    table = table[table.d.isin(n_per_d[n_per_d >= 2].index)]  # a d needs an n grid
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if table.empty:
        no_runs(ax)
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
    return finish(fig, ax, fontsize=7)
