"""Store faults and bad files: nothing is lost and every error names the file and the fix.

Broken stores and checkpoints, killed and failed writes (full disk, read-only folder, a file
where a folder should be), and the round trip of an intact store (store.write / open_store).
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from model_configs import model_cfg

from diffregimes import data, generate, nets, store, train

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


def test_model_file_records_its_checkpoints_and_refuses_changed_ones(tmp_path):
    """The training axis reads checkpoints through the declared model file: each recorded with
    its digest; a changed or missing checkpoint, or a model file without a record, says to
    retrain instead of measuring another training's weights."""
    torch.manual_seed(0)
    net = nets.build_network(model_cfg(), 4)
    names = {}
    for step in (10, 20):
        names[step] = train.CHECKPOINT.format(step)
        store.save_atomic(
            {"ema": net.state_dict(), "step": torch.tensor(step)}, tmp_path / names[step]
        )
    model = tmp_path / "final.pt"
    record = store.checkpoint_record(tmp_path, names)
    nets.save_trained(model, net.state_dict(), model_cfg(), 4, 20, None, record)
    found = store.recorded_checkpoints(model)
    assert found == {10: tmp_path / names[10], 20: tmp_path / names[20]}
    # a later training of other settings rewrote one checkpoint: refused
    torch.manual_seed(1)
    other = nets.build_network(model_cfg(), 4)
    store.save_atomic({"ema": other.state_dict(), "step": torch.tensor(10)}, tmp_path / names[10])
    with pytest.raises(
        ValueError, match="changed since .*final.pt was written.*rerun its training"
    ):
        store.recorded_checkpoints(model)
    (tmp_path / names[10]).unlink()
    with pytest.raises(FileNotFoundError, match="is gone"):
        store.recorded_checkpoints(model)
    nets.save_trained(model, net.state_dict(), model_cfg(), 4, 20)
    with pytest.raises(ValueError, match="records no training checkpoints"):
        store.recorded_checkpoints(model)
    with pytest.raises(FileNotFoundError, match="missing after training"):
        store.checkpoint_record(tmp_path, names)
