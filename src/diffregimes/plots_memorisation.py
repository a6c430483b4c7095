"""Figures of memorisation along training (Bonnaire, Urfin, Biroli & Mézard 2025) for the grid
report: f_mem(step) per n, its collapse against step/n, τ_mem and τ_gen against n with the
fitted exponents, the width axis (τ_mem·W against n), and the (n, W) phase diagram at the end of
training. Each is a function of the summary store returning a Figure, or None without learned
runs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from .memorisation import INTERVALS, fit_runs, learned_runs
from .plots import finish, legend, log_axes, no_runs, panels_by_d

TIME_SCALES = {
    "tau_mem": "τ_mem (f_mem)",
    "tau_mem_dsm": "τ_mem (DSM gap)",
    "tau_gen": "τ_gen",
}
# in the table too: the end of the quality measure's descent, beside τ_gen (its middle)
TABLE_SCALES = {**TIME_SCALES, "tau_gen_end": "τ_gen, end of the descent"}


def _groups(sub: xr.Dataset, axis: str):
    """Runs grouped for a scaling along `axis` (n: same dataset, d, score; model_width: same
    dataset, d, n), groups with at least two values of the axis."""
    keys = ("dataset", "d", "score") if axis == "n" else ("dataset", "d", "n")
    table = pd.DataFrame({k: sub[k].values for k in keys})
    table["x"] = sub[axis].values
    out = []
    for key, part in table.groupby(list(keys), sort=True):
        if part["x"].nunique() >= 2:
            out.append((dict(zip(keys, key, strict=True)), sub.isel(run=part.index.to_numpy())))
    return out


def scaling_table(summary: xr.Dataset) -> pd.DataFrame:
    """The fitted exponents of τ_mem, τ_mem (DSM gap), τ_gen and the end of the quality
    measure's descent against n (per dataset, d, score) and against the width W (per dataset,
    d, n), with SE, 95 % CI, points and runs used; the follow-up's values: τ_mem ∝ n W⁻¹,
    τ_gen ∝ n⁰ W⁻¹."""
    sub = learned_runs(summary)
    rows = []
    expected = {("n", k): 0 if k.startswith("tau_gen") else 1 for k in TABLE_SCALES}
    expected.update({("model_width", k): -1 for k in TABLE_SCALES})
    for axis in ("n", "model_width"):
        for key, runs in [] if sub is None else _groups(sub, axis):
            for tau in TABLE_SCALES:
                if tau not in runs:  # a summary written before the variable existed
                    continue
                fit = fit_runs(runs, axis, tau)
                rows.append(
                    {
                        "against": "n" if axis == "n" else "W",
                        "time scale": TABLE_SCALES[tau],
                        **{k: str(v) for k, v in key.items()},
                        "exponent": fit["exponent"],
                        "se": fit["se"],
                        "ci_low": fit["ci_low"],
                        "ci_high": fit["ci_high"],
                        "follow-up": expected[(axis, tau)],
                        "deviation_se": (fit["exponent"] - expected[(axis, tau)]) / fit["se"],
                        "points": fit["points"],
                        "runs": runs.sizes["run"],
                    }
                )
    return pd.DataFrame(rows)


def _final(run, name):
    """A by-step variable at the run's last evaluated step."""
    ok = run.f_mem_by_step.notnull().values
    return float(run[name].values[ok][-1])


def _curve(ax, run, x, color, label):
    ok = run.f_mem_by_step.notnull().values
    low, high = run.f_mem_by_step_ci_low.values[ok], run.f_mem_by_step_ci_high.values[ok]
    ax.fill_between(x[ok], low, high, color=color, alpha=0.15, lw=0)
    ax.plot(x[ok], run.f_mem_by_step.values[ok], "o-", color=color, ms=2.5, label=label)


def memorisation_by_step(summary: xr.Dataset):
    """f_mem against training step for every learned run, one panel per d, a line per n;
    the dotted lines mark τ_mem. The follow-up's claim: τ_mem grows ∝ n."""
    sub = learned_runs(summary)
    if sub is None:
        return None
    ns = sorted({int(v) for v in sub.n.values})
    palette = sns.color_palette("viridis", n_colors=len(ns))
    fig, axes, panels = panels_by_d(sub)
    for ax, d, runs in panels:
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            color = palette[ns.index(int(run.n))]
            _curve(ax, run, run.step.values, color, f"{run.score.item()} n={int(run.n)}")
            if np.isfinite(run.tau_mem):
                ax.axvline(float(run.tau_mem), color=color, ls=":", lw=1)
        ax.set(xscale="log", title=f"d = {d}", xlabel="training step", ylabel="f_mem")
    title = "Memorisation along training (Wilson 95 % bands); dotted: τ_mem"
    return finish(fig, axes[0][0], title, fontsize=7)


def memorisation_collapse(summary: xr.Dataset):
    """f_mem against step (left) and against step/n (right) for every n of each (dataset, d,
    score): if τ_mem ∝ n the curves on the right fall on one another."""
    sub = learned_runs(summary)
    groups = [] if sub is None else _groups(sub, "n")
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(9, 3.2 * len(groups)), squeeze=False)
    for (key, runs), row in zip(groups, axes, strict=True):
        ns = sorted({int(v) for v in runs.n.values})
        palette = sns.color_palette("viridis", n_colors=len(ns))
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            n = int(run.n)
            color = palette[ns.index(n)]
            _curve(row[0], run, run.step.values.astype(float), color, f"n = {n}")
            _curve(row[1], run, run.step.values / n, color, f"n = {n}")
        where = f"{key['dataset']} d={key['d']} {key['score']}"
        row[0].set(xscale="log", xlabel="training step", ylabel="f_mem", title=where)
        row[1].set(xscale="log", xlabel="training step / n", title=f"{where}: against step/n")
        legend(row[0], fontsize=7)
    return finish(fig)


def time_scales_vs_n(summary: xr.Dataset):
    """τ_mem (from f_mem and from the DSM gap) and τ_gen against n on log–log axes, with their
    intervals and the weighted fits τ ∝ n^b (b and its 95 % CI in the legend); the follow-up:
    b = 1 for τ_mem, 0 for τ_gen."""
    sub = learned_runs(summary)
    groups = [] if sub is None else _groups(sub, "n")
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.6 * max(1, len(groups)), 3.6))
    axes = np.atleast_1d(axes)
    if not groups:
        no_runs(axes[0])
        return fig
    for ax, (key, runs) in zip(axes, groups, strict=True):
        n = runs.n.values.astype(float)
        order = np.argsort(n)
        plotted = False
        for (tau, label), color in zip(TIME_SCALES.items(), ("C3", "C1", "C0"), strict=True):
            low, high, _ = INTERVALS[tau]
            y, lo, hi = (runs[v].values.astype(float) for v in (tau, low, high))
            ok = np.isfinite(y) & np.isfinite(hi)
            cens = ~np.isfinite(y) & np.isfinite(lo) & (lo > 0)
            plotted |= bool(ok.any() or cens.any())
            err = np.vstack([y - lo, hi - y])[:, ok]
            fit = fit_runs(runs, "n", tau)
            text = label  # with its fit where one exists (at least 3 finite points)
            if np.isfinite(fit["exponent"]):
                text += f": b = {fit['exponent']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"
            ax.errorbar(n[ok], y[ok], yerr=err, fmt="o", ms=4, capsize=2, color=color, label=text)
            if np.isfinite(fit["exponent"]):
                xs = n[order]
                ax.plot(xs, fit["prefactor"] * xs ** fit["exponent"], "-", color=color, lw=1)
            ax.plot(n[cens], lo[cens], "^", color=color, ms=6, mfc="none")  # > last step
        title = f"{key['dataset']} d={key['d']} {key['score']}"
        log_axes(ax, plotted, xlabel="n", ylabel="training step", title=title)
        legend(ax, fontsize=6)
    return finish(fig, title="Time scales against n (open triangles: never reached, > last step)")


def width_axis(summary: xr.Dataset):
    """τ_mem·W (left) and τ_gen·W (right) against n for the runs of every model width: if
    τ_mem ∝ n/W and τ_gen ∝ 1/W, the widths fall on one line each."""
    sub = learned_runs(summary)
    if sub is None or "model_width" not in sub or np.unique(sub.model_width).size < 2:
        return None
    widths = sorted({float(w) for w in sub.model_width.values if np.isfinite(w)})
    palette = sns.color_palette("crest", n_colors=len(widths))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, tau in zip(axes, ("tau_mem", "tau_gen"), strict=True):
        low, high, _ = INTERVALS[tau]
        plotted = False
        for w, color in zip(widths, palette, strict=True):
            runs = sub.where(sub.model_width == w, drop=True)
            y, lo, hi = (runs[v].values.astype(float) * w for v in (tau, low, high))
            ok = np.isfinite(y) & np.isfinite(hi)
            plotted |= bool(ok.any())
            n = runs.n.values.astype(float)
            err = np.vstack([y - lo, hi - y])[:, ok]
            label = f"W = {w:g}"
            ax.errorbar(n[ok], y[ok], yerr=err, fmt="o", ms=4, capsize=2, color=color, label=label)
        log_axes(ax, plotted, xlabel="n", ylabel=f"{TIME_SCALES[tau]} · W")
        legend(ax, fontsize=7)
    return finish(fig, title="The width axis: τ_mem ∝ n/W, τ_gen ∝ 1/W")


def phase_diagram_nw(summary: xr.Dataset, level: float = 0.1):
    """The (n, W) plane at the end of training: f_mem of the last checkpoint (colour), a cross
    where its Wilson interval lies above `level` (memorising), a circle where below
    (generalising), a square where the interval straddles it."""
    sub = learned_runs(summary)
    if sub is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.8))
    n, w = sub.n.values.astype(float), sub.model_width.values.astype(float)
    f = np.array([_final(sub.isel(run=r), "f_mem_by_step") for r in range(sub.sizes["run"])])
    lo = np.array([_final(sub.isel(run=r), "f_mem_by_step_ci_low") for r in range(len(f))])
    hi = np.array([_final(sub.isel(run=r), "f_mem_by_step_ci_high") for r in range(len(f))])
    art = None
    known = np.isfinite(w) & (w > 0)  # a U-Net's first width; NaN where none is recorded
    for mask, marker, label in (
        (lo > level, "X", "memorising"),
        (hi < level, "o", "generalising"),
        ((lo <= level) & (hi >= level), "s", "undecided"),
    ):
        mask = mask & known
        if mask.any():
            art = ax.scatter(
                n[mask],
                w[mask],
                c=f[mask],
                vmin=0,
                vmax=1,
                cmap="magma_r",
                marker=marker,
                s=70,
                edgecolor="k",
                label=label,
            )
    if art is not None:
        fig.colorbar(art, ax=ax, label="f_mem at the last step")
    title = f"End of training: f_mem against {level:g}"
    log_axes(ax, art is not None, xlabel="n", ylabel="width W", title=title)
    return finish(fig, ax, fontsize=7)


def score_errors_by_step(summary: xr.Dataset):
    """Learned score's distance to the empirical (memorising) and population (generalising)
    scores against training step, one panel per learned run, at the middle of the run's own
    saved times (the summary's time axis is the union of every dataset's grid)."""
    sub = learned_runs(summary)
    if sub is None:
        return None
    runs = sub.sizes["run"]
    cols = min(runs, 3)
    rows = int(np.ceil(runs / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, r in zip(axes.flat, range(runs), strict=False):
        run = sub.isel(run=r)
        ok = run.f_mem_by_step.notnull()
        own = np.flatnonzero(run.score_error_empirical.notnull().any("step").values)
        k = int(own[own.size // 2])
        plotted = False
        for name, style in (("score_error_empirical", "o-"), ("score_error_population", "s--")):
            y = run[name].isel(time=k)[ok]
            plotted |= bool((y > 0).any())
            ax.plot(run.step[ok], y, style, ms=3, label=name.removeprefix("score_error_"))
        title = f"{run.dataset.item()} d={int(run.d)} n={int(run.n)} s={int(run.seed)}"
        title += f", t = {float(run.time[k]):.3g}"
        log_axes(ax, plotted, xlabel="training step", title=title)
    for ax in axes.flat[runs:]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("Δ_t ‖s_θ − s‖²/d")
    return finish(fig, axes[0][0], "Which score the network learns", fontsize=7)


# --- per-run figures (the run report) -----------------------------------------------------


# --- which score a network learns (SCIENCE.md §7) -------------------------------------------

R2_TIME = 0.1  # the scores differ here: at t ≳ 1 every score is ≈ −x (r² ≈ 1 against all)


def _final_r2(run: xr.Dataset, t: float):
    """(references, r², SE) of a run's last evaluated checkpoint at its saved time nearest t."""
    r2 = run.score_r2.dropna("step", how="all")
    if not r2.sizes.get("step"):
        return [], np.array([]), np.array([])
    step = r2.step.values[-1]
    times = r2.time.values[np.isfinite(r2.sel(step=step).values).any(0)]
    near = times[np.argmin(np.abs(np.log(times / t)))]
    value = run.score_r2.sel(step=step, time=near).values
    se = run.score_r2_se.sel(step=step, time=near).values
    ok = np.isfinite(value)  # a reference this run has not (another dataset's baseline)
    return [str(v) for v in run.reference.values[ok]], value[ok], se[ok]


def r2_table(summary: xr.Dataset, t: float = R2_TIME) -> pd.DataFrame | None:
    """Per learned run: r² ± SE of its final score against each reference at the saved time
    nearest t, and the closest reference (largest r²; 'tie' when the runner-up is within
    2 combined SE)."""
    sub = learned_runs(summary)
    if sub is None or "score_r2" not in sub:
        return None
    rows = []
    for r in range(sub.sizes["run"]):
        run = sub.isel(run=r)
        refs, values, ses = _final_r2(run, t)
        if not refs:
            continue
        row = {k: run[k].item() for k in ("dataset", "d", "n", "score")}
        for ref, v, e in zip(refs, values, ses, strict=True):
            row[f"r² {ref}"] = f"{v:.3f} ± {e:.3f}"
        order = np.argsort(values)[::-1]
        best = refs[order[0]]
        if len(order) > 1:
            gap = values[order[0]] - values[order[1]]
            best = best if gap > 2 * np.hypot(ses[order[0]], ses[order[1]]) else "tie"
        row["closest"] = best
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def r2_vs_n(summary: xr.Dataset, t: float = R2_TIME):
    """r² of the final learned score against each reference (at the saved t nearest `t`)
    against n, one panel per d, ±1 SE: which score networks learn as n grows."""
    sub = learned_runs(summary)
    if sub is None or "score_r2" not in sub:
        return None
    fig, axes, panels = panels_by_d(sub)
    for ax, d, runs in panels:
        curves: dict[str, list] = {}
        for r in range(runs.sizes["run"]):
            run = runs.isel(run=r)
            for ref, v, e in zip(*_final_r2(run, t), strict=True):
                curves.setdefault(ref, []).append((int(run.n), v, e))
        for i, (ref, pts) in enumerate(curves.items()):
            n, v, e = np.array(sorted(pts)).T
            ax.errorbar(n, v, e, fmt="o-", ms=3, capsize=2, color=f"C{i}", label=ref)
        if curves:
            ax.set_xscale("log")
        else:
            no_runs(ax)
        ax.set(title=f"d = {d}", xlabel="n", ylabel=f"r² at t ≈ {t:g}")
    return finish(fig, axes[0][0], "Which score the final network is closest to", fontsize=7)
