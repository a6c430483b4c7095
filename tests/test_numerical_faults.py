"""Numerical faults: a NaN or inf in a score or a sample stops the run at its exact step, with
its times, the run (main or the clones of one branch time) and the same random numbers as an
untested run.
"""

from __future__ import annotations

import re

import pytest
import torch

from diffregimes import generate, process, samplers

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
    """The clones of every branch time run as one growing batch (one new copy of each of the 4
    pairs, the parent's own continuation being the other; branch times 4, 2.0538 and 0.0475, so
    rows 0–3, 4–7, 8–11): poison only rows 4 on below t = 0.5. The error names the step from
    t = 0.4988 and the branch time of row 4, 2.0538."""

    def score(x, t):
        out = -x
        if t < 0.5 and len(x) > 4 and len(x) <= 12:  # the clones' batch, not the main run's 16
            out[4:] = float("nan")
        return out

    time_cfg = {"T": 4.0, "t_min": 1e-3, "steps": 40, "saved": 10, "spacing": "log_snr"}
    clone_cfg = {"times": 3, "pairs": 4, "t_lo": 0.05}
    where = r"at step 22 of 40 \(t = 0\.498854 → .* in the clones branched at t = 2\.0538$"
    with pytest.raises(FloatingPointError, match=where):
        generate.sample_trajectories(
            score,
            3,
            process.TimeGrid.from_settings(time_cfg),
            {"name": "euler_maruyama", "samples": 16},
            clone_cfg,
            0,
        )
