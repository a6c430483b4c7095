"""Workflow faults (`slow`, about three minutes on two loaded cores): a cut of
tests/config/tiny.yaml (one GMM cell, the empirical score and a learned one with more training
and time steps) run by `snakemake` in temporary directories, two uninterrupted runs in the
background while a third (the learned score only) is killed and rerun:

- killed jobs: the training job's Python process is killed with SIGKILL once it has written
  its third checkpoint, and the sampling job's once it has started to integrate. Snakemake
  reports the failed job and exits; the user runs `snakemake` again (`make run`), which
  resumes training from the newest checkpoint and reruns the killed sampling job. If
  Snakemake itself is killed too (power loss, `kill -9` of the session), it leaves a lock:
  `snakemake --unlock`, then `snakemake` (the default profile sets `rerun-incomplete`, so the
  interrupted jobs rerun). The final stores equal those of an uninterrupted run;
- determinism: two runs from scratch give bitwise-equal stores, and every store records the
  seed of the job that made it;
- a corrupted training set: the failing job's error in Snakemake's output names the store and
  says to delete it and rerun.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import xarray as xr
import yaml
from workflow_helpers import TINY
from workflow_helpers import command as workflow_command

from diffregimes import store, train
from diffregimes.seeds import job_seed

FIX = "delete it and rerun snakemake"


def _truncated_chunk(path):
    """Half of the first chunk of x, as a disk error or a killed copy leaves it."""
    chunk = path / "x" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])


# --- the workflow ---------------------------------------------------------------------------------

CELL = "gmm/d4/n16/s0"
SCORES = ("empirical", "mlp")
TRAIN_STEPS = 600  # ~6 s of training on a loaded core: time to kill it after a checkpoint
TARGETS = [f"results/metrics/{CELL}/{score}.zarr" for score in SCORES]
LEARNED = [f"results/metrics/{CELL}/mlp.zarr"]  # the killed run: the learned score only
MODEL = f"results/models/{CELL}/mlp"


def cut(path: Path) -> Path:
    """tiny.yaml cut to one cell, the empirical score and a learned one, with more training
    steps and time steps, so that both jobs last long enough to be killed mid-way."""
    cfg = yaml.safe_load(TINY.read_text())
    gmm = cfg["datasets"]["gmm"]
    cfg["datasets"] = {"gmm": {**gmm, "d": [4], "n": [16], "scores": list(SCORES)}}
    cfg["models"]["mlp"]["steps"] = TRAIN_STEPS
    cfg["time"]["steps"] = 120
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(workdir: Path, *args: str, targets=TARGETS) -> list[str]:
    """snakemake on `targets` with the cut beside `workdir` (targets before --configfile,
    which takes several values)."""
    return workflow_command(workdir, *args, *targets, config=workdir.parent / "cut.yaml")


def run(workdir: Path, *args: str, targets=TARGETS, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command(workdir, *args, targets=targets),
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_and_kill(workdir: Path, script: str, ready, what: str, timeout=300, targets=LEARNED):
    """Run snakemake; once `ready()` holds, SIGKILL the Python process of the job that runs
    scripts/<script>.py (a child of snakemake). Returns snakemake's exit code and output."""
    out_path = workdir / f"snakemake-{script}-killed.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            command(workdir, targets=targets), stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"snakemake ended (exit {proc.returncode}) before {what}:\n"
                        + out_path.read_text()
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {what} after {timeout} s:\n" + out_path.read_text())
                time.sleep(0.01)
            job = _job_process(proc.pid, script)
            os.kill(job.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, out_path.read_text()


def _job_process(snakemake_pid: int, script: str, patience: float = 5.0) -> psutil.Process:
    """The job's Python process: snakemake runs `python .snakemake/scripts/tmpXXXX.<script>.py`
    (through bash, whose own command line names the file too)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        for child in psutil.Process(snakemake_pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if cmd and Path(cmd[0]).name.startswith("python"):
                if any(arg.endswith(f".{script}.py") for arg in cmd[1:]):
                    return child
        time.sleep(0.01)
    raise AssertionError(f"no running {script}.py job under snakemake (pid {snakemake_pid})")


def stores(workdir: Path) -> dict[str, Path]:
    results = workdir / "results"
    return {
        str(p.relative_to(results)): p
        for p in sorted(results.rglob("*.zarr"))
        if not p.name.startswith(".")
    }


def assert_bitwise_equal(a: xr.Dataset, b: xr.Dataset, where: str):
    xr.testing.assert_identical(a, b)  # names, dims, coords, attrs
    for name in a.variables:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f"{where}: {name}"


def assert_same_weights(a: Path, b: Path):
    sa, sb = store.load_checkpoint(a), store.load_checkpoint(b)
    assert sa.keys() == sb.keys()
    for key, value in sa["ema"].items():
        torch.testing.assert_close(sb["ema"][key], value, rtol=0, atol=0)


class Background:
    """An uninterrupted run of the cut in `workdir`, started now, waited for on demand."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True)
        cut(workdir.parent / "cut.yaml")
        self.workdir, self.out = workdir, workdir.parent / "snakemake.txt"
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                command(workdir), stdout=out, stderr=subprocess.STDOUT, cwd=workdir
            )

    def wait(self) -> Path:
        if self.proc.wait(timeout=900) != 0:
            raise AssertionError(f"snakemake failed:\n{self.out.read_text()}")
        return self.workdir

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two uninterrupted runs of the cut in two directories, started together in the
    background: each spends much of its time waiting (process starts), so they overlap well
    with each other and with the killed run."""
    runs = {name: Background(tmp_path_factory.mktemp(name) / "run") for name in ("a", "b")}
    yield runs
    for background in runs.values():
        background.stop()


@pytest.fixture(scope="module")
def straight(uninterrupted):
    return uninterrupted["a"].wait()


@pytest.fixture(scope="module")
def second(uninterrupted):
    return uninterrupted["b"].wait()


@pytest.mark.slow
def test_killed_training_and_sampling_jobs_resume_to_the_same_results(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    cut(tmp_path / "cut.yaml")
    model = workdir / MODEL
    third = model / train.CHECKPOINT.format(train.checkpoint_steps(TRAIN_STEPS, 4)[2])

    # 1. kill the training job once it has written its third checkpoint
    code, out = run_and_kill(workdir, "train", third.exists, f"checkpoint {third.name}")
    assert code != 0 and "Error in rule train" in out, out
    newest = sorted(model.glob("checkpoint_step*.pt"))[-1]
    step = int(store.load_checkpoint(newest)["step"])
    assert step < TRAIN_STEPS and not (model / "final.pt").exists(), (
        f"training finished before the kill landed (newest checkpoint {newest.name}): "
        "raise TRAIN_STEPS"
    )
    assert not (model / "train_log.zarr").exists()
    for path in stores(workdir).values():  # no store that a finished job expects is broken
        store.open_store(path, load=False)

    # 2. rerun: training resumes; kill the sampling job of the learned score once it integrates
    log = workdir / f"results/logs/sample/{CELL}/mlp.log"

    def sampling():
        return log.exists() and "sampling mlp score" in log.read_text()

    code, out = run_and_kill(workdir, "sample", sampling, "integration in the mlp sampling job")
    assert code != 0 and "Error in rule sample" in out, out
    train_log = (workdir / f"results/logs/train/{CELL}/mlp.log").read_text()
    assert f"resuming from {newest.name} at step {step} of {TRAIN_STEPS}" in train_log
    assert "done in" not in log.read_text(), "the sampling job finished before the kill landed"
    trajectories = workdir / f"results/trajectories/{CELL}/mlp.zarr"
    assert not trajectories.exists()

    # 3. rerun to the end: the same stores and weights as the uninterrupted run
    run(workdir, targets=LEARNED)
    straight = uninterrupted["a"].wait()
    assert not list((workdir / "results").rglob(".*.partial-*"))
    done = stores(workdir)
    assert set(done) == {name for name in stores(straight) if "empirical" not in name}
    for name, path in done.items():
        a, b = store.open_store(path), store.open_store(straight / "results" / name)
        if name.endswith("train_log.zarr"):  # steps_per_s is a wall time
            a, b = a.drop_vars("steps_per_s"), b.drop_vars("steps_per_s")
        assert_bitwise_equal(a, b, name)
    assert_same_weights(model / "final.pt", straight / MODEL / "final.pt")


@pytest.mark.slow
def test_two_runs_from_scratch_are_bitwise_equal(straight, second):
    """Every store of two runs in two directories (the training log's steps_per_s, a wall
    time, aside) and the trained weights are bitwise equal on the CPU."""
    assert stores(second).keys() == stores(straight).keys()
    for name, path in stores(straight).items():
        a, b = store.open_store(path), store.open_store(stores(second)[name])
        if name.endswith("train_log.zarr"):
            a, b = a.drop_vars("steps_per_s"), b.drop_vars("steps_per_s")
        assert_bitwise_equal(a, b, name)
    for checkpoint in sorted((straight / MODEL).glob("*.pt")):
        assert_same_weights(checkpoint, second / MODEL / checkpoint.name)


@pytest.mark.slow
def test_every_store_records_its_job_seed(straight):
    cell = ("gmm", 4, 16, 0)
    results = straight / "results"

    def attrs(path):
        return store.open_store(results / path, load=False).attrs

    assert attrs(f"theory/{CELL}/theory.zarr")["seed_job"] == job_seed("theory", *cell)
    assert attrs(f"models/{CELL}/mlp/train_log.zarr")["seed_job"] == job_seed("train", *cell, "mlp")
    assert attrs(f"training/{CELL}/mlp.zarr")["seed_job"] == job_seed("training_axis", *cell, "mlp")
    for score in SCORES:
        sample_seed = job_seed("sample", *cell, score)
        assert attrs(f"trajectories/{CELL}/{score}.zarr")["seed_job"] == sample_seed
        metrics = attrs(f"metrics/{CELL}/{score}.zarr")
        assert metrics["seed_metrics"] == job_seed("metrics", *cell, score)
        assert metrics["seed_job"] == sample_seed  # the trajectories it measures
        assert metrics["theory_seed_job"] == job_seed("theory", *cell)


@pytest.mark.slow
def test_data_stores_record_their_job_seed(straight):
    for name in ("train", "test"):
        ds = store.open_store(straight / f"results/data/{CELL}/{name}.zarr", load=False)
        assert ds.attrs["seed_job"] == job_seed("data", "gmm", 4, 0)


@pytest.mark.slow
def test_corrupted_training_set_error_in_snakemake_output(second, tmp_path):
    """The job that reads a broken training set fails; Snakemake's output names the store and
    the fix, in one traceback (not a chain through zarr's internals)."""
    workdir = tmp_path / "run"
    shutil.copytree(second, workdir, symlinks=True)
    shutil.copy(second.parent / "cut.yaml", tmp_path / "cut.yaml")
    train_zarr = f"results/data/{CELL}/train.zarr"
    _truncated_chunk(workdir / train_zarr)
    theory = f"results/theory/{CELL}/theory.zarr"

    # `=` forms: these options take several values and would swallow the target. Only mtime
    # triggers reruns, so that a commit to the library meanwhile does not remake the data.
    proc = run(
        workdir, "--forcerun=theory", "--rerun-triggers=mtime", targets=[theory], check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"training set {train_zarr} cannot be read" in out, out
    assert f"corrupted or of another format: {FIX}" in out
    assert "Traceback" in out and out.count("Traceback") == 1, "one traceback, not a chain"


def test_a_job_error_reaches_its_log_file(tmp_path):
    """The error that stops a job is in its `log:` file, not only in snakemake's output."""
    log = tmp_path / "job.log"
    code = (
        "from diffregimes.joblog import Timer, start_log\n"
        f"log = start_log({str(log)!r}, 'demo')\n"
        "with Timer(log, 'work'):\n"
        "    raise ValueError('datasets.x.path: /nowhere does not exist')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    text = log.read_text()
    assert "ValueError: datasets.x.path: /nowhere does not exist" in text
    assert "work: failed after" in text and "done in" not in text
