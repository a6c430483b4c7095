"""The reproduction: the paper's reference numbers against the closed forms the code computes,
the comparison's rows and verdicts, and the reproduce configs (dry run; a reduced one end to
end)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from workflow_helpers import ROOT, planned_jobs, snakemake

from diffregimes import process, reproduction, theory

REFERENCE = ROOT / "workflow" / "reference" / "paper.yaml"
SMALL = ROOT / "tests" / "config" / "reproduce_small.yaml"


def entries(measure):
    return [e for e in reproduction.load_reference(REFERENCE) if e["measure"] == measure]


def test_reference_file_reads_and_every_entry_has_a_source():
    ref = reproduction.load_reference(REFERENCE)
    assert len(ref) >= 40
    assert all(e["source"] for e in ref)
    figures = {e["figure"] for e in ref}
    assert {"Fig. 2", "Fig. 3", "Table 1", "Fig. 5"} <= figures


def test_fig3_collapse_times_and_alpha_from_the_closed_form():
    """t_C = ½ log(1 + σ²/(n^{2/d} − 1)) and α = ln n/d of the code against the paper's
    Fig. 3 (n = 20 000, σ = 1), to the paper's printed digits."""
    rows = entries("t_C_theory")
    assert len(rows) == 3
    for e in rows:
        d, n = e["select"]["d"], e["select"]["n"]
        assert abs(theory.collapse_time_gmm(n, d, 1.0) - e["paper"]) <= e["tolerance"], e
    for e in entries("alpha"):
        d, n = e["select"]["d"], e["select"]["n"]
        assert abs(math.log(n) / d - e["paper"]) <= e["tolerance"], e


def test_fig3_theory_line_from_the_closed_form():
    for e in entries("f_theory_over_alpha"):
        d, n = e["select"]["d"], e["select"]["n"]
        a = math.log(n) / d
        f = theory.excess_entropy_gmm(np.array([e["at"]]), a, 1.0)[0]
        assert abs(f / a - e["paper"]) <= e["tolerance"], (e, f / a)


def test_phi_at_the_crossing_and_table1_quantised_speciation_times():
    (e,) = entries("phi_at_crossing")
    assert abs(theory.phi_gmm(1.0) - e["paper"]) <= e["tolerance"]
    bar = process.alphas_bar("linear", 1000)
    lambdas = {e["setting"]: e["paper"] for e in entries("Lambda") if e["paper"] is not None}
    quantised = [e for e in entries("t_S_ddpm") if e["paper"] is not None]
    assert len(quantised) == 5
    for e in quantised:
        _, t_s = theory.speciation_step_ddpm(lambdas[e["setting"]], bar)
        assert abs(t_s - e["paper"]) <= e["tolerance"], (e["setting"], t_s)


def _summary():
    """Two runs: a GMM population run (φ, t_S) and a GMM empirical run (f^e)."""
    ct = np.array([2.0, 3.0, 3.5, 4.0])
    times = np.array([3.296, 2.512, 2.12])
    th = np.array([0.99, 0.912, 0.765, 0.622])
    runs = []
    for score, d, n in (("population", 1024, 512), ("empirical", 1024, 20000)):
        a = math.log(n) / d
        runs.append(
            xr.Dataset(
                {
                    "phi_class": ("clone_time", th + np.array([0.0, 0.003, 0.03, -0.004])),
                    "phi_class_se": ("clone_time", np.full(4, 0.005)),
                    "phi_theory": ("clone_time", th),
                    "f_excess": ("time", a * np.array([0.886, 0.59, 0.30])),
                    "f_excess_se": ("time", a * np.array([0.004, 0.004, 0.004])),
                    "f_theory": ("time", a * np.array([0.929, 0.659, 0.25])),
                    "t_S_measured": 3.46,
                    "t_S_measured_se": 0.02,
                    "Lambda_population": 1.0 + d,
                    "alpha": a,
                    "t_C_theory": theory.collapse_time_gmm(n, d, 1.0),
                },
                coords={"clone_time": ct, "time": times},
            )
            .expand_dims(run=1)
            .assign_coords(
                dataset=("run", ["g"]),
                d=("run", [d]),
                n=("run", [n]),
                score=("run", [score]),
                seed=("run", [0]),
            )
        )
    return xr.concat(runs, dim="run", join="outer").assign_coords(run=[0, 1])


def test_comparison_rows_and_verdicts():
    laws = {"g": {"kind": "gmm", "mu": 1.0, "sigma": 1.0}}
    pop = {"kind": "gmm", "sigma": 1.0, "score": "population", "d": 1024}
    emp = {"kind": "gmm", "sigma": 1.0, "score": "empirical", "n": 20000, "d": 1024}
    ref = [
        dict(
            figure="F2",
            quantity="ratio",
            setting="",
            paper=1.0,
            source="s",
            select=pop,
            measure="t_S_ratio",
        ),
        dict(
            figure="F2",
            quantity="φ(3)",
            setting="",
            paper=0.912,
            at=3.0,
            paper_se=0.0028,
            source="s",
            select=pop,
            measure="phi_at",
        ),
        dict(
            figure="F2",
            quantity="φ(3.5)",
            setting="",
            paper=0.765,
            at=3.5,
            paper_se=0.0042,
            source="s",
            select=pop,
            measure="phi_at",
        ),
        dict(
            figure="F2",
            quantity="χ²",
            setting="",
            paper=0.015,
            source="s",
            select=pop,
            measure="phi_chi2",
        ),
        dict(
            figure="F3",
            quantity="t_C",
            setting="",
            paper=1.9775,
            tolerance=5e-5,
            source="s",
            select=emp,
            measure="t_C_theory",
        ),
        dict(
            figure="F3",
            quantity="f/α",
            setting="",
            paper=0.887,
            at=3.296,
            source="s",
            select=emp,
            measure="f_over_alpha",
        ),
        dict(
            figure="F3",
            quantity="f/α far",
            setting="",
            paper=0.257,
            at=2.12,
            source="s",
            select=emp,
            measure="f_over_alpha",
        ),
        dict(
            figure="T1",
            quantity="Λ",
            setting="",
            paper=7.66,
            tolerance=0.005,
            source="s",
            select={"kind": "idx", "d": 1024},
            measure="Lambda",
        ),
        dict(
            figure="T1",
            quantity="Λ",
            setting="ext",
            paper=None,
            source="s",
            select=pop,
            measure="t_S_measured",
        ),
    ]
    table = reproduction.compare(_summary(), laws, ref)
    assert list(table.columns) == reproduction.COLUMNS and len(table) == len(ref)
    by = table.set_index("quantity")
    ratio = by.loc["ratio"]
    t_s = 0.5 * math.log(1025)
    assert ratio["measured"] == pytest.approx(3.46 / t_s) and ratio["se"] == pytest.approx(
        0.02 / t_s
    )
    assert ratio["agrees"] == "yes"
    # φ(3): 0.915 ± 0.005 against 0.912 ± 0.0028 → +0.52 SE; φ(3.5): +0.03 → 4.6 SE, red
    assert by.loc["φ(3)", "deviation_se"] == pytest.approx(0.003 / math.hypot(0.005, 0.0028))
    assert by.loc["φ(3)", "agrees"] == "yes" and by.loc["φ(3.5)", "agrees"] == "no"
    chi2 = by.loc["χ²"]  # (0, 0.6, 6, −0.8) SE: 6 SE > 3.40, the Bonferroni 3 SE level for 4
    assert chi2["agrees"] == "no" and chi2["measured"] == pytest.approx(0.03)
    assert chi2["deviation_se"] == pytest.approx(6.0)
    assert "6.00 SE over 4 clone times, agrees if ≤ 3.40" in chi2["criterion"]
    assert by.loc["t_C", "agrees"] == "yes" and "≤ 5e-05" in by.loc["t_C", "criterion"]
    f = by.loc["f/α"]  # 0.886 ± 0.004 against 0.887 (rounding SE 0.0005/√3)
    assert f["paper_se"] == pytest.approx(0.0005 / math.sqrt(3))
    assert f["agrees"] == "yes" and f["deviation_se"] == pytest.approx(
        -0.001 / math.hypot(0.004, f["paper_se"])
    )
    assert by.loc["f/α far", "agrees"] == "no"  # 0.30 against 0.257: 10 SE
    lam = table[table["quantity"] == "Λ"].set_index("setting")
    assert lam.loc["", "agrees"] == "absent" and "kind=idx" in lam.loc["", "note"]
    assert np.isnan(lam.loc["", "measured"])
    ext = table[table["setting"] == "ext"].iloc[0]
    assert ext["agrees"] == "extension" and ext["measured"] == pytest.approx(3.46)


def test_reference_entry_errors_name_the_entry(tmp_path):
    bad = tmp_path / "ref.yaml"
    bad.write_text("- {figure: F, quantity: q, setting: s, paper: 1, source: x, measure: nope}\n")
    with pytest.raises(ValueError, match=r"entry 1 \(F, q\): unknown measure 'nope'"):
        reproduction.load_reference(bad)
    bad.write_text("- {figure: F, quantity: q, setting: s, paper: 1, measure: alpha}\n")
    with pytest.raises(ValueError, match="missing key 'source'"):
        reproduction.load_reference(bad)


def test_rounding_se():
    assert reproduction.rounding_se(0.7752) == pytest.approx(0.00005 / math.sqrt(3))
    assert reproduction.rounding_se(1.0) == pytest.approx(0.05 / math.sqrt(3))
    # printed trailing zeros are digits: the reference file quotes such values
    assert reproduction.rounding_se("1.000") == pytest.approx(0.0005 / math.sqrt(3))
    ref = reproduction.load_reference(REFERENCE)
    ratios = [e for e in ref if e["measure"] == "t_S_ratio"]
    assert [reproduction.rounding_se(e["paper"]) for e in ratios] == pytest.approx(
        [0.0005 / math.sqrt(3)] * 4
    )


def test_f_crossing_ignores_the_summary_padding_of_other_runs_times():
    """f^e/α's crossing and its SE from the run's own times, the NaN padding of an outer-joined
    summary dropped (neighbours of the crossing must be measured points)."""
    t = np.array([0.2, 0.4, 0.5, 0.6, 0.8])
    f = np.array([0.0, 0.2, np.nan, np.nan, 0.8])  # 0.5 and 0.6 are another run's times
    se = np.array([0.01, 0.01, np.nan, np.nan, 0.01])
    run = xr.Dataset(
        {"f_excess": ("time", f), "f_excess_se": ("time", se), "alpha": 1.0},
        coords={"time": t},
    )
    t_x, t_se = reproduction.f_crossing(run, {"at": 0.5})
    assert t_x == pytest.approx(0.6) and t_se == pytest.approx(0.01 / 1.5)


def test_reproduce_config_dry_run_plans_the_papers_cells(tmp_path):
    """config/reproduce.yaml plans Fig. 2 (3 d), Fig. 3 (3 d), the curse grid (4 d × 5 n), the
    follow-up's study (5 n × 3 seeds, 4 widths, 2 full-batch cells: 21 trained models; the
    memorisation dataset's own seeds replace the grid's one), digits and
    Fashion-MNIST where installed, and leaves each absent bring-your-own set out
    with one warning, without reading a data file."""
    from pathlib import Path

    from diffregimes import image_files

    out = snakemake(tmp_path, "-n", config=ROOT / "config" / "reproduce.yaml")
    fashion = Path(image_files.FASHION_MNIST_PATH).is_dir()
    jobs = planned_jobs(tmp_path, ROOT / "config" / "reproduce.yaml")
    assert jobs["sample"] == 3 + 3 + 20 + 21 + 1 + fashion
    assert jobs["train"] == 21 and jobs["training_axis"] == 21
    assert jobs["data"] == 3 + 3 + 20 + 15 + 1 + 2 + 1 + fashion  # one data cell per width
    assert jobs["reproduction"] == 1 and jobs["report_reproduction"] == 1
    text = out.stdout + out.stderr
    for name in ("mnist18", "cifar_car_horse", "imagenet16", "imagenet32", "lsun64"):
        assert text.count(f"datasets.{name}: /path/to/") == 1, name


@pytest.mark.slow
def test_reduced_reproduction_end_to_end(tmp_path):
    """tests/config/reproduce_small.yaml up to the comparison and its report: the Fig. 2 and
    Fig. 3 rows at d = 256 have finite measured values and SEs, and agree; the absent MNIST's
    rows say so; the Fig. 2 store keeps 8 pairs' end points and every pair's observables."""
    snakemake(
        tmp_path,
        "results/reproduction/comparison.csv",
        "results/reports/reproduction.html",
        config=SMALL,
    )
    table = pd.read_csv(tmp_path / "results/reproduction/comparison.csv")
    d256 = table[table["setting"].str.contains("d = 256")]
    fig2 = d256[d256["figure"] == "Fig. 2"]
    fig3 = d256[d256["figure"] == "Fig. 3"]
    assert len(fig2) == 2 and len(fig3) == 6, d256
    sampled = pd.concat([fig2, fig3[fig3["quantity"].str.contains("t̂_C")]])
    assert np.isfinite(sampled["measured"]).all() and (sampled["se"] > 0).all(), sampled
    assert (pd.concat([fig2, fig3])["agrees"].isin(["yes", "extension"])).all(), d256.to_string()
    mnist = table[table["setting"].str.startswith("MNIST")]
    assert (mnist["agrees"] == "absent").all() and len(mnist) == 4
    traj = xr.open_zarr(
        tmp_path / "results/trajectories/fig2/d256/n256/s0/population.zarr", consolidated=True
    )
    assert traj.sizes["pair"] == 8 and traj.sizes["clone_pair"] == 400
    assert traj["clone_class"].shape == (19, 400, 2)
    html = (tmp_path / "results/reports/reproduction.html").read_text()
    assert "Does it reproduce the paper?" in html
    shutil.rmtree(tmp_path / "results" / "trajectories")
