"""Forward–backward probes (SCIENCE.md §8) against their closed forms, σ = 1.5 ≠ 1.

For an exact score the backward run from x_t samples P(x₀ | x_t), as the start itself does, so
class retention is the cloning φ(t) (for the GMM's population score theory.phi_gmm_time) and
identity retention of training points under the empirical score is E Σ_μ w_μ(x_t)², the
probability that two posterior draws pick the same training point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffregimes import data, generate, metrics, probes, process, theory

pytestmark = pytest.mark.slow

SIGMA, D = 1.5, 16
GRID = process.time_grid(6.0, 1e-3, 200, "log_snr")
PHI_DISCRETISATION_SLACK = 0.006  # Euler–Maruyama's φ bias on 200 steps (test_physics.py)


def _gmm(n, test_size, seed=0):
    spec = {"kind": "gmm", "mu": 1.0, "sigma": SIGMA, "direction": "ones", "test_size": test_size}
    train, test = data.make_synthetic(spec, "g", D, n, seed)
    x = [torch.as_tensor(s["x"].values, dtype=torch.float32) for s in (train, test)]
    classify = generate.gmm_classifier(torch.as_tensor(train["m"].values, dtype=torch.float32))
    return train, x[0], x[1], classify


def _probe(score_name, n, test_size, points, seed=1):
    train, a, b, classify = _gmm(n, test_size)
    score = generate.build_score(score_name, train, 2**24, "cpu")
    cfg = {"points": points, "times": 10, "t_lo": 0.02}
    store = probes.probe_store(score, a, b, GRID, cfg, "euler_maruyama", seed, 2**24, classify)
    out = probes.probe_metrics(store, n, 0.5, theory.PHI_AT_SPECIATION, 200, 0)
    return train, store, out


def test_class_retention_of_the_population_score_is_the_cloning_phi():
    """2048 held-out points: class retention within 4 binomial SE (+ the sampler's φ bias) of
    φ_GMM(t) at every probe time, ½ at t = T, and t_S_probe within 3 SE of the exact crossing."""
    train, store, out = _probe("population", 64, 2048, 2048)
    t = store.probe_time.values
    mu_sq = float((train["m"].values ** 2).sum())
    phi = theory.phi_gmm_time(t, mu_sq, SIGMA)
    kept = out.probe_class_retention.sel(origin="held_out").values
    se = np.sqrt(phi * (1 - phi) / 2048)
    bad = np.abs(kept - phi) > 4 * se + PHI_DISCRETISATION_SLACK
    assert not bad.any(), list(zip(t[bad], kept[bad], phi[bad], strict=True))
    assert phi.max() > 0.99 and phi.min() < 0.51  # both limits are probed
    t_s, t_s_se = float(out.t_S_probe), float(out.t_S_probe_se)
    assert abs(t_s - theory.speciation_time_gmm(mu_sq, SIGMA)) < 3 * t_s_se and t_s_se < 0.1
    assert float(out.probe_class_chance) == 0.5


def test_identity_retention_of_the_empirical_score_is_the_posterior_collision_probability():
    """256 training points: identity retention within 4 binomial SE (+ 0.02 for the sampler)
    of E Σ_μ w_μ(x_t)² (Monte Carlo, 4096 draws of (μ, z)); → 1 as t → 0 and → chance 1/n for
    t ≫ t_C; class retention of the training points is E Σ_c P(c | x_t)², the empirical
    measure's φ(t), and → Σ p_c² = ½ at t = T; t_C_probe lies where E Σ w² = ½."""
    n = 256
    train, store, out = _probe("empirical", n, 64, n)
    a = torch.as_tensor(train["x"].values, dtype=torch.float64)
    t = store.probe_time.values
    g = torch.Generator().manual_seed(3)
    plus = a @ torch.as_tensor(train["m"].values, dtype=torch.float64) > 0  # sign classes
    collision, same_class = [], []
    for tk in t:
        mu = torch.randint(0, n, (4096,), generator=g)
        x = a[mu] * math.exp(-tk) + math.sqrt(process.delta(float(tk))) * torch.randn(
            4096, D, generator=g, dtype=torch.float64
        )
        logits = -(torch.cdist(x, a * math.exp(-tk)) ** 2) / (2 * process.delta(float(tk)))
        w = torch.softmax(logits, 1)
        collision.append(float((w**2).sum(1).mean()))
        p_plus = w[:, plus].sum(1)  # the posterior class of x_t
        same_class.append(float((p_plus**2 + (1 - p_plus) ** 2).mean()))
    collision, same_class = np.array(collision), np.array(same_class)
    kept = out.probe_identity_retention.sel(origin="train").values
    se = np.sqrt(collision * (1 - collision) / n) + 1 / n
    bad = np.abs(kept - collision) > 4 * se + 0.02
    assert not bad.any(), list(zip(t[bad], kept[bad], collision[bad], strict=True))
    assert kept[np.argmin(t)] == 1.0
    k_large = np.argmax(t)
    low, high = metrics.binomial_interval(int(round(kept[k_large] * n)), n, 0.999)
    assert low <= 1 / n <= high  # chance
    kept_class = out.probe_class_retention.sel(origin="train").values
    assert abs(kept_class[k_large] - 0.5) < 4 * math.sqrt(0.25 / n)
    # class retention of training points is the empirical measure's own φ(t) = E Σ_c P(c|x_t)²
    se_class = np.sqrt(same_class * (1 - same_class) / n) + 1 / n
    bad = np.abs(kept_class - same_class) > 4 * se_class + 0.02
    assert not bad.any(), list(zip(t[bad], kept_class[bad], same_class[bad], strict=True))
    assert np.isfinite(float(out.t_S_probe_train)) and float(out.t_S_probe_train_se) > 0
    t_half = theory.crossing_time(t, -collision, -0.5)
    assert abs(float(out.t_C_probe) - t_half) < 3 * float(out.t_C_probe_se) + 0.05


def test_probes_need_a_stochastic_sampler_and_pad_a_small_training_set():
    train, a, b, classify = _gmm(8, 32)
    score = generate.build_score("empirical", train, 2**24, "cpu")
    cfg = {"points": 16, "times": 3, "t_lo": 0.05}
    with pytest.raises(ValueError, match="stochastic"):
        probes.probe_store(score, a, b, GRID, cfg, "ddim", 0, 2**24, classify)
    store = probes.probe_store(score, a, b, GRID, cfg, "euler_maruyama", 0, 2**24, classify)
    assert store.sizes["point"] == 16
    assert np.isnan(store.same_nearest.sel(origin="train").values[:, 8:]).all()
    assert np.isfinite(store.same_nearest.sel(origin="held_out").values).all()
    out = probes.probe_metrics(store, 8, 0.5, theory.PHI_AT_SPECIATION, 50, 0)
    assert out.probe_identity_chance == 1 / 8
