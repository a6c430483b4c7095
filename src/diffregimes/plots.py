"""What the run report and the grid report share: the table of runs and the plotting helpers.

Figures live in `plots_run` (one run's report) and `plots_grid` (the grid report); every figure
puts the measurement, with its SE, beside its theory so that agreement (or the lack of it) is
seen at a glance, and the reports' captions say what to look for.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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
    "t_S_probe",
    "t_S_probe_se",
    "t_S_probe_train",
    "t_S_probe_train_se",
    "t_C_theory",
    "t_C_measured",
    "t_C_measured_se",
    "t_C_entropy",
    "t_C_entropy_se",
    "t_C_probe",
    "t_C_probe_se",
    "f_mem",
    "f_mem_ci_low",
    "f_mem_ci_high",
    "judge_accuracy",
    "tau_mem",
    "tau_mem_ci_low",
    "tau_mem_ci_high",
    "tau_mem_dsm",
    "tau_mem_dsm_ci_low",
    "tau_mem_dsm_ci_high",
    "tau_gen",
    "tau_gen_bracket_low",
    "tau_gen_bracket_high",
    "tau_gen_end",
    "tau_gen_end_bracket_low",
    "tau_gen_end_bracket_high",
    "model_width",
]


def run_table(summary: xr.Dataset) -> pd.DataFrame:
    """One row per run: its keys and the 0-d metrics."""
    keys = ["dataset", "d", "n", "seed", "score"]
    cols = {k: summary[k].values for k in keys}
    cols.update({k: summary[k].values for k in ("kind", "sigma") if k in summary.coords})
    cols.update({v: summary[v].values for v in SCALARS if v in summary})
    return pd.DataFrame(cols).sort_values(keys).reset_index(drop=True)


def points(ax, x, y, se, label, fmt="o", **kw):
    """Measured points with ±1 SE bars."""
    ax.errorbar(x, y, yerr=se, fmt=fmt, ms=3, capsize=2, label=label, **kw)


def no_runs(ax) -> None:
    """Mark an empty figure (e.g. a grid without that score) instead of failing the report."""
    ax.text(0.5, 0.5, "no runs for this figure", ha="center", va="center")


def panels_by_d(sub: xr.Dataset):
    """A row of panels, one per d (shared y axis): (fig, axes, [(ax, d, runs of that d)])."""
    ds_d = sorted({int(v) for v in sub.d.values})
    k = max(1, len(ds_d))
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), squeeze=False, sharey=True)
    if not ds_d:
        no_runs(axes[0][0])
    panels = [
        (ax, d, sub.where(sub.d == d, drop=True))
        for ax, d in zip(axes[0][: len(ds_d)], ds_d, strict=True)
    ]
    return fig, axes, panels


def legend(ax, **kw):
    """A legend when the axes have labelled artists (a NaN time draws no line, and matplotlib
    warns on an empty legend), each label once (the runs of several seeds share theirs)."""
    first = {}
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
        first.setdefault(label, handle)
    if first:
        ax.legend(list(first.values()), list(first), **kw)


def finish(fig, legend_ax=None, title: str | None = None, **legend_kw):
    """End a figure: the legend on `legend_ax` (`legend`; None where each panel drew its own),
    `title` over all panels if given, a tight layout; returns the figure."""
    if legend_ax is not None:
        legend(legend_ax, **legend_kw)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def log_axes(ax, plotted: bool = True, **labels) -> None:
    """Log–log axes where points were drawn; a "no runs" note where none were (matplotlib cannot
    log-scale an axis without positive data: every τ censored, or no width)."""
    if plotted:
        ax.set(xscale="log", yscale="log", **labels)
        for axis in (ax.xaxis, ax.yaxis):  # 1, 2, 5 per decade as plain numbers: grids of n
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # span one or two decades
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    else:
        no_runs(ax)
        ax.set(**labels)


def vline(ax, x, label, **kw):
    if np.isfinite(x):
        ax.axvline(x, label=label, **kw)


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
