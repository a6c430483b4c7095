"""Learned scores: networks, denoising score matching, checkpoints, the training axis (resume and
compile: test_train_resume.py)."""

from __future__ import annotations

import math
import os
import pickle

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
