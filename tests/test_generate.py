"""The sampling stage (`diffregimes.generate`): the trajectory store of a run and its clones."""

from __future__ import annotations

import numpy as np
import torch

from diffregimes import generate
from diffregimes.process import TimeGrid
from diffregimes.samplers import denoised
from diffregimes.scores import GMMScore


def test_sample_trajectories_with_more_clone_pairs_than_samples():
    """Clone parents are the first `pairs` trajectories of a main run of max(samples, pairs);
    the store keeps `samples` of them in full, and x̂₀ of every end state."""
    d = 3
    score = GMMScore(torch.full((d,), 1.5), 0.7)
    time_cfg = {"T": 3.0, "t_min": 1e-3, "steps": 20, "spacing": "log_snr", "saved": 5}
    ds = generate.sample_trajectories(
        score,
        d,
        TimeGrid.from_settings(time_cfg),
        {"name": "euler_maruyama", "samples": 6},
        {"times": 3, "pairs": 10, "t_lo": 0.1},
        seed=0,
    )
    assert ds.sizes["sample"] == 6 and ds.sizes["pair"] == 10
    assert ds["x"].shape == (6, 5, d) and ds["x_hat"].shape == (6, d)
    assert ds["x_hat_clone"].shape == ds["x_clone"].shape == (3, 10, 2, d)
    # x̂₀ is Tweedie's estimate of the stored end state
    t_min = float(ds.time[-1])
    end = torch.as_tensor(ds["x"].values[:, -1])
    expected = denoised(score, end, t_min)
    np.testing.assert_allclose(ds["x_hat"].values, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_the_trajectory_store_holds_copies_not_views_of_the_batch():
    """What sample_trajectories keeps of a large batch (the first `samples` states, the stored
    pairs' clone ends) must not hold the batch alive: each kept array owns only its rows."""
    d, pairs = 16, 200
    score = GMMScore(torch.ones(d), 1.0)
    time_cfg = {"T": 2.0, "t_min": 0.01, "steps": 20, "spacing": "linear", "saved": 5}
    clone_cfg = {"times": 3, "pairs": pairs, "t_lo": 0.5, "stored_pairs": 4}
    seen = []
    real = generate._kept

    def spy(x):
        out = real(x)
        seen.append(out)
        return out

    generate._kept = spy
    try:
        generate.sample_trajectories(
            score,
            d,
            TimeGrid.from_settings(time_cfg),
            {"name": "euler_maruyama", "samples": 8},
            clone_cfg,
            seed=0,
        )
    finally:
        generate._kept = real
    assert seen
    for kept in seen:
        assert kept.untyped_storage().nbytes() == kept.numel() * 4, kept.shape


def test_the_memory_budget_changes_no_clone():
    """`budget_bytes` sizes the clones' waves (here one branch time a wave against all in one);
    every stored number is the same to the round-off of a batched score: a memory setting must
    not change a result."""
    d = 8
    score = GMMScore(torch.full((d,), 1.2), 0.9)
    time_cfg = {"T": 3.0, "t_min": 1e-3, "steps": 30, "spacing": "log_snr", "saved": 4}

    def run(budget):
        return generate.sample_trajectories(
            score,
            d,
            TimeGrid.from_settings(time_cfg),
            {"name": "euler_maruyama", "samples": 6},
            {"times": 4, "pairs": 16, "t_lo": 0.1},
            seed=3,
            budget_bytes=budget,
        )

    small, large = run(1), run(2**28)  # waves of one branch's 16 rows; one wave of 64
    for name in ("x", "x_hat", "x_clone", "x_hat_clone"):
        np.testing.assert_allclose(small[name].values, large[name].values, rtol=1e-5, atol=1e-5)
