"""The workflow itself: config validation, dry runs, a tiny end-to-end run and reruns.

The end-to-end run uses tests/config/tiny.yaml in a temporary working directory, so it never
touches the repository's own results/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from workflow_helpers import ROOT, TINY, planned_jobs, snakemake

from diffregimes import image_files

RUN_VARIABLES = {
    "phi_class": ("clone_time",),
    "phi_class_se": ("clone_time",),
    "phi_train": ("clone_time",),
    "collapse_fraction": ("time",),
    "t_collapse": ("sample",),
    "f_excess": ("time",),
    "f_excess_se": ("time",),
    "f_theory": ("time",),
    "nn_ratio": ("sample",),
    "Lambda": (),
    "alpha": (),
    "t_S_theory": (),
    "t_S_measured": (),
    "t_C_theory": (),
    "t_C_measured": (),
    "f_mem": (),
}


def test_default_config_dry_run(tmp_path):
    """The shipped config validates and plans the full grid: GMM 3 d × 3 n × 5 scores (with the
    gaussian and smoothed baselines, the latter with its own theory per cell), digits 2 n × 2
    scores (empirical and the local patch score), Fashion-MNIST 2 n × 1 score where Debian's
    files are installed."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    jobs = planned_jobs(tmp_path, None)
    fashion = Path(image_files.FASHION_MNIST_PATH).is_dir()
    assert jobs["sample"] == 45 + 4 + 2 * fashion and jobs["metrics"] == jobs["sample"]
    assert jobs["probe"] == jobs["sample"]  # forward–backward probes of every run
    assert jobs["train"] == 9 and jobs["training_axis"] == 9
    assert jobs["data"] == 9 + 2 + 2 * fashion and jobs["theory"] == jobs["data"]
    assert jobs["theory_baseline"] == 9
    assert jobs["judge"] == 1 + fashion
    assert jobs["summary"] == 1 and jobs["index"] == 1


def test_paper_config_dry_run(tmp_path):
    jobs = planned_jobs(tmp_path, ROOT / "config" / "paper.yaml")
    # the (n, d) grids of the synthetic laws, Fig. 2 (4 d), Fig. 3 (3 d), the curse grid
    # (4 d × 6 n), 5 bring-your-own image sets × 2 scores (planned without their files), and
    # the follow-up's study: 3 d × 5 n, 4 widths, 2 full-batch cells
    grids = 7 * 5 * 3 + 3 * 3 * 3 + 3 * 2 * 2
    study = 3 * 5 + 4 + 2
    assert jobs["sample"] == 3 * (grids + 4 + 3 + 4 * 6 + 5 * 2 + study)
    assert jobs["train"] == 3 * (7 * 5 + 3 * 3) + 3 * 5 + 3 * study
    assert jobs["judge"] == 5


def test_a_dataset_s_own_seeds_replace_the_grid_s(tmp_path):
    """`datasets.<name>.seeds` gives that dataset's cells their own realisations (data,
    initialisation, noise) and leaves every other dataset on the top-level `seeds`."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["datasets"]["gmm"]["seeds"] = [0, 1, 2]
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    plain, seeded = planned_jobs(tmp_path), planned_jobs(tmp_path, path)
    # tiny: gmm 2 d × 2 n (3 scores, mlp trained), gauss 1 cell (4 scores)
    assert plain["data"] == 4 + 1 and seeded["data"] == 4 * 3 + 1
    assert plain["train"] == 4 and seeded["train"] == 4 * 3
    assert seeded["sample"] == 4 * 3 * 3 + 4


@pytest.mark.slow
def test_tiny_run_stores(tiny_run):
    results = tiny_run / "results"
    train = xr.open_zarr(results / "data/gmm/d16/n64/s0/train.zarr", consolidated=True)
    assert train["x"].dims == ("item", "feature") and train["x"].shape == (64, 16)
    assert set(np.unique(train["label"].values)) == {0, 1}
    test = xr.open_zarr(results / "data/gmm/d16/n64/s0/test.zarr", consolidated=True)
    assert test["x"].shape == (32, 16)

    traj = xr.open_zarr(results / "trajectories/gmm/d16/n64/s0/empirical.zarr", consolidated=True)
    assert traj["x"].dims == ("sample", "time", "feature")
    assert traj["x"].dtype == np.float32 and traj["time"].dtype == np.float64
    assert np.all(np.diff(traj["time"].values) < 0)  # descending from T to t_min
    assert traj["x_clone"].dims == ("clone_time", "pair", "copy", "feature")
    assert traj.attrs["sampler"] == "euler_maruyama"

    for score in ("population", "empirical"):
        m = xr.open_zarr(results / f"metrics/gmm/d16/n64/s0/{score}.zarr", consolidated=True)
        for name, dims in RUN_VARIABLES.items():
            assert name in m, name
            assert m[name].dims == dims, name
        assert {"dataset", "n", "d", "seed", "score", "sampler"} <= set(m.attrs)
        assert m.attrs["score"] == score and m.attrs["n"] == 64 and m.attrs["d"] == 16
    # The empirical score memorises: every end point sits on a training point at t_min.
    m = xr.open_zarr(results / "metrics/gmm/d16/n64/s0/empirical.zarr", consolidated=True)
    assert float(m["f_mem"]) > 0.9
    assert float(m["collapse_fraction"][-1]) == 1.0

    gauss = xr.open_zarr(results / "metrics/gauss/d8/n32/s0/empirical.zarr", consolidated=True)
    assert np.isnan(gauss["phi_class"]).all()
    assert "no classes" in gauss["phi_class"].attrs["not_applicable"]
    # the smoothed baseline is measured against the theory of the blurred training set
    smooth = xr.open_zarr(results / "metrics/gauss/d8/n32/s0/smooth.zarr", consolidated=True)
    own = xr.open_zarr(results / "theory/gauss/d8/n32/s0/baselines/smooth.zarr", consolidated=True)
    assert own.attrs["blur_sigma"] == 0.3 and "blurred" in own["t_C_theory"].attrs["description"]
    assert float(smooth["t_C_theory"]) == float(own["t_C_theory"])
    assert float(smooth["t_C_theory"]) < float(gauss["t_C_theory"])
    assert smooth["f_excess"].values.tolist() == own["f_excess"].values.tolist()
    # and so are its speciation references: its samples have covariance Ĉ + σ_s² I
    lam = float(gauss["Lambda"])
    assert float(smooth["Lambda"]) == lam
    assert float(smooth["t_S_theory"]) == pytest.approx(0.5 * np.log(lam + 0.3**2), rel=1e-12)

    summary = xr.open_zarr(results / "summary.zarr", consolidated=True)
    assert summary.sizes["run"] == 16  # gmm 2 d × 2 n × 3 scores + gauss 1 × 1 × 4
    scores = {"population", "empirical", "mlp", "gaussian", "smooth"}
    assert set(summary["score"].values) == scores
    # the law reaches the summary (the grid and reproduction figures select runs by it)
    kinds = dict(zip(summary["dataset"].values, summary["kind"].values, strict=True))
    assert kinds == {"gmm": "gmm", "gauss": "gaussian"}
    gmm = summary["dataset"].values == "gmm"
    assert (
        np.allclose(summary["sigma"].values[gmm], 0.7)
        and np.isnan(summary["sigma"].values[~gmm]).all()
    )


@pytest.mark.slow
def test_tiny_run_learned_score(tiny_run):
    results = tiny_run / "results"
    folder = results / "models/gmm/d16/n64/s0/mlp"
    log = xr.open_zarr(folder / "train_log.zarr", consolidated=True)
    assert log["loss"].dims == ("step",) and int(log["step"][-1]) == 200
    assert sorted(p.name for p in folder.glob("checkpoint_step*.pt"))[-1] == (
        "checkpoint_step00000200.pt"
    )
    m = xr.open_zarr(results / "metrics/gmm/d16/n64/s0/mlp.zarr", consolidated=True)
    for name, dims in RUN_VARIABLES.items():
        assert m[name].dims == dims, name
    assert m["f_mem_by_step"].dims == ("step",)
    assert m["score_error_empirical"].dims == ("step", "time")
    assert m["score_error_population"].dims == ("step", "time")
    assert np.isfinite(m["score_error_population"]).all()  # the GMM law is known
    assert m["tau_mem"].dims == ()
    assert int(m["step"][-1]) == 200
    # forward–backward probes, with t_S and t_C from them
    assert m["probe_class_retention"].dims == ("origin", "probe_time")
    assert m["probe_time"].size == 4 and np.isfinite(m["t_C_probe"])
    # r² against the closed-form references (the gmm dataset lists no baseline)
    assert m["score_r2"].dims == ("step", "reference", "time")
    assert list(m["reference"].values) == ["population", "empirical", "gaussian"]
    assert np.isfinite(m["score_r2_se"]).all() and (m["score_r2"] <= 1).all()


@pytest.mark.slow
def test_tiny_run_reports(tiny_run):
    results = tiny_run / "results"
    index = (results / "index.html").read_text()
    assert "reports/summary.html" in index and "reports/reproduction.html" in index
    assert index.count("<tr>") == 16 + 1  # header + one row per run
    # the tiny grid measures none of the paper's numbers: every row says so, none vanishes
    comparison = (results / "reproduction" / "comparison.csv").read_text().splitlines()
    assert len(comparison) - 1 == len(
        yaml.safe_load((ROOT / "workflow/reference/paper.yaml").read_text())
    )
    assert "Does it reproduce the paper?" in (results / "reports/reproduction.html").read_text()
    grid = (results / "reports" / "summary.html").read_text()
    assert grid.count("data:image/png;base64") >= 11  # every grid figure embedded
    assert "Traceback" not in grid
    runs = sorted((results / "reports" / "runs").rglob("*.html"))
    assert len(runs) == 16
    for html in runs:
        text = html.read_text()
        assert f'href="{html.relative_to(results).as_posix()}"' in index
        assert html.with_suffix(".png").stat().st_size > 1000  # the index thumbnail
        # + the probes; + the training and r² figures for a learned score
        figures = 7 if html.stem == "mlp" else 5
        assert text.count("data:image/png;base64") >= figures, html
        assert "Traceback" not in text


@pytest.mark.slow
def test_tiny_rerun_does_nothing_and_metric_change_reruns_metrics_only(tiny_run, tmp_path):
    assert planned_jobs(tiny_run) == {}  # nothing changed: nothing to do
    cfg = yaml.safe_load(TINY.read_text())
    cfg["metrics"]["interval"] = "exact"  # a setting of the metrics rule alone
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(tiny_run, changed)
    downstream = {"summary", "report_summary", "reproduction", "report_reproduction", "index"}
    assert set(jobs) - {"all"} == {"metrics", "report_run", *downstream}
    assert jobs["metrics"] == 16 and jobs["report_run"] == 16
    # the memory budget of the chunked kernels is a resource, not a param: nothing reruns
    cfg = yaml.safe_load(TINY.read_text())
    cfg["metrics"]["memory_budget_mb"] = 7
    changed.write_text(yaml.safe_dump(cfg))
    assert planned_jobs(tiny_run, changed) == {}


@pytest.mark.slow
def test_tiny_rerun_of_a_baseline_change_reruns_that_baseline_only(tiny_run, tmp_path):
    """A new σ_s of the smoothed baseline resamples it and recomputes its own theory, nothing
    else of the grid."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["baselines"]["smooth"]["sigma_s"] = 0.5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(tiny_run, changed)
    downstream = {"summary", "report_summary", "reproduction", "report_reproduction", "index"}
    rerun = {"sample", "probe", "theory_baseline", "metrics", "report_run", *downstream}
    assert set(jobs) - {"all"} == rerun
    assert jobs["sample"] == jobs["probe"] == jobs["theory_baseline"] == jobs["metrics"] == 1


@pytest.mark.slow
def test_snakemake_report_collects_every_report(tiny_run):
    import zipfile

    out = tiny_run / "report.zip"
    snakemake(tiny_run, "--report", str(out))
    names = zipfile.ZipFile(out).namelist()
    runs = [
        n
        for n in names
        if n.rsplit("/", 1)[-1]
        in ("population.html", "empirical.html", "gaussian.html", "smooth.html", "mlp.html")
    ]
    assert len(runs) == 16  # every run report, with the grid report and the index
    assert any(name.endswith("/summary.html") for name in names)
    assert any(name.endswith("/index.html") for name in names)


def test_rule_code_inputs_follow_the_script_imports():
    """Every rule lists as code inputs its own script and the package modules that script
    imports, directly or not (config.import_closure, read from the source), and that closure
    holds every module the script's imports actually load (checked in a fresh interpreter)."""
    import re
    import subprocess
    import sys

    from diffregimes.config import import_closure

    pkg = ROOT / "src" / "diffregimes"
    rules = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for rule, body in re.findall(
            r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), re.M | re.S
        ):
            script = re.search(r'script:\s*"\.\./\.\./scripts/(\w+)\.py"', body)
            if script:
                rules[rule] = (re.findall(r"code=code\(([^)]*)\)", body), script.group(1))
    assert len(rules) == 15, sorted(rules)
    probes = {}  # one fresh interpreter per script, all started at once (each imports torch)
    for rule, (calls, script) in rules.items():
        # one derived list: the rule's own script (and the notebook a report renders)
        assert calls and calls[0].split(",")[0] == f'"{script}"', (rule, calls)
        assert len(calls) == 1, (rule, calls)
        probe = (
            "import ast, sys\n"
            f"tree = ast.parse(open({str(ROOT / 'scripts' / (script + '.py'))!r}).read())\n"
            "code = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]\n"
            "exec(compile(ast.Module(code, []), 's', 'exec'))\n"
            "print(' '.join(sorted(m.split('.')[1] for m in sys.modules "
            "if m.startswith('diffregimes.'))))"
        )
        probes[rule] = subprocess.Popen(
            [sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for rule, (_, script) in rules.items():
        out, err = probes[rule].communicate()
        assert probes[rule].returncode == 0, (rule, err)
        closure = set(import_closure(ROOT / "scripts" / f"{script}.py", pkg))
        assert set(out.split()) <= closure, (rule, set(out.split()) - closure)
    # a config error message is read by the Snakefile only: no job's code input
    assert not any(
        "config" in import_closure(ROOT / "scripts" / f"{s}.py", pkg) for _, s in rules.values()
    )


def test_design_map_names_every_rule():
    """docs/design.md maps every rule of the workflow to its script and a library entry that
    exists and that the script calls."""
    import importlib
    import re

    rules = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    rules.discard("all")
    text = (ROOT / "docs" / "design.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(\w+\.py)` \| (.+) \|$", text, flags=re.M)
    assert {r[0] for r in rows} == rules
    for rule, script, entries in rows:
        source = (ROOT / "scripts" / script).read_text()
        for entry in re.findall(r"`(\w+)\.(\w+)`", entries):
            module = importlib.import_module(f"diffregimes.{entry[0]}")
            assert hasattr(module, entry[1]), (rule, entry)
        first = re.findall(r"`(\w+)\.(\w+)`", entries)[0]
        assert f"{first[1]}(" in source, (rule, script, first)
