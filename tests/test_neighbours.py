"""Tests of `diffregimes.neighbours`: chunked softmax mean, log-partition and exact k-NN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffregimes import neighbours
from diffregimes.neighbours import (
    BLOCK_ENTRIES,
    SoftmaxKernel,
    block_sizes,
    chunk_sizes,
    half_sq_norms,
    nearest,
)

F64 = torch.float64


def _data(batch, n, d, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n, d, generator=g, dtype=F64)
    # queries near the centres (the hard case at small Δ) and far from them
    near = centres[torch.randint(n, (batch // 2,), generator=g)]
    near = near + 0.05 * torch.randn(near.shape, generator=g, dtype=F64)
    far = 1.5 * torch.randn(batch - batch // 2, d, generator=g, dtype=F64)
    return torch.cat([near, far]).to(dtype), centres.to(dtype)


def _direct_logits(x, centres, delta):
    """−‖x − c‖²/(2Δ) by direct differences in float64, no chunking."""
    diff = x.double()[:, None, :] - centres.double()[None, :, :]
    return -(diff * diff).sum(-1) / (2 * delta)


# Small budgets force many chunks over both the batch and the centres (n = 203 is prime, so the
# last chunk is ragged).
BUDGETS = [512, 4096, 2**20]


@pytest.mark.parametrize("delta", [1e-4, 1e-3, 1e-2, 0.1, 1.0])
@pytest.mark.parametrize("budget", BUDGETS)
def test_softmax_mean_matches_direct(delta, budget):
    x, c = _data(37, 203, 5, seed=1)
    w = torch.softmax(_direct_logits(x, c, delta), dim=1)
    expected = w @ c
    got = SoftmaxKernel(c, budget).mean(x, delta)
    # float64: the expanded logits lose ~1e-16·‖x‖‖c‖/Δ ≈ 1e-11 at Δ = 1e-4; the weights inherit
    # that relative error, and the mean is a convex combination of O(1) centres
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("delta", [1e-4, 1e-3, 1e-2, 0.1, 1.0])
@pytest.mark.parametrize("budget", BUDGETS)
def test_log_partition_matches_direct(delta, budget):
    x, c = _data(37, 203, 5, seed=2)
    expected = torch.logsumexp(_direct_logits(x, c, delta), dim=1)
    got = SoftmaxKernel(c, budget).log_partition(x, delta)
    # values reach |log Z| ~ 1e5 at Δ = 1e-4 (far queries); the analytic ‖x‖²/(2Δ) term cancels
    # against the maximum with float64 round-off ~1e-16 · 1e5 relative to each term
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("budget", [512, 2**20])
def test_scaled_centres_and_other_dtype(budget):
    # scale = e^{−t}: the result must be that of the explicitly scaled centres; float32 centres
    # queried in float64 are cast with their ½‖c‖² recomputed in float64
    x, c = _data(29, 101, 4, seed=8)
    s, delta = 0.37, 2e-3
    for centres in (c, c.float()):
        kernel = SoftmaxKernel(centres, budget)
        ref = centres.double()
        w = torch.softmax(_direct_logits(x, s * ref, delta), dim=1)
        got = kernel.mean(x, delta, scale=s)
        assert got.dtype == F64
        torch.testing.assert_close(got, w @ (s * ref), rtol=1e-9, atol=1e-9)
        lz = kernel.log_partition(x, delta, scale=s)
        expected = torch.logsumexp(_direct_logits(x, s * ref, delta), dim=1)
        torch.testing.assert_close(lz, expected, rtol=1e-11, atol=1e-9)


def test_softmax_mean_single_centre_and_far_point():
    c = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    x = torch.tensor([[100.0, 100.0, 100.0], [1.0, -2.0, 0.5]], dtype=F64)
    got = SoftmaxKernel(c, 64).mean(x, 1e-4)
    torch.testing.assert_close(got, c.expand(2, 3), rtol=0, atol=0)  # no overflow, no NaN


def test_softmax_mean_float32_tiny_delta_finite():
    x, c = _data(64, 500, 8, seed=3, dtype=torch.float32)
    got = SoftmaxKernel(c, 4096).mean(x, 1e-5)
    assert torch.isfinite(got).all()
    w = torch.softmax(_direct_logits(x, c, 1e-5), dim=1)
    # at Δ = 1e-5 each query has one overwhelmingly dominant centre, so the float32 result is
    # that centre to float32 precision
    torch.testing.assert_close(got.double(), w @ c.double(), rtol=1e-5, atol=1e-5)


def _brute_knn(x, c, k):
    # direct differences (cdist's default matmul expansion loses ~1e-7 near zero distance)
    d = torch.cdist(x.double(), c.double(), compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.argsort(d, dim=1)[:, :k]
    return d.gather(1, order), order


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("budget", [256, 4096, 2**20])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nearest_matches_brute_force(k, budget, dtype):
    x, c = _data(41, 307, 6, seed=4, dtype=dtype)
    dist, idx = nearest(x, c, k=k, budget_bytes=budget)
    bd, bi = _brute_knn(x, c, k)
    assert idx.dtype == torch.long and dist.dtype == F64 and dist.shape == (41, k)
    torch.testing.assert_close(idx, bi, rtol=0, atol=0)  # continuous data: no ties
    # both are float64 direct distances of the same (dtype-rounded) points: round-off only
    torch.testing.assert_close(dist, bd, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_nearest_with_fewer_centres_than_candidates(k):
    # n = 5 < k + refine = k + 4
    x, c = _data(17, 5, 3, seed=5)
    dist, idx = nearest(x, c, k=k, budget_bytes=128)
    bd, bi = _brute_knn(x, c, k)
    torch.testing.assert_close(idx, bi, rtol=0, atol=0)
    torch.testing.assert_close(dist, bd, rtol=1e-12, atol=1e-12)


def test_nearest_k_larger_than_n():
    x, c = _data(4, 2, 3, seed=6)
    dist, idx = nearest(x, c, k=3)
    assert dist.shape == (4, 2)  # k is capped at n
    torch.testing.assert_close(idx, _brute_knn(x, c, 2)[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nearest_points_exactly_at_centres(dtype):
    g = torch.Generator().manual_seed(7)
    c = (3.0 * torch.randn(211, 10, generator=g, dtype=F64)).to(dtype)
    pick = torch.randperm(211, generator=g)[:50]
    dist, idx = nearest(c[pick], c, k=3, budget_bytes=1024)
    torch.testing.assert_close(idx[:, 0], pick, rtol=0, atol=0)
    assert torch.all(dist[:, 0] == 0)  # exact differences, not the expansion
    bd, bi = _brute_knn(c[pick], c, 3)
    torch.testing.assert_close(idx, bi, rtol=0, atol=0)
    torch.testing.assert_close(dist, bd, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", [1, 7, 100, 5000])
@pytest.mark.parametrize("n", [1, 50, 1000, 100_000])
@pytest.mark.parametrize("budget", [256, 4096, 2**16, 2**26])
@pytest.mark.parametrize("itemsize, per_entry", [(4, 3), (8, 3), (8, 2)])
def test_chunk_sizes_respect_budget(batch, n, budget, itemsize, per_entry):
    b, c = chunk_sizes(batch, n, budget, itemsize, per_entry)
    assert 1 <= b and 1 <= c <= n
    assert b <= max(batch, 1)
    assert b * c * itemsize * per_entry <= budget


@pytest.mark.parametrize("batch, n", [(20_000, 20_000), (4096, 50_000), (300, 1_000_000)])
def test_block_sizes_on_an_accelerator_come_from_the_budget(batch, n):
    """On CUDA the blocks fill the budget (few kernel launches); on the CPU they keep the cache
    caps (2²¹ entries, 1024 rows)."""
    budget, itemsize, per_entry = 2**28, 4, 3
    entries = budget // (itemsize * per_entry)
    bs, cs = block_sizes(batch, n, budget, itemsize, per_entry, "cuda")
    assert bs * cs * itemsize * per_entry <= budget
    assert bs * cs > entries // 2  # at least half the budget in one block
    assert bs == batch or cs == n or bs > 1024
    cpu_bs, cpu_cs = block_sizes(batch, n, budget, itemsize, per_entry, "cpu")
    assert cpu_bs <= 1024 and cpu_bs * cpu_cs <= max(BLOCK_ENTRIES, cpu_bs * 1024)
    assert bs * cs > 4 * cpu_bs * cpu_cs


@pytest.mark.parametrize("budget", [256, 4096, 2**20])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nearest_to_scaled_centres(budget, dtype):
    """nearest(x, c, scale=s) is the k-NN among s·c (distances to s·c in float64), with ½‖c‖²
    passed or not."""
    x, c = _data(41, 307, 6, seed=9, dtype=dtype)
    s = math.exp(-1.3)
    x = x * s
    bd, bi = _brute_knn(x, s * c.double(), 3)
    for hs in (None, half_sq_norms(c)):
        dist, idx = nearest(x, c, k=3, budget_bytes=budget, scale=s, half_sq=hs)
        torch.testing.assert_close(idx, bi, rtol=0, atol=0)
        torch.testing.assert_close(dist, bd, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="scale"):
        nearest(x, c, scale=0.0)


@pytest.mark.parametrize("rows, m, kc", [(7, 4096, 6), (5, 1000, 3), (3, 97, 5), (4, 64, 6)])
def test_top_candidates_are_the_top_k(rows, m, kc):
    """The grouped top-k gives the values of torch.topk, ties included (integer data), and
    columns that hold them."""
    g = torch.Generator().manual_seed(rows)
    aff = torch.randint(-50, 50, (rows, m), generator=g).float()
    val, col = neighbours._top_candidates(aff, kc)
    torch.testing.assert_close(val, aff.topk(kc, dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(aff.gather(1, col), val, rtol=0, atol=0)
    assert all(len(set(r.tolist())) == kc for r in col)  # distinct columns


def test_nearest_same_without_the_onednn_product(monkeypatch):
    """The oneDNN product and the addmm fallback give the same neighbours (several chunks)."""
    x, c = _data(300, 5000, 33, seed=10, dtype=torch.float32)
    fast = nearest(x, c, k=2, budget_bytes=2**16)
    monkeypatch.setattr(neighbours, "_onednn_linear", lambda: None)
    slow = nearest(x, c, k=2, budget_bytes=2**16)
    torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=0)
    torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=0)  # both float64 direct
    torch.testing.assert_close(fast[1], _brute_knn(x, c, 2)[1], rtol=0, atol=0)


def test_nearest_large_d_small_budget():
    """The float64 refinement is cut into sub-blocks of rows: large d with a tiny budget."""
    x, c = _data(23, 40, 700, seed=11, dtype=torch.float32)
    dist, idx = nearest(x, c, k=2, budget_bytes=4096)
    bd, bi = _brute_knn(x, c, 2)
    torch.testing.assert_close(idx, bi, rtol=0, atol=0)
    torch.testing.assert_close(dist, bd, rtol=1e-10, atol=1e-10)


def test_nearest_per_time_of_the_metrics_job_matches_brute_force():
    """run_metrics' one call per saved time for all samples: the nearest a^μ e^{−t} of every
    x(sample, t) by brute force."""
    from diffregimes.run_metrics import nearest_per_time

    g = torch.Generator().manual_seed(12)
    a = torch.randn(150, 8, generator=g)
    times = np.array([3.0, 1.0, 0.2, 0.01])
    x = torch.stack([a[:20] * math.exp(-t) + torch.randn(20, 8, generator=g) for t in times], 1)
    got = nearest_per_time(x, a, times, budget=4096)
    expected = np.stack(
        [_brute_knn(x[:, k], a * math.exp(-t), 1)[1][:, 0].numpy() for k, t in enumerate(times)],
        axis=1,
    )
    np.testing.assert_array_equal(got, expected)
