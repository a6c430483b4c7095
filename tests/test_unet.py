"""The image U-Net through the path the MLP takes: build_network, denoising score matching on
flattened images (train.train), save_trained/load_trained, LearnedScore, the samplers and the
sampling stage (generate.sample_trajectories)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffregimes import generate, nets, process, samplers, train

TIME = {"T": 5.0, "t_min": 1e-3, "steps": 100, "spacing": "log_snr", "saved": 3}


def unet_cfg(**kw):
    cfg = dict(
        arch="unet",
        widths=[16, 32],
        embedding=16,
        steps=150,
        batch_size=64,
        lr=2e-3,
        weight_decay=0.0,
        warmup=10,
        ema=0.99,
        grad_clip=1.0,
        checkpoints=1,
        log_every=1,  # one history entry per step: the loss curve is compared by its ends
    )
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 16, 16)])
def test_unet_shapes_and_zero_start(shape):
    d = math.prod(shape)
    net = nets.build_network(unet_cfg(widths=[8, 16]), d, shape)
    x, t = torch.randn(5, d), torch.rand(5) + 0.01
    out = net(x, t)
    assert out.shape == (5, d)
    # zero-initialised output conv: ε̂ starts as the N(0, I) answer √Δ_t x
    torch.testing.assert_close(out, torch.sqrt(-torch.expm1(-2 * t))[:, None] * x)
    assert net(x.reshape(5, *shape), t).shape == (5, *shape)  # image-shaped input works too


def test_unet_side_must_halve_at_every_level():
    with pytest.raises(ValueError, match="divisible"):
        nets.build_network(unet_cfg(widths=[8, 8, 8]), 36, (1, 6, 6))  # 6 / 2² is not whole


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net (widths 16, 32) after 150 DSM steps on 64 digits at side 8, centred."""
    datasets = pytest.importorskip("sklearn.datasets")
    x = datasets.load_digits().data.astype(np.float32) / 16
    x = x[np.random.default_rng(0).permutation(len(x))[:64]]
    x = torch.as_tensor(x - x.mean(axis=0))
    torch.manual_seed(0)  # network init
    net = nets.build_network(unet_cfg(), 64, (1, 8, 8))
    result = train.train(net, x, unet_cfg(), TIME, 0, tmp_path_factory.mktemp("unet"), "fp")
    return net, result, x


def test_dsm_training_lowers_the_unet_loss(trained):
    """Mean ε-MSE of the first 20 steps 0.303, of the last 20 0.136 (measured); the bound
    asks for a drop of a third."""
    _, result, _ = trained
    loss = result["history"]["loss"]
    assert len(loss) == 150 and all(map(math.isfinite, loss))
    first, last = np.mean(loss[:20]), np.mean(loss[-20:])
    assert last < first * 2 / 3, (first, last)


def test_trained_unet_samples_and_clones_through_the_sampling_stage(trained, tmp_path):
    net, result, x = trained
    path = tmp_path / "final.pt"
    nets.save_trained(path, result["ema"], unet_cfg(), 64, result["step"], (1, 8, 8))
    score = generate.build_score("learned", None, 2**20, "cpu", model_path=path)
    assert isinstance(score.net, nets.UNet) and score.net.shape == (1, 8, 8)
    net.load_state_dict(result["ema"])
    probe, t = x[:4] + 0.1 * torch.randn(4, 64), 0.3
    torch.testing.assert_close(score(probe, t), nets.LearnedScore(net)(probe, t))

    time_cfg = dict(TIME, steps=60)
    ds = generate.sample_trajectories(
        score,
        64,
        time_cfg,
        {"name": "euler_maruyama", "samples": 64},
        {"times": 3, "pairs": 16, "t_lo": 0.3},
        seed=4,
    )
    assert ds["x"].shape == (64, 3, 64)
    assert ds["x_clone"].shape[1:] == (16, 2, 64)
    assert np.isfinite(ds["x"].values).all() and np.isfinite(ds["x_clone"].values).all()
    # The learned law is narrower than the N(0, I) prior: the data's pixel variance is 0.074
    # and the end points' measured 0.17, against 1 for an untrained network.
    end = ds["x"].isel(time=-1).values
    assert end.var() < 0.5


@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
def test_every_sampler_runs_an_untrained_unet(sampler):
    """An untrained U-Net is exactly the score of N(0, I), s = −x (test_train.py does the same
    for the MLP): every sampler must follow the same path as with s = −x itself, on flattened
    8×8 images, and end near N(0, I): mean 0 within 5 SE, variance 1 within 10 %.

    10 %, not the MLP test's 6 %: on this 100-step grid the samplers' own variance for N(0, I)
    (s = −x, 2·10⁵ draws) is 0.916 for DDPM ancestral (its steps drop the posterior variance
    of x̂₀; 0.96 at 200 steps), 0.961 for DDIM, 1.013 for Euler–Maruyama, 1.001 for Heun and
    DPM-Solver++(2M)."""
    net = nets.build_network(unet_cfg(widths=[8, 16]), 64, (1, 8, 8))
    grid = process.time_grid(TIME["T"], TIME["t_min"], 100)
    ends = []
    for score in (nets.LearnedScore(net), lambda x, t: -x):
        gen = torch.Generator().manual_seed(0)
        x, _ = samplers.sample(score, samplers.prior_sample(256, 64, gen), grid, sampler, gen)
        ends.append(x)
    x = ends[0]
    assert x.shape == (256, 64)
    torch.testing.assert_close(x, ends[1], rtol=1e-4, atol=1e-4)
    assert abs(float(x.mean())) < 5 / math.sqrt(x.numel())
    assert abs(float(x.var()) - 1) < 0.10
