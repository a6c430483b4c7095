"""Learned scores: networks, denoising score matching, checkpoints, resume, the training axis."""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from model_configs import model_cfg

from diffregimes import data, generate, metrics, nets, process, samplers, store, train
from diffregimes.neighbours import nearest
from diffregimes.training_axis import evaluated_steps, score_errors, tau_mem

TIME = {"T": 5.0, "t_min": 1e-3, "steps": 150, "spacing": "log_snr", "saved": 76}


def gmm(d, n, sigma, seed=0, test_size=512):
    spec = dict(kind="gmm", mu=1.0, sigma=sigma, direction="ones", test_size=test_size)
    return data.make_synthetic(spec, "g", d, n, seed)


def test_networks_shapes_and_zero_start():
    x, t = torch.randn(5, 12), torch.rand(5) + 0.01
    mlp = nets.build_network(model_cfg(), 12)
    assert mlp(x, t).shape == (5, 12)
    # zero-initialised correction: ε̂ starts as the N(0, I) answer √Δ_t x
    torch.testing.assert_close(mlp(x, t), torch.sqrt(-torch.expm1(-2 * t))[:, None] * x)
    unet = nets.build_network({"arch": "unet", "widths": [8, 16], "embedding": 16}, 64, (1, 8, 8))
    assert unet(torch.randn(3, 64), torch.rand(3) + 0.01).shape == (3, 64)
    with pytest.raises(ValueError, match="image data"):
        nets.build_network({"arch": "unet", "widths": [8], "embedding": 16}, 64)


def test_checkpoint_grid_is_log_spaced_with_last():
    steps = train.checkpoint_steps(3000, 6)
    assert steps[-1] == 3000 and steps == sorted(set(steps))
    ratios = np.diff(np.log(steps))
    assert np.allclose(ratios, ratios.mean(), rtol=0.1)
    assert evaluated_steps({"steps": 3000, "checkpoints": 6}, 3)[-1] == 3000


def test_tau_mem_interpolates_in_log_step():
    assert tau_mem([10, 100, 1000], [0.0, 0.0, 0.5], 0.1)[0] == pytest.approx(100 * 10**0.2)
    assert tau_mem([10, 100], [0.2, 0.9], 0.1)[0] == 10
    tau, lo, hi, censored = tau_mem([10, 100], [0.0, 0.05], 0.1)
    assert math.isnan(tau) and censored and lo == 100 and hi == math.inf  # "> last step"


def test_tau_mem_interval_from_the_f_mem_intervals():
    steps = [10, 100, 1000, 10000]
    f = np.array([0.0, 0.05, 0.3, 0.6])
    lo_f, hi_f = f - 0.05, f + 0.1  # the upper bounds reach 0.1 first, the lower ones last
    tau, lo, hi, censored = tau_mem(steps, f, 0.1, lo_f, hi_f)
    assert not censored and lo < tau < hi
    assert lo == 10.0  # hi_f = 0.1 reaches the level at the first step
    assert hi == pytest.approx(100 * 10**0.4)  # lo_f: 0 at 100, 0.25 at 1000 → 0.1 at w = 0.4
    # the lower bounds never reach the level: the late end is open
    assert tau_mem(steps, f, 0.1, np.zeros(4), hi_f)[2] == math.inf


def test_ema_warm_up_forgets_the_initial_network(tmp_path):
    """SCIENCE.md §5: with ema = 0.9999 a constant decay keeps the average 99 % the initial
    network at step 100; with the warm-up min(ema, (1 + k)/(10 + k)) it has moved with the
    raw weights (here: closer to the raw weights than to the initial ones)."""
    assert train.ema_decay(0.9999, 0) == pytest.approx(0.1)
    assert train.ema_decay(0.9999, 90) == pytest.approx(91 / 100)
    assert train.ema_decay(0.995, 10**6) == 0.995
    train_ds, _ = gmm(4, 64, 0.6)
    net = nets.build_network(model_cfg(), 4)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = model_cfg(steps=100, ema=0.9999, checkpoints=2)
    result = train.train(net, torch.as_tensor(train_ds["x"].values), cfg, TIME, 1, tmp_path, "fp")
    raw = net.state_dict()
    to_init = sum(float((result["ema"][k] - init[k]).pow(2).sum()) for k in init)
    to_raw = sum(float((result["ema"][k] - raw[k]).pow(2).sum()) for k in init)
    assert to_init > 0 and to_raw < to_init, (to_raw, to_init)


@pytest.mark.slow
def test_training_on_many_points_learns_the_population_score(tmp_path):
    """d = 2, σ = 0.6, n = 8192: the learned score approaches the GMM score at moderate t.

    Error in ε units, Δ_t · mean ‖s_θ − s‖²/d (the population score itself has
    Δ_t ‖s‖²/d ≈ 0.5–0.9 there). Measured 0.002, 0.0015, 0.0006 at t = 0.1, 0.3, 0.6 after
    1000–1500 steps; bound 0.01, 5× the worst."""
    train_ds, test_ds = gmm(2, 8192, 0.6)
    net = nets.build_network(model_cfg(), 2)
    result = train.train(
        net, torch.as_tensor(train_ds["x"].values), model_cfg(steps=1200), TIME, 1, tmp_path, "fp"
    )
    net.load_state_dict(result["ema"])
    pop = generate.build_score("population", train_ds, 2**24, "cpu")
    test_x = torch.as_tensor(test_ds["x"].values)
    times = [0.1, 0.3, 0.6]
    err = score_errors(nets.LearnedScore(net), [pop] * 3, test_x, times, torch.Generator())
    assert np.all(err < 0.01), err
    assert result["history"]["loss"][-1] < result["history"]["loss"][0]


@pytest.mark.slow
def test_long_training_on_few_points_memorises(tmp_path):
    """n = 8 points in d = 8: the network reproduces training points (f_mem measured 0.996)."""
    train_ds, _ = gmm(8, 8, 0.6)
    a = torch.as_tensor(train_ds["x"].values)
    net = nets.build_network(model_cfg(), 8)
    result = train.train(net, a, model_cfg(steps=2000), TIME, 2, tmp_path, "fp")
    net.load_state_dict(result["ema"])
    gen = torch.Generator().manual_seed(3)
    grid = process.time_grid(TIME["T"], TIME["t_min"], TIME["steps"])
    x, _ = samplers.sample(
        nets.LearnedScore(net), samplers.prior_sample(256, 8, gen), grid, "euler_maruyama", gen
    )
    dist, _ = nearest(x, a, k=2)
    f_mem, _, _ = metrics.memorised_fraction(dist[:, 0] / dist[:, 1], 1 / 3)
    assert f_mem > 0.9


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


def test_checkpoint_that_is_not_a_tensor_file_is_refused(tmp_path):
    text = tmp_path / "checkpoint_step00000010.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(OSError, match=str(text)):
        store.load_checkpoint(text)
    pickled = tmp_path / "evil.pt"
    with open(pickled, "wb") as f:
        pickle.dump({"payload": os.getcwd}, f)  # arbitrary objects are refused (weights_only)
    with pytest.raises(OSError, match="evil.pt"):
        store.load_checkpoint(pickled)


def test_stale_checkpoints_of_other_settings_are_not_resumed(tmp_path, caplog):
    data_ = torch.randn(32, 3)
    cfg = model_cfg(width=16, steps=40, checkpoints=2)
    train.train(nets.build_network(cfg, 3), data_, cfg, TIME, 0, tmp_path, "old-settings")
    with caplog.at_level("INFO"):
        train.train(nets.build_network(cfg, 3), data_, cfg, TIME, 0, tmp_path, "new-settings")
    assert "written with other settings or code" in caplog.text
    assert "training from scratch" in caplog.text


class _Exploding(torch.nn.Module):
    """A network whose output turns NaN after a few calls."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        out = self.lin(x)
        return out * float("nan") if self.calls > 7 else out


def test_nan_loss_stops_with_step_and_last_finite_loss(tmp_path):
    cfg = model_cfg(steps=50, checkpoints=2)
    with pytest.raises(FloatingPointError, match=r"at step 8 \(last finite loss [0-9.]+"):
        train.train(_Exploding(), torch.randn(32, 3), cfg, TIME, 0, tmp_path, "fp")


def test_learned_score_is_minus_eps_over_sqrt_delta():
    net = nets.build_network(model_cfg(width=16), 3)
    x, t = torch.randn(4, 3), 0.4
    eps = net(x, torch.full((4,), t))
    s = nets.LearnedScore(net)(x, t)
    torch.testing.assert_close(s, -eps / math.sqrt(-math.expm1(-2 * t)))


def test_final_model_round_trip(tmp_path):
    cfg = model_cfg(width=16)
    net = nets.build_network(cfg, 3)
    nets.save_trained(tmp_path / "final.pt", net.state_dict(), cfg, 3, 10)
    back = nets.load_trained(tmp_path / "final.pt")
    x, t = torch.randn(4, 3), torch.full((4,), 0.3)
    torch.testing.assert_close(back(x, t), net(x, t))


def test_training_log_store(tmp_path):
    cfg = model_cfg(width=16, steps=60, checkpoints=2, log_every=20)
    result = train.train(
        nets.build_network(cfg, 3), torch.randn(32, 3), cfg, TIME, 0, tmp_path, "fp"
    )
    ds = train.history_dataset(result["history"])
    assert list(ds["step"].values) == [20, 40, 60]
    assert {"loss", "lr", "steps_per_s"} <= set(ds)
    store.write(ds, tmp_path / "train_log.zarr")
    assert store.open_store(tmp_path / "train_log.zarr")["loss"].dims == ("step",)


@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
def test_every_sampler_runs_a_learned_score(sampler):
    """An untrained network is exactly the score of N(0, I) (ε̂ = √Δ_t x, zero correction),
    so every sampler must return N(0, I) samples: mean 0 and variance 1 per coordinate
    within 5 SE (mean) and 6 % (variance; 2000 × 6 values, discretisation < 3 %)."""
    net = nets.build_network(model_cfg(width=16), 6)
    gen = torch.Generator().manual_seed(0)
    grid = process.time_grid(TIME["T"], TIME["t_min"], 100)
    x, _ = samplers.sample(
        nets.LearnedScore(net), samplers.prior_sample(2000, 6, gen), grid, sampler, gen
    )
    assert abs(float(x.mean())) < 5 / math.sqrt(x.numel())
    assert abs(float(x.var()) - 1) < 0.06


def test_score_errors_draw_the_noise_on_the_inputs_device(monkeypatch):
    """The held-out points' noise comes from the generator on their own device (a CUDA
    generator with CPU noise, or the reverse, fails): torch.randn gets the inputs' device."""
    seen = []
    real = torch.randn

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", spy)
    x = torch.zeros(4, 2)
    zero = lambda y, t: torch.zeros_like(y)  # noqa: E731
    score_errors(zero, [zero, zero], x, [0.1, 0.5], torch.Generator().manual_seed(0))
    assert seen == [x.device, x.device]


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
    uninterrupted compiled run, and a rerun of that is bitwise the same too."""
    cfg = model_cfg(width=64, steps=3000, checkpoints=6, log_every=10, compile=True)
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(cfg=cfg, time=TIME))
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(folder)])
    first = folder / train.CHECKPOINT.format(train.checkpoint_steps(3000, 6)[2])
    deadline = time.time() + 300  # compiling comes first: ~5 s with Inductor's cache, ~30 cold
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the training subprocess never wrote its third checkpoint"
    assert not (folder / train.CHECKPOINT.format(3000)).exists(), "killed too late to resume"

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
    assert resumed["step"] == straight["step"] == 3000
    for key, value in straight["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0)
        torch.testing.assert_close(again["ema"][key], value, rtol=0, atol=0)
    np.testing.assert_allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-12)
