"""One kernel for distances between a batch of points and all n training points.

The empirical score, log P_t^e and nearest neighbours all reduce to a matrix product x·cᵀ over
chunks of the n centres c_μ (training points, possibly scaled by e^{−t}), followed by an online
softmax, log-sum-exp or top-k over μ. Memory is bounded by a byte budget whatever n is: the
(batch × chunk) block of logits is the only thing that grows.

Accuracy: −‖x − c_μ‖²/(2Δ) = −‖x‖²/(2Δ) + (x·c_μ − ½‖c_μ‖²)/Δ. The first term does not depend on
μ, so it cancels in every softmax and is added back analytically (in the input dtype's
precision, once per row) in the log-sum-exp. We never form ‖x‖² − 2x·c + ‖c‖² and subtract,
which loses all digits when Δ is small and x sits next to a centre; the μ-dependent part keeps
its relative precision. Neighbours are refined by recomputing exact differences for the
candidates.
"""

from __future__ import annotations

import math

import torch

DEFAULT_BUDGET_BYTES = 256 * 2**20
# At most this many entries in one (batch × centre) logits block; at least this many centres.
BLOCK_ENTRIES = 2**21
BLOCK_MIN_CENTRES = 1024
_TINY = {
    dt: torch.finfo(dt).tiny for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}
_LOG_TINY = {dt: math.log(tiny) for dt, tiny in _TINY.items()}


def chunk_sizes(batch: int, n: int, budget_bytes: int, itemsize: int, per_entry: int = 3):
    """(batch chunk, centre chunk) so that `per_entry` (batch × chunk) blocks fit the budget."""
    entries = max(1, budget_bytes // (itemsize * per_entry))
    b = max(1, min(batch, 1024))
    c = max(1, min(n, entries // b))
    if c < 64 and n > c:  # tiny budgets: trade batch rows for centres
        b = max(1, entries // min(n, 64))
        c = max(1, min(n, entries // b))
    b = max(1, min(b, entries // c))  # small n: c = n alone can leave b × c over the budget
    return b, c


def _affinity(x, c, c_half_sq):
    """x·cᵀ − ½‖c‖², the μ-dependent part of −‖x − c‖²/2."""
    return x @ c.T - c_half_sq


def _block_sizes(batch: int, n: int, budget_bytes: int, itemsize: int, per_entry: int):
    """`chunk_sizes`, with the centre chunk also capped so that one logits block holds at most
    `BLOCK_ENTRIES` entries (8 MB in float32): the block is then reused from the allocator and
    stays in cache across the passes that follow the matrix product. Larger blocks measured
    slower, not faster (bench/kernels.py)."""
    bs, cs = chunk_sizes(batch, n, budget_bytes, itemsize, per_entry)
    return bs, min(cs, max(BLOCK_MIN_CENTRES, BLOCK_ENTRIES // bs))


def _exp_shifted_(logits, m):
    """In place: logits ← exp(logits − m) (m = the row maximum, so every weight is ≤ 1), with
    the weights below 4× the dtype's smallest normal number (e^{−86} in float32, e^{−707} in
    float64) set to exactly 0.

    Such a weight is below the round-off of every sum it enters (the row's largest weight is 1),
    so dropping it changes no result. Both steps are for speed on x86: exp of an argument whose
    result underflows (e^{−200}, or −inf) takes a slow microcode path (30–100× slower), so the
    shifted logits are clamped at log(tiny) + 1 first; and subnormal operands slow the matrix
    product that follows by 10–20×, which is what made the empirical score run at 5 % of the
    matrix-product rate. The clamped entries come out as e·tiny and are then zeroed."""
    log_tiny, tiny = _LOG_TINY[logits.dtype], _TINY[logits.dtype]
    logits.sub_(m).clamp_(min=log_tiny + 1.0).exp_()
    return torch.nn.functional.threshold_(logits, 4.0 * tiny, 0.0)


def softmax_mean(
    x: torch.Tensor,
    centres: torch.Tensor,
    delta: float,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    scale: float = 1.0,
    half_sq: torch.Tensor | None = None,
):
    """Σ_μ w_μ s c_μ with w = softmax_μ(−‖x − s c_μ‖²/(2Δ)), for each row of x (s = `scale`).

    `half_sq` = ½‖c_μ‖² may be passed precomputed (it does not depend on t). An online
    (streaming) softmax over chunks of centres (Milakov & Gimelshein 2018): a running maximum m,
    normaliser S and weighted sum W are rescaled by e^{m_old − m_new} per chunk; W/S at the end.
    Per chunk: one addmm into a reused block, then max, exp and sum in place, then W += p·c."""
    batch, _ = x.shape
    n = centres.shape[0]
    if half_sq is None:
        half_sq = 0.5 * (centres * centres).sum(1)
    bs, cs = _block_sizes(batch, n, budget_bytes, x.element_size(), 3)
    out = torch.empty_like(x)
    inv = 1.0 / delta
    bias = half_sq * (-(scale**2) * inv)
    block = torch.empty(min(bs, batch) * min(cs, n), dtype=x.dtype, device=x.device)
    for i in range(0, batch, bs):
        xb = x[i : i + bs]
        for j in range(0, n, cs):
            c = centres[j : j + cs]
            logits = block[: xb.shape[0] * c.shape[0]].view(xb.shape[0], c.shape[0])
            torch.addmm(bias[j : j + cs], xb, c.T, alpha=scale * inv, out=logits)
            m_chunk = logits.amax(1, keepdim=True)
            if j == 0:
                m = m_chunk
                p = _exp_shifted_(logits, m)
                s = p.sum(1, keepdim=True)
                w = p @ c
            else:
                m_new = torch.maximum(m, m_chunk)
                rescale = torch.exp(m - m_new)
                m = m_new
                p = _exp_shifted_(logits, m)
                s.mul_(rescale).add_(p.sum(1, keepdim=True))
                w.mul_(rescale).addmm_(p, c)
        out[i : i + bs] = w.div_(s).mul_(scale)
    return out


def log_partition(
    x: torch.Tensor,
    centres: torch.Tensor,
    delta: float,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    scale: float = 1.0,
    half_sq: torch.Tensor | None = None,
):
    """log Σ_μ exp(−‖x − s c_μ‖²/(2Δ)) per row of x, in the dtype of x (use float64 for f^e)."""
    batch, _ = x.shape
    n = centres.shape[0]
    if half_sq is None:
        half_sq = 0.5 * (centres * centres).sum(1)
    bs, cs = _block_sizes(batch, n, budget_bytes, x.element_size(), 2)
    out = torch.empty(batch, dtype=x.dtype, device=x.device)
    inv = 1.0 / delta
    bias = half_sq * (-(scale**2) * inv)
    block = torch.empty(min(bs, batch) * min(cs, n), dtype=x.dtype, device=x.device)
    for i in range(0, batch, bs):
        xb = x[i : i + bs]
        for j in range(0, n, cs):
            c = centres[j : j + cs]
            logits = block[: xb.shape[0] * c.shape[0]].view(xb.shape[0], c.shape[0])
            torch.addmm(bias[j : j + cs], xb, c.T, alpha=scale * inv, out=logits)
            m_chunk = logits.amax(1)
            if j == 0:
                m = m_chunk
                s = _exp_shifted_(logits, m[:, None]).sum(1)
            else:
                m_new = torch.maximum(m, m_chunk)
                s.mul_(torch.exp(m - m_new))
                m = m_new
                s.add_(_exp_shifted_(logits, m[:, None]).sum(1))
        out[i : i + bs] = m + torch.log(s) - 0.5 * (xb * xb).sum(1) * inv
    return out


def nearest(
    x: torch.Tensor,
    centres: torch.Tensor,
    k: int = 2,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    refine: int = 4,
):
    """Exact k nearest centres of each row of x: (distances (batch, k) unsquared, indices).

    Candidates come from the expanded form in the input dtype (top k + `refine` per row, kept
    across chunks); their distances are then recomputed in float64 by direct differences and
    re-sorted, so ties and round-off of the expansion cannot swap the order."""
    batch, _ = x.shape
    n = centres.shape[0]
    k = min(k, n)
    kc = min(n, k + refine)
    bs, cs = chunk_sizes(batch, n, budget_bytes, x.element_size(), per_entry=2)
    dist = torch.empty(batch, k, dtype=torch.float64, device=x.device)
    index = torch.empty(batch, k, dtype=torch.long, device=x.device)
    for i in range(0, batch, bs):
        xb = x[i : i + bs]
        best_val = torch.full((xb.shape[0], 0), -math.inf, dtype=x.dtype, device=x.device)
        best_idx = torch.zeros((xb.shape[0], 0), dtype=torch.long, device=x.device)
        for j in range(0, n, cs):
            c = centres[j : j + cs]
            aff = _affinity(xb, c, 0.5 * (c * c).sum(1))  # larger = nearer
            val, idx = aff.topk(min(kc, c.shape[0]), dim=1)
            best_val = torch.cat([best_val, val], 1)
            best_idx = torch.cat([best_idx, idx + j], 1)
            best_val, keep = best_val.topk(min(kc, best_val.shape[1]), dim=1)
            best_idx = best_idx.gather(1, keep)
        diff = xb.double()[:, None, :] - centres.double()[best_idx]
        d2 = (diff * diff).sum(-1)
        d2, order = d2.sort(dim=1, stable=True)
        dist[i : i + bs] = d2[:, :k].sqrt()
        index[i : i + bs] = best_idx.gather(1, order)[:, :k]
    return dist, index
