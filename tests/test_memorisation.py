"""Memorisation along training (the follow-up's time scales): closed forms for the estimators,
then real short training runs for τ_mem, τ_gen and the DSM gap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
from model_configs import model_cfg
from scipy import stats

from diffregimes import config, data, generate, memorisation, nets, reproduction, train
from diffregimes.process import TimeGrid
from diffregimes.training_axis import measure_training_axis

TIME = {"T": 5.0, "t_min": 1e-3, "steps": 100, "spacing": "log_snr", "saved": 12}
AXIS = dict(
    samples=256,
    score_points=256,
    memorisation_threshold=1 / 3,
    tau_mem_level=0.1,
    ddim_steps=50,
    dsm_draws=2,
    dsm_gap_level=0.5,
    plateau_tolerance=0.1,
)


def gmm(d, n, sigma=1.0, seed=0, test_size=512):
    spec = dict(kind="gmm", mu=1.0, sigma=sigma, direction="ones", test_size=test_size)
    return data.make_synthetic(spec, "g", d, n, seed)


def train_and_measure(tmp_path, d, n, steps, checkpoints, sigma=1.0, width=128):
    train_ds, test_ds = gmm(d, n, sigma)
    cfg = model_cfg(steps=steps, checkpoints=checkpoints, width=width, log_every=100)
    torch.manual_seed(0)
    net = nets.build_network(cfg, d)
    folder = tmp_path / f"n{n}_w{width}"
    train.train(net, torch.as_tensor(train_ds["x"].values), cfg, TIME, 1, folder, "fp")
    pop = generate.build_score("population", train_ds, 2**24, "cpu")
    axis = dict(AXIS, checkpoints=checkpoints)
    files = {
        s: folder / train.CHECKPOINT.format(s) for s in train.checkpoint_steps(steps, checkpoints)
    }
    refs = {"gaussian": generate.build_score("gaussian", train_ds, 2**24, "cpu")}
    refs["smoothed"] = generate.build_score(
        "smoothed", train_ds, 2**24, "cpu", baseline={"kind": "smoothed", "sigma_s": 0.3}
    )
    return measure_training_axis(
        net,
        files,
        cfg,
        axis,
        train_ds,
        test_ds,
        pop,
        TimeGrid.from_settings(TIME),
        2,
        2**24,
        references=refs,
    )


def r2_at_small_t(ds, reference):
    """r² and its SE of the last checkpoint against `reference` at the saved t nearest 0.1:
    the scores differ there (at t ≳ 1 every reference is ≈ −x, r² ≈ 1), and the empirical score
    at held-out points is not yet the 1/Δ_t pull to the nearest training point that no network
    follows (r² ≪ 0 at t = 1e−3 for every network)."""
    t = ds.time.values[np.argmin(np.abs(ds.time.values - 0.1))]
    at = dict(step=ds.step[-1], time=t, reference=reference)
    return float(ds.score_r2.sel(at)), float(ds.score_r2_se.sel(at))


# --- estimators against closed forms ---------------------------------------------------------


def test_energy_distance_matches_its_closed_form_in_one_dimension():
    """X ~ N(0, 1), Y ~ N(μ, 1): D² = 2E|N(μ, 2)| − 2E|N(0, 2)|, E|N(μ, s²)| = s√(2/π)e^{−μ²/2s²}
    + μ(1 − 2Φ(−μ/s)). The U-statistic is unbiased, so within 3 jackknife SE, and zero (within
    3 SE) for two samples of one law."""
    gen = torch.Generator().manual_seed(0)
    mu, s = 0.7, math.sqrt(2.0)

    def abs_mean(m):
        return s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * (
            1 - 2 * stats.norm.cdf(-m / s)
        )

    exact = 2 * abs_mean(mu) - 2 * abs_mean(0.0)
    x = torch.randn(2000, 1, generator=gen)
    value, se = memorisation.energy_distance(x, torch.randn(2000, 1, generator=gen) + mu)
    assert abs(value - exact) < 3 * se, (value, exact, se)
    same, se0 = memorisation.energy_distance(x, torch.randn(2000, 1, generator=gen))
    assert abs(same) < 3 * se0 and se0 > 0


def test_dsm_gap_is_zero_for_a_score_that_has_not_seen_the_training_points():
    """The population score knows the law, not the points: held-out and training points from
    the same law give the same DSM loss in expectation (σ = 0.8, d = 6)."""
    train_ds, test_ds = gmm(6, 400, sigma=0.8, test_size=400)
    pop = generate.build_score("population", train_ds, 2**24, "cpu")
    times = [0.01, 0.1, 0.5, 1.5]
    losses = [
        memorisation.dsm_losses(pop, torch.as_tensor(ds["x"].values), times, gen, draws=2)
        for ds, gen in ((test_ds, torch.Generator().manual_seed(1)), (train_ds, torch.Generator()))
    ]
    gap, se, gap_mean, se_mean = memorisation.dsm_gap(*losses)
    assert np.all(np.abs(gap) < 3.5 * se), gap / se  # 4 levels: a Bonferroni-style margin
    assert abs(gap_mean) < 3 * se_mean
    # the population score's DSM loss is the law's irreducible loss: positive, ≤ 1 (ε-scale)
    assert np.all((losses[0].mean(0) > 0) & (losses[0].mean(0) < 1))


def test_tau_gen_on_an_exponential_approach_to_a_plateau():
    """q(s) = c + a e^{−s/τ}: all but 10 % of the drop made at s = τ ln 10 (dense checkpoints,
    so the log interpolation is close); the bracket holds it."""
    steps = np.unique(np.round(np.geomspace(10, 1e5, 120)))
    q = 0.2 + 3.0 * np.exp(-steps / 800.0)
    tau, lo, hi = memorisation.tau_gen(steps, q, 0.1)
    expected = 800.0 * math.log(3.0 / (0.1 * (3.0 * math.exp(-10 / 800.0))))
    assert lo <= tau <= hi and lo < expected <= hi
    assert tau == pytest.approx(expected, rel=0.02)
    assert all(math.isnan(v) for v in memorisation.tau_gen(steps, np.ones_like(steps)))


def test_tau_gen_is_the_middle_of_the_descent_whatever_its_floor():
    """The follow-up's picture at d = 16 (measured): the population-score error drops around
    the same step for every n, to a best value ∝ 1/n, then rises as the model memorises, the
    sooner the smaller n. τ_gen, the middle of the descent, is the same for every n (within
    the 1.1× checkpoint spacing); the end of the descent (all but 10 % of the drop to the best
    value) chases the floor and moves later with n."""
    steps = np.unique(np.round(np.geomspace(10, 20_000, 80)))
    ls = np.log(steps)

    def error(n):
        descent = 1 / (1 + np.exp((ls - math.log(45.0)) / 0.12))  # its middle at step 45
        floor = 0.45 / n  # the finite-sample error, approached slowly after the drop
        tail = 0.006 * (1 - descent) * np.exp(-steps / 100.0)
        rise = 0.003 * np.clip(steps / (10 * math.sqrt(n)) - 1, 0, None) ** 2  # memorisation
        return floor + (0.028 - floor) * descent + tail + rise

    mids = [memorisation.tau_gen(steps, error(n)) for n in (32, 128, 512)]
    ends = [memorisation.tau_gen(steps, error(n), 0.1)[0] for n in (32, 128, 512)]
    for tau, lo, hi in mids:
        assert lo <= tau <= hi and abs(math.log(tau / 45.0)) < math.log(1.1), mids
    assert ends[2] > 1.2 * ends[0], ends


def test_scaling_exponent_recovers_a_power_law_within_its_se():
    """τ_i = 7 n_i^{1.3} e^{σ_i ε_i} with known σ_i: the fit is within 3 SE of 1.3 and its SE is
    the weighted least-squares one, (Σ w (log n − mean)²)^{−1/2} when χ² ≈ dof."""
    rng = np.random.default_rng(0)
    n = np.array([64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    sigma = np.full(n.size, 0.1)
    hits = 0
    for _ in range(200):
        tau = 7 * n**1.3 * np.exp(sigma * rng.standard_normal(n.size))
        fit = memorisation.scaling_exponent(n, tau, sigma)
        hits += fit["ci_low"] <= 1.3 <= fit["ci_high"]
    lx = np.log(n)
    se_wls = 0.1 / math.sqrt(((lx - lx.mean()) ** 2).sum())
    assert fit["se"] >= se_wls * (1 - 1e-9) and fit["se"] < 2 * se_wls
    # 95 % CI: coverage 0.95 (the Birge inflation only widens it), binomial SE 0.015 at 200
    assert hits / 200 > 0.95 - 3 * 0.015, hits
    censored = memorisation.scaling_exponent(n[:3], [np.nan, 10.0, 20.0], [0.1, 0.1, 0.1])
    assert censored["points"] == 2 and math.isnan(censored["exponent"])


def test_model_settings_resolve_the_length_and_a_full_batch_per_cell():
    entry = model_cfg(steps=500, steps_per_point=40, batch_size="full")
    cell = config.model_settings(entry, 64)
    assert cell["steps"] == 2560 and cell["batch_size"] == 64 and cell["full_batch"]
    assert "steps_per_point" not in cell
    assert config.model_settings(entry, 4)["steps"] == 500  # never shorter than `steps`
    # the same model written out explicitly has the same settings (the same fingerprint)
    assert config.model_settings(
        model_cfg(steps=2560, batch_size=256), 64
    ) == config.model_settings(model_cfg(steps=1000, steps_per_point=40), 64)


def test_scaling_rows_of_the_comparison(tmp_path):
    """A grid measure is one fit over the selected runs: τ_mem = 12 n (intervals ±10 %) gives
    b = 1 within its SE, and the comparison row agrees; fewer than 3 finite τ is a note."""
    n = np.array([64, 128, 256, 512, 1024])
    tau = 12.0 * n * np.exp(0.03 * np.array([1, -1, 0.5, -0.5, 0]))
    summary = xr.Dataset(
        {
            "f_mem_by_step": (("run", "step"), np.zeros((5, 2))),
            "tau_mem": ("run", tau),
            "tau_mem_ci_low": ("run", tau / 1.1),
            "tau_mem_ci_high": ("run", tau * 1.1),
        },
        coords={
            "dataset": ("run", ["memorisation"] * 5),
            "score": ("run", ["mlp"] * 5),
            "d": ("run", [8] * 5),
            "n": ("run", n),
            "step": [10, 20],
        },
    )
    entry = {
        "figure": "F",
        "quantity": "b",
        "setting": "s",
        "paper": 1,
        "paper_se": 0,
        "source": "[F]",
        "select": {"dataset": "memorisation"},
        "measure": "tau_mem_exponent_n",
    }
    row = reproduction.compare(summary, {}, [entry]).iloc[0]
    assert row["agrees"] == "yes" and abs(row["measured"] - 1) < 3 * row["se"]
    assert row["runs"].startswith("5 run(s)")
    few = summary.assign(tau_mem=summary.tau_mem.where(summary.n > 256))
    row = reproduction.compare(few, {}, [entry]).iloc[0]
    assert row["agrees"] == "absent" and "2 of 5 learned runs" in row["note"]
    # a list in `select` keeps the runs with any of its values: a fit over part of the grid
    part = dict(entry, select={"dataset": "memorisation", "n": [64, 128, 256]})
    row = reproduction.compare(summary, {}, [part]).iloc[0]
    assert row["runs"].startswith("3 run(s)") and abs(row["measured"] - 1) < 3 * row["se"]


# --- real training runs ----------------------------------------------------------------------


@pytest.mark.slow
def test_tau_mem_grows_with_n_in_a_short_study(tmp_path):
    """GMM d = 4, σ = 1, n = 16 and 64, the same MLP: τ_mem (f_mem reaches 0.1) and the DSM-gap
    τ_mem are later for the larger n, their intervals apart; training of a few thousand steps."""
    small = train_and_measure(tmp_path, 4, 16, 1200, 24)
    large = train_and_measure(tmp_path, 4, 64, 3000, 30)
    for name in ("tau_mem", "tau_mem_dsm"):
        assert not bool(small[f"{name}_censored"]) and not bool(large[f"{name}_censored"]), name
        assert float(small[f"{name}_ci_high"]) < float(large[f"{name}_ci_low"]), name
    # the DSM gap opens: near 0 at the first checkpoint, far above its SE at the last
    gap, se = large.dsm_gap_mean.values, large.dsm_gap_mean_se.values
    assert abs(gap[0]) < 3 * se[0] and gap[-1] > 10 * se[-1]


@pytest.mark.slow
def test_dsm_gap_opens_for_a_model_trained_to_memorise_8_points(tmp_path):
    """n = 8 in d = 4 and long training: the training points' DSM loss falls far below the
    held-out loss (relative gap past 0.5 at the last checkpoint, > 10 SE)."""
    ds = train_and_measure(tmp_path, 4, 8, 2000, 8)
    assert ds.dsm_gap_mean.values[-1] > 10 * ds.dsm_gap_mean_se.values[-1]
    assert ds.dsm_gap_relative.values[-1] > 0.5
    assert float(ds.f_mem_by_step[-1]) > 0.5
    # what it learned: the empirical score, not the law's (r², SCIENCE.md §7); measured at
    # t = 0.074: 0.62 ± 0.03 against 0.15 ± 0.02
    emp, emp_se = r2_at_small_t(ds, "empirical")
    pop, pop_se = r2_at_small_t(ds, "population")
    assert emp - pop > 3 * math.hypot(emp_se, pop_se), (emp, emp_se, pop, pop_se)


@pytest.mark.slow
def test_tau_gen_on_a_known_law_with_its_bracket(tmp_path):
    """n = 1024 in d = 4 (σ = 0.7), short training that never memorises: the population-score
    error falls to a plateau (the last value within 30 % of the drop of its minimum) and τ_gen
    lies inside its bracket of evaluated checkpoints."""
    ds = train_and_measure(tmp_path, 4, 1024, 800, 16, sigma=0.7)
    q = ds.score_error_population_mean.values
    assert q[-1] - q.min() < 0.3 * (q[0] - q.min())
    tau, lo, hi = (float(ds[v]) for v in ("tau_gen", "tau_gen_bracket_low", "tau_gen_bracket_high"))
    steps = ds.step.values
    assert lo < tau <= hi and lo in steps and hi in steps and hi < steps[-1]
    # the end of the descent comes after its middle, within the evaluated steps
    end = float(ds.tau_gen_end)
    assert tau <= end <= float(ds.tau_gen_end_bracket_high) <= steps[-1]
    assert float(ds.model_width) == 128 and int(ds.model_steps) == 800
    # what it learned: closer to the law's score than to the empirical one (measured at
    # t = 0.074: 0.974 ± 0.002 against 0.66 ± 0.04)
    emp, emp_se = r2_at_small_t(ds, "empirical")
    pop, pop_se = r2_at_small_t(ds, "population")
    assert pop - emp > 3 * math.hypot(emp_se, pop_se), (emp, emp_se, pop, pop_se)
    assert list(ds.reference.values) == ["population", "empirical", "gaussian", "smoothed"]


def test_full_batch_training_uses_every_point_at_every_step():
    gen = torch.Generator().manual_seed(0)
    idx = train.batch_indices(5, 5, True, gen, torch.device("cpu"))
    assert idx.tolist() == [0, 1, 2, 3, 4]
    drawn = train.batch_indices(5, 500, False, gen, torch.device("cpu"))
    assert drawn.shape == (500,) and set(drawn.tolist()) == {0, 1, 2, 3, 4}
