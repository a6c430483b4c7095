"""The tiny config through the SLURM profile on a one-node cluster on localhost.

tests/slurm/cluster.sh installs Debian's slurm-wlm, munge, slurmdbd and MariaDB when missing,
writes a localhost config with fake GPUs and starts the daemons. When it cannot (not root, no
apt-get, a daemon fails) the test is skipped with the reason, unless DIFFREGIMES_SLURM=required
(set by .ci/run), which turns the skip into a failure.

The test runs a cut of the tiny grid (see `grid`) through `--workflow-profile profiles/slurm`
in a temporary directory, asserts that every job went through SLURM (one accounting record per
planned job, the GPU rules holding a GPU) and that its metrics and summary stores equal those
of the same cells in the session's local tiny run (every job is seeded from its wildcards and
reads only its own cell, so a cut of the grid computes the same stores), and prints the wall
time per job of both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import xarray as xr
import yaml
from workflow_helpers import snakemake as run_snakemake

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
TINY = ROOT / "tests" / "config" / "tiny.yaml"
GPU_RULES = {"train", "sample", "probe", "training_axis"}
# Flags for a test cluster: first status check after 2 s (default 40 s), no account to guess,
# keep the SLURM logs of successful jobs so that the test can read their job ids.
SLURM_FLAGS = [
    "--workflow-profile",
    str(ROOT / "profiles" / "slurm"),
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-no-account",
    "--slurm-keep-successful-logs",
    "--jobs",
    "4",
]

pytestmark = pytest.mark.slow


def cluster(command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER), command], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    required = os.environ.get("DIFFREGIMES_SLURM") == "required"
    was_running = cluster("status").returncode == 0
    proc = cluster("start")
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        message = f"cannot start the local SLURM cluster: {reason}"
        if required:
            pytest.fail(f"{message} (DIFFREGIMES_SLURM=required)\n{proc.stderr}")
        pytest.skip(message)
    yield
    if not was_running:
        cluster("stop")


def grid(path: Path) -> Path:
    """tiny.yaml cut to one cell with an exact and a learned score (every rule runs), unless
    DIFFREGIMES_SLURM_GRID=tiny asks for the whole tiny grid: each SLURM job pays the start of
    a Snakemake process and the executor's status polling, so the job count sets the run time."""
    cfg = yaml.safe_load(TINY.read_text())
    if os.environ.get("DIFFREGIMES_SLURM_GRID") != "tiny":
        gmm = cfg["datasets"]["gmm"]
        cfg["datasets"] = {"gmm": {**gmm, "d": [4], "n": [16], "scores": ["empirical", "mlp"]}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, *args, config=workdir.parent / "grid.yaml", timeout=timeout)


def planned_jobs(workdir: Path, *args: str) -> Counter:
    """Jobs per rule of a dry run, without the target rule `all` (it runs no code)."""
    out = snakemake(workdir, "-n", *args).stdout
    counts = Counter({r: int(c) for r, c in re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M)})
    counts.pop("total", None)
    counts.pop("all", None)
    return counts


def accounting(workdir: Path, since: str) -> list[dict[str, str]]:
    """SLURM's accounting records of the jobs that ran in `workdir`."""
    fields = ["JobID", "JobName", "Comment", "State", "AllocTRES", "WorkDir", "ExitCode"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", since, "--format", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return [r for r in rows if Path(r["WorkDir"]).resolve() == workdir.resolve()]


def rule_of(record: dict[str, str]) -> str:
    """The rule of a job submitted by the executor (comment rule_<rule>[_wildcards_<...>])."""
    return re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", record["Comment"]).group(1)


def same_cells(summary: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    """The runs of `summary` that `like` holds, in `like`'s order and numbering."""

    def cells(ds):
        names = ("dataset", "d", "n", "seed", "score")
        return list(zip(*(ds[k].values.tolist() for k in names), strict=True))

    keys = cells(summary)
    rows = [keys.index(c) for c in cells(like)]
    return summary.isel(run=rows).assign_coords(run=like.run.values)


def stores(results: Path) -> list[Path]:
    return sorted(p.relative_to(results) for p in results.glob("metrics/*/*/*/*/*.zarr"))


def assert_same_store(a: Path, b: Path):
    """Same variables, coordinates and attributes, and the same values up to float32 rounding
    (every job is seeded from its wildcards; the order of float32 reductions may differ between
    two runs, by about 1e-7 relative, as seen once in a nearest-neighbour ratio)."""
    x = xr.open_zarr(a, consolidated=True).load()
    y = xr.open_zarr(b, consolidated=True).load()
    assert x.attrs == y.attrs, a
    xr.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_tiny_grid_through_slurm_equals_local_run(slurm_cluster, tiny_run, tmp_path):
    remote = tmp_path / "slurm"
    remote.mkdir()
    grid(tmp_path / "grid.yaml")

    planned = planned_jobs(remote, *SLURM_FLAGS)
    assert GPU_RULES <= set(planned), planned
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    start = time.monotonic()
    proc = snakemake(remote, *SLURM_FLAGS)
    slurm_seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr

    # Every planned job is one SLURM job that completed, found in the accounting ...
    records = accounting(remote, since)
    assert records, f"no SLURM job ran in {remote}:\n{log}"
    ran = Counter(rule_of(r) for r in records)
    assert ran == planned, f"SLURM ran {dict(ran)}, planned {dict(planned)}"
    assert {r["State"] for r in records} == {"COMPLETED"}, records
    # ... the GPU rules' requests went through SLURM as GPU requests, the others asked none ...
    for r in records:
        assert ("gres/gpu=1" in r["AllocTRES"]) == (rule_of(r) in GPU_RULES), r
    # ... and the executor's logs name the same job ids.
    ids = {r["JobID"] for r in records}
    logged = {p.stem for p in (remote / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert logged == ids
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", log))
    assert submitted == ids

    # Same results as the same cells of the local tiny run.
    local = tiny_run / "results"
    ran_stores = stores(remote / "results")
    assert ran_stores and set(ran_stores) <= set(stores(local)), ran_stores
    for rel in ran_stores:
        assert_same_store(local / rel, remote / "results" / rel)
    ours = xr.open_zarr(remote / "results/summary.zarr", consolidated=True).load()
    theirs = xr.open_zarr(local / "summary.zarr", consolidated=True).load()
    assert ours.sizes["run"] == len(ran_stores)
    assert ours.attrs == theirs.attrs
    xr.testing.assert_allclose(same_cells(theirs, ours), ours, rtol=1e-5, atol=1e-6)
    assert (remote / "results" / "index.html").exists()

    n_jobs = sum(planned.values())
    name = os.environ.get("DIFFREGIMES_SLURM_GRID", "cut tiny")
    timing = json.loads((tiny_run / "timing.json").read_text())
    local_jobs, local_seconds = timing["jobs"], timing["seconds"]
    report = (
        f"{name} grid through SLURM: {n_jobs} jobs in {slurm_seconds:.0f} s "
        f"({slurm_seconds / n_jobs:.1f} s a job); the local tiny run: {local_jobs} jobs in "
        f"{local_seconds:.0f} s ({local_seconds / local_jobs:.1f} s a job)"
    )
    print(report)
    (tmp_path / "timing.txt").write_text(report + "\n")
    out = os.environ.get("DIFFREGIMES_SLURM_TIMING")
    if out:
        Path(out).write_text(report + "\n")


def test_cluster_script_refuses_cleanly_without_root():
    """Not root and packages missing or present: exit 3 (skip), never a half-started cluster."""
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("no runuser to drop root")
        cmd = ["runuser", "-u", "nobody", "--", "bash", str(CLUSTER), "start"]
    else:
        cmd = ["bash", str(CLUSTER), "start"]
    env = {**os.environ, "DIFFREGIMES_SLURM_STATE": "/tmp/diffregimes-slurm-nobody"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3, proc.stderr
    assert "not root" in proc.stderr
