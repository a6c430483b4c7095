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
        process.TimeGrid.from_settings(time_cfg),
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


# --- The DDPM U-Net (Ho et al. 2020; Biroli, Bonnaire, de Bortoli & Mézard 2024) ----------


def n_params(net):
    return sum(p.numel() for p in net.parameters())


PAPER = dict(
    arch="unet",
    widths=[64, 128, 256, 256],  # base 64, multipliers (1, 2, 4, 4)
    embedding=64,
    res_blocks=2,
    attention=[16, 8],  # the two middle resolutions of 32 → 16 → 8 → 4
    dropout=0.1,
)


@pytest.mark.parametrize(
    ("arch", "expected", "rel"),
    [
        # Ho et al.'s CIFAR-10 model (base 128, multipliers (1, 2, 2, 2), attention at 16):
        # 35.7 M in their paper; measured 35,746,307.
        (dict(PAPER, widths=[128, 256, 256, 256], embedding=128, attention=[16]), 35.7e6, 0.01),
        # Biroli et al.'s count is 25.7 M; measured 25,636,483 (−0.25 %). With attention at
        # 16 only it would be 24,318,083 (−5.4 %).
        (PAPER, 25.7e6, 0.05),
    ],
    ids=["ho2020_cifar10", "biroli2024"],
)
def test_ddpm_unet_parameter_count_matches_the_papers(arch, expected, rel):
    net = nets.build_network(arch, 3 * 32 * 32, (3, 32, 32))
    assert isinstance(net, nets.DDPMUNet)
    count = n_params(net)
    assert abs(count / expected - 1) < rel, f"{count:,} parameters, expected {expected:,.0f}"


def test_default_unet_is_the_network_it_always_was():
    """Without res_blocks, attention or dropout, arch 'unet' is the small UNet, with the
    parameter counts measured before DDPMUNet was added."""
    for shape, count in [((3, 32, 32), 386_563), ((1, 8, 8), 385_409)]:
        net = nets.build_network(
            {"arch": "unet", "widths": [32, 64], "embedding": 64}, math.prod(shape), shape
        )
        assert type(net) is nets.UNet and n_params(net) == count
        assert len(net.state_dict()) == 73
    net = nets.build_network(unet_cfg(), 64, (1, 8, 8))
    assert type(net) is nets.UNet and n_params(net) == 96_193
    for key, value in [("res_blocks", 1), ("attention", [4]), ("dropout", 0.0)]:  # any of them
        net = nets.build_network(unet_cfg(**{key: value}), 64, (1, 8, 8))
        assert type(net) is nets.DDPMUNet


def small_ddpm(**kw):
    """Widths 16, 32 with two blocks per level, attention at side 8 and dropout 0.1."""
    return unet_cfg(**{"res_blocks": 2, "attention": [8], "dropout": 0.1, **kw})


def randomise_zero_init(net):
    """The output conv, the blocks' second convs and the attention projections start at zero
    (so ε̂ starts as √Δ_t x and dropout has nothing to drop): give them random weights."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def test_small_ddpm_unet_runs_and_is_deterministic_in_eval_mode():
    shape, d = (3, 16, 16), 3 * 16 * 16
    torch.manual_seed(0)
    net = nets.build_network(small_ddpm(), d, shape)
    assert isinstance(net, nets.DDPMUNet) and net.attention == (8,)
    x, t = torch.randn(4, d), torch.rand(4) + 0.01
    torch.testing.assert_close(net(x, t), nets.gaussian_eps(x, t))  # zero start, as UNet
    randomise_zero_init(net)
    images = x.reshape(4, *shape)
    assert net(images, t).shape == images.shape
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, net(x, t))  # training mode: dropout is on
    net.eval()
    with torch.no_grad():
        first = net(x, t)
        torch.testing.assert_close(net(x, t), first, rtol=0, atol=0)
    assert not torch.allclose(first, nets.gaussian_eps(x, t))


def test_ddpm_unet_save_load_round_trip(tmp_path):
    shape, d = (3, 16, 16), 3 * 16 * 16
    cfg = small_ddpm()
    net = randomise_zero_init(nets.build_network(cfg, d, shape)).eval()
    path = tmp_path / "final.pt"
    nets.save_trained(path, net.state_dict(), cfg, d, 7, shape)
    back = nets.load_trained(path)
    assert isinstance(back, nets.DDPMUNet) and not back.training
    assert back.attention == (8,) and back.shape == shape
    assert all(m.dropout.p == 0.1 for m in back.modules() if isinstance(m, nets.DDPMResBlock))
    x, t = torch.randn(4, d), torch.rand(4) + 0.01
    with torch.no_grad():
        torch.testing.assert_close(back(x, t), net(x, t), rtol=0, atol=0)


def test_ddpm_unet_refuses_attention_at_a_missing_resolution():
    with pytest.raises(ValueError, match=r"attention at sides \[12\]"):
        nets.build_network(small_ddpm(attention=[12]), 256, (1, 16, 16))
    with pytest.raises(ValueError, match="res_blocks"):
        nets.build_network(small_ddpm(res_blocks=0), 256, (1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        nets.build_network(small_ddpm(widths=[16, 16, 16]), 36, (1, 6, 6))
