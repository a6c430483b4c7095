"""Reruns of exactly what changed, asserted on dry-run job lists after one small local run.

The workflow (Snakefile, workflow/, scripts/, src/, envs/, config/, profiles/) is copied to a
temporary directory and run there, so that the code-edit cases edit the copy and never the
repository; the jobs themselves import the installed package. The grid is smaller than
tiny.yaml (one cell, two learned scores and one exact score) to keep the run short: reruns
depend on the shape of the DAG, not on the size of the jobs.

Every rule lists its script and the library modules it imports as checksummed inputs and the
profiles leave out the `code` rerun trigger (script mtime), so touching any file, scripts
included, reruns nothing while a content change reruns exactly the rules that use it.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_helpers import command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
COPIED = ["Snakefile", "workflow", "scripts", "src", "envs", "config", "profiles"]
PIPELINE = {
    "data",
    "theory",
    "theory_baseline",
    "train",
    "training_axis",
    "sample",
    "probe",
    "metrics",
    "summary",
}

pytestmark = pytest.mark.slow


def small_config() -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["datasets"] = {"gmm": {**cfg["datasets"]["gmm"], "d": [4], "n": [16]}}
    cfg["datasets"]["gmm"]["scores"] = ["empirical", "mlp", "mlp_b"]
    cfg["models"]["mlp"].update(steps=40, checkpoints=2, log_every=10)
    cfg["models"]["mlp_b"] = {**cfg["models"]["mlp"], "width": 16}
    cfg["training_axis"].update(checkpoints=2, samples=16, score_points=8)
    return cfg


class Workflow:
    """A copy of the workflow and a working directory with one finished run."""

    def __init__(self, root: Path):
        self.repo = root / "repo"
        self.workdir = root / "work"
        self.configs = root / "configs"
        for path in (self.repo, self.workdir, self.configs):
            path.mkdir()
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake")
                shutil.copytree(src, self.repo / name, ignore=ignore)
            else:
                shutil.copy2(src, self.repo / name)
        self.config = small_config()
        self.base = self.write_config(self.config, "base.yaml")

    def write_config(self, cfg: dict, name: str) -> Path:
        path = self.configs / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    def snakemake(self, *args: str, config: Path | None = None) -> str:
        cmd = command(
            self.workdir, *args, config=config or self.base, snakefile=self.repo / "Snakefile"
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def planned(self, config: Path | None = None) -> dict[str, int]:
        """Jobs per rule that a dry run plans (without the target rule `all`)."""
        out = self.snakemake("-n", config=config)
        counts = {r: int(c) for r, c in re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M)}
        counts.pop("total", None)
        counts.pop("all", None)
        return counts

    def changed(self, edit) -> dict[str, int]:
        cfg = copy.deepcopy(self.config)
        edit(cfg)
        return self.planned(self.write_config(cfg, "changed.yaml"))


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    wf = Workflow(tmp_path_factory.mktemp("reruns"))
    wf.snakemake()
    return wf


def report(case: str, jobs: dict[str, int]):
    total = sum(jobs.values())
    line = f"{case}: {total} jobs {dict(sorted(jobs.items()))}"
    print(line)
    out = os.environ.get("DIFFREGIMES_RERUN_REPORT")
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def split(jobs: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(pipeline jobs, report jobs) of a job list."""
    core = {r: c for r, c in jobs.items() if r in PIPELINE}
    return core, {r: c for r, c in jobs.items() if r not in PIPELINE}


def assert_reruns(jobs: dict[str, int], pipeline: dict[str, int], runs: int):
    """Exactly `pipeline` among the pipeline rules; the grid-level reports (the grid report,
    the comparison with the paper and its report, the index) once, and each per-run report
    rule (report_*) once per rerun run."""
    core, reports = split(jobs)
    assert core == pipeline, jobs
    for grid_level in ("report_summary", "reproduction", "report_reproduction", "index"):
        assert reports.pop(grid_level, 0) == 1, (grid_level, jobs)
    assert all(r.startswith("report_") and c == runs for r, c in reports.items()), jobs


def test_nothing_changed_nothing_to_do(wf):
    jobs = wf.planned()
    report("nothing changed", jobs)
    assert jobs == {}


def test_metric_setting_reruns_metrics_and_reports_only(wf):
    jobs = wf.changed(lambda c: c["metrics"].update(interval="exact"))
    report("metric setting (metrics.interval)", jobs)
    assert_reruns(jobs, {"metrics": 3, "summary": 1}, runs=3)
    # the bootstrap also sets the SE of t_C from f^e: the theory job reruns too
    jobs = wf.changed(lambda c: c["metrics"].update(bootstrap=30))
    report("metric setting (metrics.bootstrap)", jobs)
    assert_reruns(jobs, {"theory": 1, "metrics": 3, "summary": 1}, runs=3)


def test_sampler_setting_reruns_sampling_onward(wf):
    jobs = wf.changed(lambda c: c["sampler"].update(name="heun"))
    report("sampler setting (sampler.name)", jobs)
    # the training axis samples every checkpoint by DDIM, whatever the run's sampler, and
    # the probes run Euler–Maruyama for a deterministic sampler (heun) as before
    assert_reruns(jobs, {"sample": 3, "metrics": 3, "summary": 1}, runs=3)
    jobs = wf.changed(lambda c: c["sampler"].update(name="ddpm"))
    report("stochastic sampler (sampler.name: ddpm)", jobs)
    assert_reruns(jobs, {"sample": 3, "probe": 3, "metrics": 3, "summary": 1}, runs=3)


def test_saved_times_retrain_nothing(wf):
    jobs = wf.changed(lambda c: c["time"].update(saved=12))
    report("saved times (time.saved)", jobs)
    assert "train" not in jobs, jobs
    assert_reruns(
        jobs,
        {"theory": 1, "training_axis": 2, "sample": 3, "metrics": 3, "summary": 1},
        runs=3,
    )


def test_config_message_edit_plans_nothing_and_generate_edit_reruns_training_axis(wf):
    """config.py is read by the Snakefile, not by any job; generate.py is imported by the
    sample and training_axis scripts (their code inputs follow the imports)."""
    for name, expected in (("config.py", {}), ("generate.py", None)):
        module = wf.repo / "src" / "diffregimes" / name
        original = module.read_text()
        try:
            module.write_text(original.replace('"""', '""" ', 1))  # a docstring reworded
            jobs = wf.planned()
        finally:
            module.write_text(original)
        report(f"{name} edited", jobs)
        if expected is not None:
            assert jobs == expected, jobs
        else:
            assert jobs.get("training_axis") == 2 and jobs.get("sample") == 3, jobs
            assert "train" not in jobs and "data" not in jobs, jobs


def test_sampler_module_edit_reruns_sampling_onward(wf):
    module = wf.repo / "src" / "diffregimes" / "samplers.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit that changes the file's content\n")
        jobs = wf.planned()
    finally:
        module.write_text(original)
    report("sampler module edited (src/diffregimes/samplers.py)", jobs)
    pipeline = {"sample": 3, "probe": 3, "training_axis": 2, "metrics": 3, "summary": 1}
    assert_reruns(jobs, pipeline, runs=3)
    assert wf.planned() == {}  # content restored: nothing to do although the mtime is newer


def test_model_setting_reruns_that_model_only(wf):
    jobs = wf.changed(lambda c: c["models"]["mlp_b"].update(width=24))
    report("model setting (models.mlp_b.width)", jobs)
    assert_reruns(
        jobs,
        {"train": 1, "training_axis": 1, "sample": 1, "probe": 1, "metrics": 1, "summary": 1},
        runs=1,
    )


def test_new_n_adds_its_cells_and_the_grid_outputs(wf):
    jobs = wf.changed(lambda c: c["datasets"]["gmm"].update(n=[16, 32]))
    report("one n added (gmm n: [16] -> [16, 32])", jobs)
    new_cell = {"data": 1, "theory": 1, "train": 2, "training_axis": 2, "sample": 3, "probe": 3}
    new_cell["metrics"] = 3
    assert_reruns(jobs, {**new_cell, "summary": 1}, runs=3)


def test_touching_files_reruns_nothing(wf):
    """`touch` without a content change: library modules, notebooks, rules, envs, configs."""
    touched = [wf.repo / "Snakefile", wf.base]
    for name in ("src", "workflow", "envs", "config", "profiles"):
        touched += [p for p in (wf.repo / name).rglob("*") if p.is_file()]
    assert any(p.name == "samplers.py" for p in touched)
    for path in touched:
        path.touch()
    jobs = wf.planned()
    report(f"touched {len(touched)} files (library, notebooks, rules, envs, configs)", jobs)
    assert jobs == {}


def test_touching_a_rule_script_reruns_nothing(wf):
    script = wf.repo / "scripts" / "sample.py"
    stat = script.stat()
    try:
        script.touch()
        jobs = wf.planned()
    finally:
        os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report("touched scripts/sample.py", jobs)
    assert jobs == {}


def test_law_key_edit_retrains_from_scratch(wf):
    """A law key (datasets.gmm.sigma) changes the training data: the train job reruns and must
    not resume the checkpoints of the old data (their fingerprint holds the data's digest).
    Runs last: it leaves the working directory on the changed config."""
    import torch

    cfg = copy.deepcopy(wf.config)
    cfg["datasets"]["gmm"]["sigma"] = 0.9
    path = wf.write_config(cfg, "sigma.yaml")
    model = wf.workdir / "results/models/gmm/d4/n16/s0/mlp/final.pt"
    before = torch.load(model, weights_only=True)["ema"]
    planned = wf.planned(path)
    report("law key (datasets.gmm.sigma)", planned)
    assert planned.get("data") == 1 and planned.get("train") == 2, planned
    wf.snakemake(str(model.relative_to(wf.workdir)), config=path)  # data and training only
    after = torch.load(model, weights_only=True)["ema"]
    log = (wf.workdir / "results/logs/train/gmm/d4/n16/s0/mlp.log").read_text()
    assert "training from scratch" in log and "resuming" not in log, log
    assert any(not torch.equal(before[k], after[k]) for k in before)
