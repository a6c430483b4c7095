"""The clones of every branch time as one growing batch (`samplers.clone_branches`)."""

from __future__ import annotations

import pytest
import torch

from diffregimes.process import time_grid
from diffregimes.samplers import (
    STOCHASTIC,
    RowStreams,
    branch_generators,
    clone,
    clone_branches,
    prior_sample,
)
from diffregimes.scores import GMMScore

F64 = torch.float64
D, STEPS = 6, 60
GRID = time_grid(4.0, 1e-3, STEPS, "log_snr")
M, SIGMA = torch.full((D,), 0.7, dtype=F64), 0.8
SCORE = GMMScore(M, SIGMA)
BRANCHES = (0, 17, 41, STEPS)  # the last one has no step left: its copies are its start


def _starts(seed=3, pairs=5):
    g = torch.Generator().manual_seed(seed)
    return {k: prior_sample(pairs, D, g, dtype=F64) for k in BRANCHES}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
@pytest.mark.parametrize("max_rows", [None, 10, 25])
def test_every_clone_is_its_branch_run_whatever_the_waves(name, max_rows):
    """Each branch time's copies are the `clone` run from its start with its own generator
    (`branch_generators`), however the branch times are grouped into waves: the waves bound
    memory (their size comes from the byte budget) and must not change a clone. Round-off of
    the batched score only (float64)."""
    starts = _starts()
    got = dict(
        clone_branches(
            SCORE, starts, GRID, name, torch.Generator().manual_seed(9), max_rows=max_rows
        )
    )
    streams = branch_generators(torch.Generator().manual_seed(9), starts)
    for k in BRANCHES:
        want = clone(SCORE, starts[k], GRID, k, name, streams[k], copies=2)
        torch.testing.assert_close(got[k], want, rtol=1e-12, atol=1e-12, msg=f"branch {k}")


def test_row_streams_draw_each_block_from_its_generator():
    """A batch of the first two blocks draws block by block, and a wrong row count is named."""
    g = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    noise = RowStreams(g, [2, 3, 4]).normal_like(torch.zeros(5, D), std=2.0)
    want = [
        torch.empty(r, D).normal_(0.0, 2.0, generator=torch.Generator().manual_seed(s))
        for s, r in ((1, 2), (2, 3))
    ]
    assert torch.equal(noise, torch.cat(want))
    with pytest.raises(ValueError, match="no prefix"):
        RowStreams(g, [2, 3, 4]).normal_like(torch.zeros(4, D))


@pytest.mark.parametrize("max_rows", [None, 10, 25])
def test_growing_batch_ends_and_steps(max_rows):
    """Every branch time's copies come back in its own slot with their own noise, a branch
    with no step left returns its start, and the progress ticks add up to Σ_k (K − k) branch
    steps (`generate.planned_steps`), whatever the waves."""
    starts, ticks = _starts(), []
    ends = dict(
        clone_branches(
            SCORE,
            starts,
            GRID,
            "euler_maruyama",
            torch.Generator().manual_seed(1),
            copies=3,
            callback=ticks.append,
            max_rows=max_rows,
        )
    )
    assert sorted(ends) == list(BRANCHES)
    for k in BRANCHES:
        assert ends[k].shape == (3, 5, D)
        if k < STEPS:
            assert not torch.equal(ends[k][0], ends[k][1])
    assert torch.equal(ends[STEPS][0], starts[STEPS]) and torch.equal(ends[STEPS][2], starts[STEPS])
    assert sum(ticks) == sum(STEPS - k for k in BRANCHES)


def test_growing_batch_clones_have_the_clone_law():
    """One wave: the copies of a late branch time, which joined a batch already under way,
    are draws of the backward process from their start. With the exact GMM score from x_T at
    T the ends are the law's own: their mean projection on m̂ is 0 and their spread σ² + |m|²
    within 4 SE, over 2 copies × 2000 pairs."""
    g = torch.Generator().manual_seed(5)
    starts = {0: prior_sample(2000, D, g, dtype=F64), 30: prior_sample(100, D, g, dtype=F64)}
    # branch 30 starts from x_T's law only approximately; the check is on branch 0, which
    # shares its batch (and its noise tensor) with the rows that join at 30
    ends = dict(clone_branches(SCORE, starts, GRID, "euler_maruyama", g, copies=2))
    ends = ends[0].reshape(-1, D)
    proj = ends @ (M / M.norm())
    n = proj.numel()
    assert abs(float(proj.mean())) < 4 * float(proj.std()) / n**0.5
    var, want = float(proj.var()), SIGMA**2 + float(M @ M)
    assert abs(var - want) < 4 * want * (2 / (n - 1)) ** 0.5 + 0.03 * want  # + EM bias
