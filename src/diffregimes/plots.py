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

SCALARS = [
    "Lambda",
    "alpha",
    "t_S_theory",
    "t_S_measured",
    "t_S_measured_se",
    "t_C_theory",
    "t_C_measured",
    "t_C_measured_se",
    "t_C_entropy",
    "f_mem",
]


def run_table(summary: xr.Dataset) -> pd.DataFrame:
    """One row per run: its keys and the 0-d metrics."""
    keys = ["dataset", "d", "n", "seed", "score"]
    cols = {k: summary[k].values for k in keys}
    cols.update({v: summary[v].values for v in SCALARS if v in summary})
    return pd.DataFrame(cols).sort_values(keys).reset_index(drop=True)


def speciation_curves(summary: xr.Dataset, score: str = "population"):
    """φ(t) measured (points, ±1 SE) and the GMM closed form (line), one panel per d."""
    sub = summary.where(summary.score == score, drop=True)
    sub = sub.where(
        np.isfinite(sub.t_S_theory) & (sub.phi_class.count("clone_time") > 0), drop=True
    )
    ds_d = sorted(set(int(v) for v in sub.d.values))
    fig, axes = plt.subplots(
        1, max(1, len(ds_d)), figsize=(4.2 * max(1, len(ds_d)), 3.4), squeeze=False, sharey=True
    )
    for ax, d in zip(axes[0], ds_d, strict=False):
        runs = sub.where(sub.d == d, drop=True)
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            label = f"{run.dataset.item()} n={int(run.n)}"
            ax.errorbar(
                run.clone_time,
                run.phi_class,
                yerr=run.phi_class_se,
                fmt="o",
                ms=3,
                capsize=2,
                label=label,
            )
            ax.axvline(float(run.t_S_theory), color="grey", ls=":", lw=1)
        if np.isfinite(runs.phi_theory).any():
            best = runs.isel(run=0)
            ax.plot(best.clone_time, best.phi_theory, "k-", lw=1, label="theory (GMM)")
        ax.axhline(0.7752, color="red", lw=0.8, ls="--")
        ax.set(title=f"d = {d}", xlabel="clone time t", ylabel="φ(t)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Speciation by cloning ({score} score); dotted: t_S = ½ log Λ")
    fig.tight_layout()
    return fig


def measured_vs_theory(summary: xr.Dataset):
    """t_S and t_C measured against theory, one point per run, with the identity line."""
    table = run_table(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (name, theory, measured, se) in zip(
        axes,
        [
            ("speciation time t_S", "t_S_theory", "t_S_measured", "t_S_measured_se"),
            ("collapse time t_C", "t_C_theory", "t_C_measured", "t_C_measured_se"),
        ],
        strict=True,
    ):
        ok = table[np.isfinite(table[measured])]
        for score, group in ok.groupby("score"):
            ax.errorbar(
                group[theory], group[measured], yerr=group[se], fmt="o", capsize=2, label=score
            )
        lim = [0, float(np.nanmax(ok[[theory, measured]].to_numpy(), initial=1.0)) * 1.1]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(xlabel=f"{name}, theory", ylabel=f"{name}, measured", title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def excess_entropy(summary: xr.Dataset):
    """f^e(t)/α (Monte Carlo, points) and f(t)/α (theory, lines), one panel per d."""
    sub = summary.where(summary.score == summary.score[0], drop=True)  # f^e is score-free
    ds_d = sorted(set(int(v) for v in sub.d.values))
    fig, axes = plt.subplots(
        1, len(ds_d), figsize=(4.2 * len(ds_d), 3.4), squeeze=False, sharey=True
    )
    palette = sns.color_palette("viridis", n_colors=len(set(sub.n.values.tolist())))
    ns = sorted(set(int(v) for v in sub.n.values))
    for ax, d in zip(axes[0], ds_d, strict=False):
        runs = sub.where(sub.d == d, drop=True)
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
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Excess entropy: Monte Carlo f^e (points) and theory (lines); dotted: t_C")
    fig.tight_layout()
    return fig


def collapse_fractions(summary: xr.Dataset, score: str = "empirical"):
    """Fraction of trajectories collapsed onto their final training point, against t."""
    sub = summary.where(summary.score == score, drop=True)
    ds_d = sorted(set(int(v) for v in sub.d.values))
    fig, axes = plt.subplots(
        1, max(1, len(ds_d)), figsize=(4.2 * max(1, len(ds_d)), 3.4), squeeze=False, sharey=True
    )
    for ax, d in zip(axes[0], ds_d, strict=False):
        runs = sub.where(sub.d == d, drop=True)
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            (line,) = ax.plot(
                run.time, run.collapse_fraction, label=f"{run.dataset.item()} n={int(run.n)}"
            )
            ax.axvline(float(run.t_C_theory), color=line.get_color(), ls=":", lw=1)
        ax.set(xscale="log", title=f"d = {d}", xlabel="t", ylabel="collapsed fraction")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Collapse ({score} score); dotted: t_C theory")
    fig.tight_layout()
    return fig


def collapse_vs_alpha(summary: xr.Dataset):
    """Measured t_C against α = ln n / d, with the GMM curve ½ log(1 + σ²/(e^{2α} − 1))."""
    table = run_table(summary)
    table = table[table.score == "empirical"]
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.scatterplot(
        table, x="alpha", y="t_C_measured", hue="d", style="dataset", ax=ax, palette="viridis"
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
