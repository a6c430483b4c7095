"""Faults and bad input: nothing is lost and every error names the file and the fix.

Library level (seconds): broken stores and checkpoints, killed and failed writes (full disk,
read-only folder, a file where a folder should be), NaN/inf in a score or a sample.

Workflow level (`slow`, about three minutes on two loaded cores): a cut of tests/config/tiny.yaml
(one GMM cell, the empirical score and a learned one with more training and time steps) run by
`snakemake` in temporary directories, two uninterrupted runs in the background while a third
(the learned score only) is killed and rerun:

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
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import xarray as xr
import yaml
from model_configs import model_cfg
from workflow_helpers import SNAKEMAKE, TINY

from diffregimes import data, generate, nets, process, samplers, store, train
from diffregimes.scores import EmpiricalScore
from diffregimes.seeds import job_seed

FIX = "delete it and rerun snakemake"


def gmm_sets():
    spec = dict(kind="gmm", mu=1.0, sigma=0.7, direction="ones", test_size=32)
    return data.make_synthetic(spec, "gmm", 4, 16, 0)


@pytest.fixture
def train_store(tmp_path):
    path = tmp_path / "results" / "data" / "train.zarr"
    store.write(gmm_sets()[0], path)
    return path


# --- broken stores ----------------------------------------------------------------------------


def _no_root_metadata(path):
    (path / "zarr.json").unlink()


def _truncated_chunk(path):
    chunk = path / "x" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])


def _deleted_chunk(path):  # zarr alone would read it as NaN without a word
    (path / "x" / "c" / "0" / "0").unlink()


def _garbage_instead_of_store(path):
    shutil.rmtree(path)
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def _garbage_metadata(path):
    (path / "zarr.json").write_bytes(np.random.default_rng(0).bytes(300))


def _another_format(path):  # a valid store, but not a training set
    shutil.rmtree(path)
    store.write(xr.Dataset({"loss": ("step", np.ones(3))}), path)


@pytest.mark.parametrize(
    "damage",
    [
        _no_root_metadata,
        _truncated_chunk,
        _deleted_chunk,
        _garbage_instead_of_store,
        _garbage_metadata,
        _another_format,
    ],
)
def test_broken_training_set_is_refused_with_its_path_and_the_fix(train_store, damage):
    damage(train_store)
    with pytest.raises(OSError) as err:
        store.open_store(train_store, "training set", require=("x",))
    message = str(err.value)
    assert message.startswith(f"training set {train_store} cannot be read"), message
    assert FIX in message
    assert err.value.__cause__ is None  # the message says it all; no page of zarr internals


def test_missing_store_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"training set {tmp_path}/none.zarr does not "):
        store.open_store(tmp_path / "none.zarr", "training set")


def test_intact_store_round_trips_with_empty_chunks(tmp_path):
    """All-NaN and all-zero variables (chunks zarr would skip) still count as complete."""
    ds = xr.Dataset({"nan": ("i", np.full(5, np.nan)), "zero": ("i", np.zeros(5)), "s": 1.0})
    store.write(ds, tmp_path / "s.zarr")
    xr.testing.assert_identical(store.open_store(tmp_path / "s.zarr"), ds)


# --- checkpoints (a text file as a checkpoint: tests/test_train.py) ----------------------------


def _tiny_model():
    return model_cfg(
        width=8,
        depth=1,
        embedding=8,
        steps=20,
        batch_size=8,
        lr=1e-3,
        warmup=1,
        ema=0.9,
        checkpoints=2,
        log_every=10,
    )


def test_broken_checkpoint_stops_resume_with_its_name(tmp_path):
    cfg, time_cfg, x = _tiny_model(), {"T": 4.0, "t_min": 1e-3}, torch.randn(16, 3)
    train.train(nets.build_network(cfg, 3), x, cfg, time_cfg, 0, tmp_path, "fp")
    newest = tmp_path / train.CHECKPOINT.format(20)
    newest.write_bytes(newest.read_bytes()[:300])  # a truncated torch file
    with pytest.raises(OSError, match=f"checkpoint {newest} is not a tensor checkpoint") as err:
        train.train(nets.build_network(cfg, 3), x, cfg, time_cfg, 0, tmp_path, "fp")
    assert FIX in str(err.value)


def test_broken_or_missing_final_model(tmp_path, train_store):
    final = tmp_path / "final.pt"
    final.write_bytes(b"\x00" * 100)
    with pytest.raises(OSError, match=f"checkpoint {final} is not a tensor checkpoint") as err:
        generate.build_score("mlp", store.open_store(train_store), 2**20, "cpu", model_path=final)
    assert FIX in str(err.value)
    final.unlink()
    with pytest.raises(FileNotFoundError, match=f"checkpoint {final} does not exist"):
        nets.load_trained(final)


# --- killed and failed writes -----------------------------------------------------------------

KILLED_WRITE = """
import os, signal, sys
import numpy as np, xarray as xr, zarr.storage
from diffregimes import store

when, path = sys.argv[1], sys.argv[2]
if when == "before_rename":
    store._replace = lambda tmp, target: os.kill(os.getpid(), signal.SIGKILL)
else:  # right after the first chunk file
    original = zarr.storage.LocalStore.set

    async def set_and_die(self, key, value):
        await original(self, key, value)
        if "/c/" in key:
            os.kill(os.getpid(), signal.SIGKILL)

    zarr.storage.LocalStore.set = set_and_die
store.write(xr.Dataset({"x": ("i", np.full(1000, 2.0)), "y": ("i", np.ones(1000))}), path)
"""


@pytest.mark.parametrize("when", ["mid_write", "before_rename"])
def test_killed_write_leaves_the_finished_store_and_no_half_one(tmp_path, when):
    target = tmp_path / "m.zarr"
    old = xr.Dataset({"x": ("i", np.arange(1000.0))})
    store.write(old, target)
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, when, str(target)])
    assert proc.returncode == -signal.SIGKILL
    partial = sorted(p.name for p in tmp_path.iterdir() if p.name != "m.zarr")
    assert len(partial) == 1 and partial[0].startswith(".m.zarr.partial-"), partial
    xr.testing.assert_identical(store.open_store(target), old)  # untouched
    store.write(old * 3, target)  # the next write of the target clears what the kill left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


FAILED_WRITE = """
import os, sys
import numpy as np, torch, xarray as xr
from diffregimes import store

data = np.random.default_rng(0).random(4000)  # 32 kB that do not compress
if len(sys.argv) > 3:  # as root: drop to nobody, after the imports (/root/.pyenv is 0700)
    os.setgid(int(sys.argv[3]))
    os.setuid(int(sys.argv[3]))
for write in (
    lambda: store.write(xr.Dataset({"x": ("i", data)}), sys.argv[1]),
    lambda: store.save_atomic({"w": torch.from_numpy(data)}, sys.argv[2]),
):
    try:
        write()
        print("WROTE")
    except OSError as err:
        print(err)
"""


def _finished(folder: Path):
    """A finished store and checkpoint in `folder`, and a snapshot of every file's bytes."""
    store.write(xr.Dataset({"x": ("i", np.arange(4000.0))}), folder / "m.zarr")
    store.save_atomic({"w": torch.arange(4000.0)}, folder / "final.pt")
    return _snapshot(folder)


def _snapshot(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_failed_writes(out: str, folder: Path, before):
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "WROTE" not in out, out
    names = (f"the store {folder / 'm.zarr'}", str(folder / "final.pt"))
    for line, name in zip(lines, names, strict=True):
        assert line.startswith(f"could not write {name}: "), line
        assert f"Check that {folder} is a writable folder" in line and "rerun snakemake" in line
    assert _snapshot(folder) == before  # earlier results unchanged, no partial files left


def test_full_disk_fails_with_the_path_and_keeps_earlier_results(tmp_path):
    """A disk that fills up mid-write, as root too: RLIMIT_FSIZE makes every write past 2 kB
    fail with EFBIG ("File too large"), as ENOSPC would (Python ignores SIGXFSZ)."""
    before = _finished(tmp_path)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, "-c", FAILED_WRITE, str(tmp_path / "m.zarr"), str(tmp_path / "final.pt")],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert proc.returncode == 0, proc.stderr
    assert "File too large" in proc.stdout
    _assert_failed_writes(proc.stdout, tmp_path, before)


def test_read_only_folder_fails_with_the_path_and_keeps_earlier_results():
    """`chmod a-w` on the results folder. Root writes there regardless, so as root the writer
    drops to the user `nobody` first (in a folder under /tmp that `nobody` can traverse)."""
    as_user = []
    if os.geteuid() == 0:
        try:
            as_user = [str(pwd.getpwnam("nobody").pw_uid)]
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to drop to")
    base = Path(tempfile.mkdtemp(prefix="diffregimes-readonly-"))
    folder = base / "results"
    try:
        base.chmod(0o755)
        folder.mkdir()
        before = _finished(folder)
        folder.chmod(0o555)
        cmd = [sys.executable, "-c", FAILED_WRITE, str(folder / "m.zarr"), str(folder / "final.pt")]
        proc = subprocess.run([*cmd, *as_user], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "Permission denied" in proc.stdout
        _assert_failed_writes(proc.stdout, folder, before)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(base)


def test_file_in_place_of_the_results_folder(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(OSError, match=f"could not write the store {tmp_path}/results/m.zarr: "):
        store.write(xr.Dataset({"x": ("i", np.zeros(3))}), tmp_path / "results" / "m.zarr")


# --- NaN and inf --------------------------------------------------------------------------------

GRID = [float(t) for t in process.time_grid(4.0, 1e-3, 100)]


def _breaks_below(t_bad: float, value: float = float("nan")):
    def score(x, t):
        return torch.full_like(x, value) if t < t_bad else -x

    return score


@pytest.mark.parametrize("check_every", [1, 8, 32, None])
@pytest.mark.parametrize("sampler", ["euler_maruyama", "dpm_solver_2m"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_score_stops_at_its_exact_step(check_every, sampler, value):
    """The state is tested every `check_every` steps; a failed test replays from the last
    finite state, so the error names the first bad step whatever the interval."""
    k = 37  # the first step whose score is not finite: at t = GRID[37]
    score = _breaks_below((GRID[k - 1] + GRID[k]) / 2, value)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    expect = f"at step {k + 1} of 100 (t = {GRID[k]:.6g} → {GRID[k + 1]:.6g})"
    with pytest.raises(
        FloatingPointError, match=re.escape(f"sampler '{sampler}' produced NaN/inf {expect}")
    ):
        samplers.sample(score, x, GRID, sampler, torch.Generator(), check_every=check_every)


def test_tested_runs_draw_the_same_numbers():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    ends = [
        samplers.sample(
            lambda y, t: -y, x, GRID, "euler_maruyama", torch.Generator(), None, None, c
        )
        for c in (1, 8, 1000)
    ]
    for end, _ in ends[1:]:
        torch.testing.assert_close(end, ends[0][0], rtol=0, atol=0)


def test_nan_in_a_clone_run_names_the_branch_time():
    """Clone runs have their own batch (2 × pairs): poison only those below t = 0.5."""

    def score(x, t):
        return torch.full_like(x, float("nan")) if len(x) == 8 and t < 0.5 else -x

    time_cfg = {"T": 4.0, "t_min": 1e-3, "steps": 40, "saved": 10, "spacing": "log_snr"}
    clone_cfg = {"times": 3, "pairs": 4, "t_lo": 0.05}
    with pytest.raises(FloatingPointError, match=r"at step \d+ of \d+ \(t = 0\.4.* in the clones "):
        generate.sample_trajectories(
            score, 3, time_cfg, {"name": "euler_maruyama", "samples": 16}, clone_cfg, 0
        )


def test_nan_test_costs_under_2_percent_of_a_sampling_step():
    """The smallest job of tests/config/tiny.yaml (d = 4, n = 16, 32 samples, empirical
    score), where a step is cheapest: one test (a float64 sum and the generator state) every
    8 steps. Measured 0.6 µs a step against 130–170 µs a step (0.4 %)."""
    gen = torch.Generator().manual_seed(0)
    score = EmpiricalScore(torch.randn(16, 4, generator=gen), 2**20)
    x = torch.randn(32, 4, generator=gen)

    def median_us(f, reps):
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return 1e6 * float(np.median(times))

    def one_step():
        samplers.euler_maruyama(score, x, 0.5, 0.49, gen, None, False)

    def one_test():
        samplers._is_finite(x)
        gen.get_state()

    step_us, test_us = median_us(one_step, 2000), median_us(one_test, 2000)
    print(f"sampling step {step_us:.1f} µs, NaN test {test_us:.2f} µs every 8 steps")
    assert test_us / 8 < 0.02 * step_us


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
    cfg = ["--configfile", str(workdir.parent / "cut.yaml")]
    return [*SNAKEMAKE, *args, *targets, "--directory", str(workdir), "--cores", "2", *cfg]


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
