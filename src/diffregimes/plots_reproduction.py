"""Figures and tables of the reproduction report: the comparison table (green where a number
agrees, red where not, with one sentence per red) and the paper's figures redrawn with its
points over ours (Fig. 2: φ against t/t_S for every d; Fig. 3: f^e/α against t with the theory
lines)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from .plots import legend, no_runs, points, vline

GREEN, RED, GREY = "#d8f0d8", "#f6d3d3", "#eeeeee"


def styled_comparison(table: pd.DataFrame):
    """The comparison as a Styler: green rows agree, red ones do not, grey ones are absent or
    extensions."""
    shown = table[
        ["figure", "quantity", "setting", "paper", "measured", "se", "deviation_se", "agrees"]
    ]

    def colour(row):
        c = {"yes": GREEN, "no": RED}.get(row["agrees"], GREY)
        return [f"background-color: {c}"] * len(row)

    return (
        shown.style.apply(colour, axis=1)
        .format(precision=4, na_rep="–")
        .format({"deviation_se": "{:+.2f}"}, na_rep="–")
        .hide(axis="index")
    )


def counts(table: pd.DataFrame) -> str:
    c = table["agrees"].value_counts()
    return (
        f"{c.get('yes', 0)} agree, {c.get('no', 0)} disagree, "
        f"{c.get('absent', 0)} absent from this grid, {c.get('extension', 0)} extensions "
        "(no paper number)"
    )


def red_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per row that does not agree: the numbers, the criterion, and the note."""
    out = []
    for _, r in table[table["agrees"] == "no"].iterrows():
        dev = f"{r['deviation_se']:+.1f} SE" if np.isfinite(r["deviation_se"]) else "no SE"
        out.append(
            f"{r['figure']}, {r['quantity']} ({r['setting']}): measured {r['measured']:.4g} ± "
            f"{r['se']:.2g} against the paper's {r['paper']:.4g} ({dev}; {r['criterion']})"
            + (f"; {r['note']}" if isinstance(r["note"], str) and r["note"] else "")
            + "."
        )
    return out


def _runs(summary: xr.Dataset, **keys) -> xr.Dataset:
    keep = np.ones(summary.sizes["run"], bool)
    for k, v in keys.items():
        vals = summary[k].values
        keep &= np.isclose(vals.astype(float), v) if isinstance(v, float) else vals == v
    return summary.isel(run=np.flatnonzero(keep))


def _axis_and_runs(summary: xr.Dataset, **keys):
    """One axis and the runs matching `keys` (none: the axis says so)."""
    sub = _runs(summary, **keys)
    fig, ax = plt.subplots(figsize=(6, 4))
    if sub.sizes["run"] == 0:
        no_runs(ax)
    return fig, ax, [sub.isel(run=i) for i in range(sub.sizes["run"])]


def speciation_vs_t_over_t_S(summary: xr.Dataset, entries: list[dict]):
    """Fig. 2: φ(t) of the GMM's population score against t/t_S (t_S = ½ log Λ of the law),
    every d on one axis, with the closed form and the paper's points."""
    fig, ax, runs = _axis_and_runs(summary, kind="gmm", score="population", sigma=1.0)
    for run in runs:
        t_s = 0.5 * math.log(float(run["Lambda_population"]))
        x = run["clone_time"].values / t_s
        ok = np.isfinite(run["phi_class"].values)
        points(
            ax,
            x[ok],
            run["phi_class"].values[ok],
            run["phi_class_se"].values[ok],
            f"d = {int(run['d'])} (t_S = {t_s:.3f})",
        )
        ax.plot(x[ok], run["phi_theory"].values[ok], "-", lw=0.8, color="grey")
    for e in entries:
        if e["measure"] == "phi_at" and e["paper"] is not None:
            d = e["select"]["d"]
            t_s = 0.5 * math.log(1 + d)  # m = ones(d), σ = 1: Λ = 1 + d
            ax.plot(float(e["at"]) / t_s, e["paper"], "k*", ms=9)
    ax.plot([], [], "k*", label="the paper (d = 1024)")
    ax.plot([], [], "-", color="grey", label="closed form")
    ax.axhline(0.7752, color="red", lw=0.8, ls=":")
    vline(ax, 1.0, None, color="red", lw=0.8, ls=":")
    ax.set(xlabel="t / t_S", ylabel="φ(t)", title="Fig. 2: speciation of the GMM")
    legend(ax, fontsize=7)
    return fig


def excess_entropy_vs_t(summary: xr.Dataset, entries: list[dict], n: int = 20000):
    """Fig. 3: f^e(t)/α of the GMM's training sets of n points (Monte Carlo, ±1 SE) against t,
    the theory f(t)/α, t_C (dotted) and the paper's points."""
    fig, ax, runs = _axis_and_runs(summary, kind="gmm", score="empirical", sigma=1.0, n=n)
    colours = {}
    for run in runs:
        a = float(run["alpha"])
        t = run["time"].values
        ok = np.isfinite(run["f_excess"].values)
        line = ax.errorbar(
            t[ok],
            run["f_excess"].values[ok] / a,
            yerr=run["f_excess_se"].values[ok] / a,
            fmt="o",
            ms=3,
            capsize=2,
            label=f"d = {int(run['d'])}, α = {a:.4f}",
        )
        colour = colours[int(run["d"])] = line[0].get_color()
        ax.plot(t[ok], run["f_theory"].values[ok] / a, "-", lw=0.8, color=colour)
        vline(ax, float(run["t_C_theory"]), None, color=colour, lw=0.8, ls=":")
    for e in entries:  # the paper's points in the colour of their d (black: d not in this grid)
        if e["measure"] == "f_over_alpha" and e["paper"] is not None:
            c = colours.get(e["select"]["d"], "k")
            ax.plot(float(e["at"]), e["paper"], "*", ms=10, mfc=c, mec="k", mew=0.6)
    ax.plot([], [], "*", mfc="w", mec="k", ms=10, label="the paper's numerics (colour: d)")
    ax.set(xlabel="t", ylabel="f^e(t) / α", title=f"Fig. 3: collapse of the GMM, n = {n}")
    legend(ax, fontsize=7)
    return fig
