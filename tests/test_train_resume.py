"""Training that survives: a killed run resumes bit for bit (eager and compiled), checkpoints
cross device types, the loss is read once per log window, and compiled and eager training agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from model_configs import model_cfg

from diffregimes import data, nets, store, train

TIME = {"T": 5.0, "t_min": 1e-3, "steps": 150, "spacing": "log_snr", "saved": 76}


def gmm(d, n, sigma, seed=0):
    spec = dict(kind="gmm", mu=1.0, sigma=sigma, direction="ones", test_size=512)
    return data.make_synthetic(spec, "g", d, n, seed)


RESUME_SCRIPT = """
import sys, torch
from diffregimes import nets, train
torch.set_num_threads(1)
cfg, time_cfg, folder = {cfg!r}, {time!r}, sys.argv[1]
torch.manual_seed(0)
data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
train.train(nets.build_network(cfg, 4), data, cfg, time_cfg, 5, folder, "fp")
"""


@pytest.mark.slow
def test_killed_training_resumes_to_identical_weights(tmp_path, caplog):
    cfg = model_cfg(width=64, steps=3000, checkpoints=6, log_every=10)
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(cfg=cfg, time=TIME))
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(folder)])
    first = folder / train.CHECKPOINT.format(train.checkpoint_steps(3000, 6)[2])
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the training subprocess never wrote its third checkpoint"
    for path in folder.glob("checkpoint_step*.pt"):  # only complete files carry the name
        assert int(store.load_checkpoint(path)["step"]) > 0

    def run(where):
        torch.manual_seed(0)
        data_ = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
        return train.train(nets.build_network(cfg, 4), data_, cfg, TIME, 5, where, "fp")

    with caplog.at_level("INFO"):
        resumed = run(folder)
    assert "resuming from checkpoint_step" in caplog.text
    straight = run(tmp_path / "straight")
    assert resumed["step"] == straight["step"] == 3000
    for key, value in straight["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0)
    assert resumed["history"]["step"] == straight["history"]["step"]
    np.testing.assert_allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-12)


def _train_small(folder, steps=40, log_every=10):
    cfg = model_cfg(width=16, steps=steps, checkpoints=2, log_every=log_every)
    torch.manual_seed(0)
    net = nets.build_network(cfg, 3)
    data_ = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    return train.train(net, data_, cfg, TIME, 7, folder, "fp")


@pytest.mark.parametrize("saved_kind", ["cuda", None])
def test_checkpoint_of_another_device_type_resumes_reseeded(tmp_path, caplog, saved_kind):
    """A checkpoint whose generator state is a CUDA generator's (16 bytes: seed and offset,
    with or without the `rng_device` key of newer checkpoints) resumes on the CPU: the
    generator is reseeded from (seed, step), the same way at every resume."""
    _train_small(tmp_path / "full")
    first = train.CHECKPOINT.format(train.checkpoint_steps(40, 2)[0])
    results = []
    for copy_ in ("a", "b"):
        folder = tmp_path / copy_
        folder.mkdir()
        state = store.load_checkpoint(tmp_path / "full" / first)
        state["rng"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
        if saved_kind is None:
            state.pop("rng_device", None)
        else:
            state["rng_device"] = saved_kind
        torch.save(state, folder / first)
        with caplog.at_level("INFO"):
            results.append(_train_small(folder))
        assert "reseeded from (seed 7, step 10)" in caplog.text
    assert results[0]["step"] == 40
    for key, value in results[0]["ema"].items():
        torch.testing.assert_close(results[1]["ema"][key], value, rtol=0, atol=0)


def test_a_checkpoint_of_this_device_type_restores_its_generator(tmp_path, caplog):
    _train_small(tmp_path / "full")
    state = store.load_checkpoint(tmp_path / "full" / train.CHECKPOINT.format(40))
    assert state["rng_device"] == "cpu"
    with caplog.at_level("INFO"):
        _train_small(tmp_path / "full", steps=40)
    assert "reseeded" not in caplog.text


def test_the_loop_reads_the_loss_once_per_log_window(tmp_path, monkeypatch):
    """No float()/item() of the loss per step (on CUDA each waits for the device): the losses
    stay on the device and one copy per log or checkpoint step brings them over; the log still
    holds each window's mean."""
    reads = {"float": 0, "tolist": 0}
    real_float, real_tolist = torch.Tensor.__float__, torch.Tensor.tolist

    def counted_float(self):
        reads["float"] += 1
        return real_float(self)

    def counted_tolist(self):
        reads["tolist"] += 1
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "__float__", counted_float)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    result = _train_small(tmp_path / "a", steps=100)
    flushes = len({10, 100, *range(10, 101, 10)})  # checkpoints at 10 and 100, logs every 10
    assert reads["float"] == 0, reads
    assert reads["tolist"] <= flushes, reads
    monkeypatch.undo()
    # the same run logged at every step: each window's entry is the mean of its steps' losses
    every = _train_small(tmp_path / "b", steps=100, log_every=1)["history"]["loss"]
    means = np.mean(np.reshape(every, (10, 10)), axis=1)
    assert result["history"]["step"] == list(range(10, 101, 10))
    np.testing.assert_allclose(result["history"]["loss"], means, rtol=1e-12)


def test_a_fused_optimiser_state_resumes_with_this_devices_update(tmp_path):
    """A checkpoint from CUDA holds a fused AdamW's groups (fused=True) and device step
    counts: resumed on the CPU, the update stays the CPU's (foreach), so the run is the
    uninterrupted one bit for bit."""
    straight = _train_small(tmp_path / "straight")
    _train_small(tmp_path / "full")
    first = train.CHECKPOINT.format(train.checkpoint_steps(40, 2)[0])
    state = store.load_checkpoint(tmp_path / "full" / first)
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=True, foreach=None)
    folder = tmp_path / "resumed"
    folder.mkdir()
    torch.save(state, folder / first)
    resumed = _train_small(folder)
    for key, value in straight["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0)


# --- the compiled CPU step (train._CompiledCPUStep) ----------------------------------------


def _one_thread(fn):
    """Run fn with one torch thread (as RESUME_SCRIPT does): Inductor's C++ kernels split their
    reductions by thread count, so bitwise comparisons need the same count on both sides."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_compiled_and_eager_training_give_the_same_loss_curve(tmp_path, caplog):
    """The whole compiled step (forward, backward, clip, AdamW, EMA) follows the eager loop.

    Not bitwise: Inductor fuses and reorders the elementwise and reduction sums, so the runs
    part by float32 rounding (~1e-7 relative a step) that training then amplifies slowly:
    measured ≤ 3e-7 relative over 200 steps, ~7e-6 over 1000 (windows of 10 steps). Bound
    1e-5 over 200 steps, 30× the measured difference and 10⁴× below the 20 % the loss falls
    over those steps. The final EMA weights: measured ≤ 1.5e-6 apart (weights of order 0.1);
    bound 1e-5 absolute."""
    train_ds, _ = gmm(8, 512, 0.6)
    a = torch.as_tensor(train_ds["x"].values)
    out = {}
    for compile_ in (False, True):
        cfg = model_cfg(steps=200, log_every=10, checkpoints=2, compile=compile_)
        torch.manual_seed(0)
        with caplog.at_level("INFO"):
            out[compile_] = train.train(
                nets.build_network(cfg, 8), a, cfg, TIME, 3, tmp_path / str(compile_), "fp"
            )
    assert "torch.compile the whole step" in caplog.text
    assert out[True]["compile_s"] > 0 and out[False]["compile_s"] == 0
    eager, compiled = out[False]["history"], out[True]["history"]
    assert compiled["step"] == eager["step"]
    np.testing.assert_allclose(compiled["loss"], eager["loss"], rtol=1e-5, atol=0)
    assert eager["loss"][-1] < 0.9 * eager["loss"][0]  # it trained: the comparison means something
    for key, value in out[False]["ema"].items():
        torch.testing.assert_close(out[True]["ema"][key], value, rtol=1e-4, atol=1e-5)


def test_auto_compiles_on_the_cpu_only_for_long_runs():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not train._compiles("auto", cpu, train.CPU_COMPILE_MIN_STEPS - 1)
    assert train._compiles("auto", cpu, train.CPU_COMPILE_MIN_STEPS)
    assert train._compiles("auto", cuda, 10) and train._compiles(True, cpu, 10)
    assert not train._compiles(False, cuda, 10**7)


@pytest.mark.slow
def test_killed_compiled_training_resumes_to_identical_weights(tmp_path, caplog):
    """RESUME_SCRIPT with compile: true, killed after its third checkpoint and resumed here
    (compiled again, one thread like the script): the same weights, bit for bit, as an
    uninterrupted compiled run, and a rerun of that is bitwise the same too. 1200 steps: the
    kill lands within a poll (20 ms) of the third checkpoint (step 68), long before the end."""
    steps = 1200
    cfg = model_cfg(width=64, steps=steps, checkpoints=6, log_every=10, compile=True)
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(cfg=cfg, time=TIME))
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(folder)])
    first = folder / train.CHECKPOINT.format(train.checkpoint_steps(steps, 6)[2])
    deadline = time.time() + 300  # compiling comes first: ~5 s with Inductor's cache, ~30 cold
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the training subprocess never wrote its third checkpoint"
    assert not (folder / train.CHECKPOINT.format(steps)).exists(), "killed too late to resume"

    def run(where):
        torch.manual_seed(0)
        data_ = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
        net = nets.build_network(cfg, 4)
        return _one_thread(lambda: train.train(net, data_, cfg, TIME, 5, where, "fp"))

    with caplog.at_level("INFO"):
        resumed = run(folder)
    assert "resuming from checkpoint_step" in caplog.text
    assert "torch.compile the whole step" in caplog.text
    straight = run(tmp_path / "straight")
    again = run(tmp_path / "again")
    assert resumed["step"] == straight["step"] == steps
    for key, value in straight["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0)
        torch.testing.assert_close(again["ema"][key], value, rtol=0, atol=0)
    np.testing.assert_allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-12)
