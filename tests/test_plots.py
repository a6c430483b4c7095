"""Every grid figure draws on any cut of a grid: one score only, one d only, one cell.

A grid without a population score (or without a learned one) must still get its summary
report: the figure says it has no runs instead of raising. CI once failed on exactly this.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

from diffregimes import plots, plots_grid, plots_memorisation  # noqa: E402

GRID_FIGURES = [
    lambda s: plots_grid.phase_diagram(s, "empirical"),
    plots_grid.grid_heatmaps,
    lambda s: plots_grid.speciation_curves(s, "population"),
    lambda s: plots_grid.speciation_curves(s, "empirical"),
    plots_grid.measured_vs_theory,
    plots_grid.excess_entropy,
    lambda s: plots_grid.collapse_fractions(s, "empirical"),
    plots_grid.collapse_vs_alpha,
    lambda s: plots_grid.n_needed(s, 0.25, "empirical"),
    plots_memorisation.memorisation_by_step,
    plots_memorisation.memorisation_collapse,
    plots_memorisation.time_scales_vs_n,
    plots_memorisation.width_axis,
    plots_memorisation.phase_diagram_nw,
    plots_memorisation.score_errors_by_step,
    plots_memorisation.r2_vs_n,
]


@pytest.fixture(scope="module")
def summary(tiny_run):
    return xr.open_zarr(tiny_run / "results" / "summary.zarr").load()


CUTS = {
    "whole grid": lambda s: np.ones(s.sizes["run"], bool),
    "no population score": lambda s: s.score.values != "population",
    "empirical only": lambda s: s.score.values == "empirical",
    "learned only": lambda s: s.score.values == "mlp",
    "one d": lambda s: s.d.values == s.d.values.min(),
    "one cell, empirical and mlp": lambda s: (
        (s.d.values == 4) & (s.n.values == 16) & np.isin(s.score.values, ["empirical", "mlp"])
    ),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_every_grid_figure_draws_on_a_cut_of_the_grid(summary, cut):
    keep = CUTS[cut](summary)
    assert keep.any(), f"the tiny grid has no runs for the cut {cut!r}"
    sub = summary.isel(run=np.flatnonzero(keep))
    for draw in GRID_FIGURES:
        fig = draw(sub)
        if fig is None:  # a figure with nothing to show (no learned score) returns None
            continue
        assert fig.axes, f"{draw} drew no axes for the cut {cut!r}"
        blank = [i for i, ax in enumerate(fig.axes) if not _drawn(ax)]
        assert not blank, f"{draw}: panels {blank} of {len(fig.axes)} left blank ({cut!r})"
        plt.close(fig)


def _drawn(ax) -> bool:
    """A panel shows something: data, a "no runs" note, or it was switched off on purpose (a
    figure that returned before its last panel leaves the rest blank, with visible axes)."""
    return ax.has_data() or bool(ax.texts) or not ax.axison or not ax.get_visible()


def test_rendered_notebook_is_quiet_on_the_console(tmp_path):
    """A report's kernel prints nothing to the console of `snakemake` (ipykernel warned about
    unencrypted TCP on localhost for every report) and the parameters reach the notebook."""
    import subprocess
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[
            new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
            new_code_cell("print(f'answer {x + 1}')"),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, tmp_path / "t.ipynb")
    code = (
        "from diffregimes.reports import render_notebook; "
        "render_notebook('t.ipynb', 'out/t.ipynb', 'out/t.html', {'x': 41})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "answer 42" in (tmp_path / "out" / "t.html").read_text()
    assert "IPKernelApp" not in proc.stderr + proc.stdout, proc.stderr


def test_legend_only_when_something_is_labelled():
    """A NaN time draws no marker line, so a panel may have nothing to put in its legend."""
    fig, ax = plt.subplots()
    plots.vline(ax, float("nan"), "τ_mem")
    plots.legend(ax, fontsize=7)
    assert ax.get_legend() is None
    plots.vline(ax, 0.5, "τ_mem")
    plots.legend(ax, fontsize=7)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["τ_mem"]
    plt.close(fig)


def test_legend_names_each_label_once():
    """The runs of several seeds of a cell draw one line each under the same label."""
    fig, ax = plt.subplots()
    for seed in range(3):
        ax.plot([1, 2], [seed, seed + 1], color="C0", label="n = 64")
    ax.plot([1, 2], [0, 2], color="C1", label="n = 128")
    plots.legend(ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["n = 64", "n = 128"]
    plt.close(fig)


def test_score_errors_by_step_reads_each_run_on_its_own_time_grid():
    """Two learned runs of datasets with different time grids: the summary's time axis is the
    union, NaN where a run has no saved time; each panel reads its run's own mid-grid time
    (the reproduction grid's summary report once failed here, a panel with no data on log
    axes)."""
    nan, steps, times = np.nan, [10, 100, 1000], [0.01, 0.1, 0.5, 1.0, 2.0, 4.0]
    err = np.full((2, 3, 6), nan)
    err[0][:, :3] = [[0.3, 0.1, 0.05]] * 3  # run 0 saved t ≤ 0.5, run 1 t ≥ 1
    err[1][:, 3:] = [[0.2, 0.1, 0.02]] * 3
    summary = xr.Dataset(
        {
            "f_mem_by_step": (("run", "step"), np.zeros((2, 3))),
            "score_error_empirical": (("run", "step", "time"), err),
            "score_error_population": (("run", "step", "time"), 0.5 * err),
        },
        coords={
            "dataset": ("run", ["a", "b"]),
            "d": ("run", [16, 16]),
            "n": ("run", [32, 64]),
            "seed": ("run", [0, 1]),
            "step": steps,
            "time": times,
        },
    )
    fig = plots_memorisation.score_errors_by_step(summary)
    fig.canvas.draw()  # log axes with no positive data would raise here
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0].endswith("t = 0.1") and titles[1].endswith("t = 2"), titles
    plt.close(fig)


def test_memorisation_figures_draw_when_every_time_scale_is_censored():
    """Two widths, two n, no τ reached (short training): the log axes would have no positive
    data and matplotlib would raise at drawing; the figures say "no runs" instead (the rerun
    tests' grid once failed its summary report on exactly this)."""
    runs = 4
    nan = np.full(runs, np.nan)
    summary = xr.Dataset(
        {
            "f_mem_by_step": (("run", "step"), np.zeros((runs, 2))),
            "f_mem_by_step_ci_low": (("run", "step"), np.zeros((runs, 2))),
            "f_mem_by_step_ci_high": (("run", "step"), np.full((runs, 2), 0.05)),
            "model_width": ("run", [32.0, 32.0, 64.0, np.nan]),
            **{v: ("run", nan) for v in ("tau_mem", "tau_mem_dsm", "tau_gen")},
            **{
                v: ("run", np.full(runs, 200.0) if v.endswith("ci_low") else nan)
                for v in ("tau_mem_ci_low", "tau_mem_ci_high", "tau_mem_dsm_ci_low")
            },
            **{v: ("run", nan) for v in ("tau_mem_dsm_ci_high", "tau_gen_bracket_low")},
            "tau_gen_bracket_high": ("run", nan),
        },
        coords={
            "dataset": ("run", ["g"] * runs),
            "score": ("run", ["mlp", "mlp", "wide", "unet"]),
            "d": ("run", [4] * runs),
            "n": ("run", [16, 64, 16, 16]),
            "step": [10, 200],
        },
    )
    for draw in (
        plots_memorisation.width_axis,
        plots_memorisation.time_scales_vs_n,
        plots_memorisation.phase_diagram_nw,
    ):
        fig = draw(summary)
        fig.canvas.draw()  # where a log axis without positive data raises
        plt.close(fig)


def test_r2_table_names_the_closest_reference_or_a_tie():
    """At the saved time nearest 0.1 of each run's last evaluated step: a run whose r² against
    empirical beats population by 40 SE is 'empirical'; one within 2 SE is a 'tie'; the last
    step of a run is its own (steps are outer-joined in a summary: NaN beyond it)."""
    r2 = np.full((2, 3, 2, 3), np.nan)  # run, step, reference, time
    r2[0, :2] = [[[1, 0.5, 0.1], [1, 0.9, 0.2]]] * 2  # run 0: evaluated at steps 10, 100
    r2[1, :] = [[[1, 0.70, 0.1], [1, 0.71, 0.2]]] * 3
    summary = xr.Dataset(
        {
            "f_mem_by_step": (("run", "step"), np.array([[0, 0.1, np.nan], [0, 0, 0]])),
            "score_r2": (("run", "step", "reference", "time"), r2),
            "score_r2_se": (("run", "step", "reference", "time"), np.full(r2.shape, 0.01)),
        },
        coords={
            "dataset": ("run", ["g", "g"]),
            "score": ("run", ["mlp", "mlp"]),
            "d": ("run", [4, 4]),
            "n": ("run", [16, 1024]),
            "step": [10, 100, 1000],
            "reference": ["population", "empirical"],
            "time": [1.0, 0.12, 0.01],
        },
    )
    table = plots_memorisation.r2_table(summary)
    assert table["closest"].tolist() == ["empirical", "tie"]
    assert table["r² empirical"].tolist() == ["0.900 ± 0.010", "0.710 ± 0.010"]
    fig = plots_memorisation.r2_vs_n(summary)
    assert fig.axes
    plt.close(fig)
