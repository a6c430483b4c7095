"""One kernel for distances between a batch of points and all n training points.

The empirical score, log P_t^e and nearest neighbours all reduce to a matrix product x·cᵀ over
chunks of the n centres c_μ (training points, possibly scaled by e^{−t}), followed by an online
softmax, log-sum-exp or top-k over μ. Memory is bounded by a byte budget whatever n is: the
(batch × chunk) block of logits is the only thing that grows.

Accuracy: −‖x − c_μ‖²/(2Δ) = −‖x‖²/(2Δ) + (x·c_μ − ½‖c_μ‖²)/Δ. The first term does not depend on
μ, so it cancels in every softmax and is added back analytically (in the input dtype's
precision, once per row) in the log-sum-exp. We never form ‖x‖² − 2x·c + ‖c‖² and subtract,
which loses all digits when Δ is small and x sits next to a centre; the μ-dependent part keeps
its relative precision.

Exactness of `nearest`: candidates are the k + `refine` largest affinities x·c_μ − ½‖c_μ‖² of
each row, computed in the input dtype; their distances are then recomputed in float64 by direct
differences and re-sorted, so ties and round-off of the expansion cannot swap the order of the
k returned. Every faster path below (the matrix-product backend, the grouped top-k) returns
exactly those candidates.
"""

from __future__ import annotations

import functools
import math

import torch

DEFAULT_BUDGET_BYTES = 256 * 2**20
# On the CPU: at most this many entries in one (batch × centre) logits block; at least this many
# centres.
BLOCK_ENTRIES = 2**21
BLOCK_MIN_CENTRES = 1024
# nearest: the top-k of a block first ranks the maxima of this many strided column groups.
CANDIDATE_GROUPS = 32
# nearest: float64 entries of one refinement sub-block on the CPU (cache-sized).
REFINE_ENTRIES = 2**18
_TINY = {
    dt: torch.finfo(dt).tiny for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}
_LOG_TINY = {dt: math.log(tiny) for dt, tiny in _TINY.items()}


def chunk_sizes(
    batch: int, n: int, budget_bytes: int, itemsize: int, per_entry: int = 3, max_rows=1024
):
    """(batch chunk, centre chunk) so that `per_entry` (batch × chunk) blocks fit the budget;
    at most `max_rows` rows per batch chunk."""
    entries = max(1, budget_bytes // (itemsize * per_entry))
    b = max(1, min(batch, max_rows))
    c = max(1, min(n, entries // b))
    if c < 64 and n > c:  # tiny budgets: trade batch rows for centres
        b = max(1, entries // min(n, 64))
        c = max(1, min(n, entries // b))
    b = max(1, min(b, entries // c))  # small n: c = n alone can leave b × c over the budget
    return b, c


def block_sizes(
    batch: int, n: int, budget_bytes: int, itemsize: int, per_entry: int, device_type: str = "cpu"
):
    """(batch chunk, centre chunk) of the logits blocks on a device of type `device_type`.

    On the CPU: `chunk_sizes`, with the centre chunk also capped so that one logits block holds
    at most `BLOCK_ENTRIES` entries (8 MB in float32): the block is then reused from the
    allocator and stays in cache across the passes that follow the matrix product. On an
    accelerator there is no such cache to fit and every block costs kernel launches, so the
    blocks are as large as the budget allows, with no cap on the rows either."""
    if device_type != "cpu":
        return chunk_sizes(batch, n, budget_bytes, itemsize, per_entry, max_rows=batch)
    bs, cs = chunk_sizes(batch, n, budget_bytes, itemsize, per_entry)
    return bs, min(cs, max(BLOCK_MIN_CENTRES, BLOCK_ENTRIES // bs))


def half_sq_norms(centres: torch.Tensor) -> torch.Tensor:
    """½‖c_μ‖² per centre, without an (n × d) temporary."""
    return torch.linalg.vector_norm(centres, dim=1).square_().mul_(0.5)


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


def _softmax_blocks(x, centres, delta, budget_bytes, scale, half_sq, per_entry):
    """The blocked-logits loop of `SoftmaxKernel.mean` and `SoftmaxKernel.log_partition`.

    Yields (i, xb, chunks) per block of rows xb = x[i : i + len(xb)]; `chunks` yields
    (c, p, rescale, m) per chunk c of centres, with p = exp(logits − m) (in place, in a block
    reused across chunks: consume it before the next), logits = −‖xb − s c‖²/(2Δ) up to the
    row term, m the running row maximum (rows × 1) and rescale = e^{m_old − m} (None at the
    first chunk), by which running sums over the earlier chunks must be multiplied. One matrix
    product with a fused bias per chunk (`_product_fn`), then max, exp in place (Milakov &
    Gimelshein 2018)."""
    batch, n = x.shape[0], centres.shape[0]
    bs, cs = block_sizes(batch, n, budget_bytes, x.element_size(), per_entry, x.device.type)
    inv = 1.0 / delta
    bias = half_sq * (-(scale**2) * inv)
    product = _product_fn(x)
    block = torch.empty(min(bs, batch) * min(cs, n), dtype=x.dtype, device=x.device)

    def chunks(xb):
        m = None
        for j in range(0, n, cs):
            c = centres[j : j + cs]
            out = block[: xb.shape[0] * c.shape[0]].view(xb.shape[0], c.shape[0])
            logits = product(xb, c, bias[j : j + cs], out, scale * inv)
            m_chunk = logits.amax(1, keepdim=True)
            if m is None:
                m, rescale = m_chunk, None
            else:
                m_new = torch.maximum(m, m_chunk)
                rescale = torch.exp(m - m_new)
                m = m_new
            yield c, _exp_shifted_(logits, m), rescale, m

    for i in range(0, batch, bs):
        yield i, x[i : i + bs], chunks(x[i : i + bs])


class SoftmaxKernel:
    """The streamed softmax over a fixed set of centres c_μ (a training set, or all its
    patches): weights w_μ ∝ exp(−‖x − s c_μ‖²/(2Δ)) per row of x, for any Δ and scale s.

    Its two reductions, `mean` (Σ_μ w_μ s c_μ: the empirical score's denoiser) and
    `log_partition` (log Σ_μ exp(·): log P_t^e), share one blocked loop (`_softmax_blocks`) and
    ½‖c_μ‖², computed once here (it does not depend on t). An online softmax over chunks of
    centres: the running maximum m, normaliser S (and weighted sum W) are rescaled by
    e^{m_old − m_new} per chunk. Memory stays within `budget_bytes` whatever n is."""

    def __init__(self, centres: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.centres = centres
        self.budget_bytes = budget_bytes
        self.half_sq = half_sq_norms(centres)

    def _cast(self, x):
        """Centres and ½‖c‖² in the dtype of x (½‖c‖² recomputed there, so a float64 query
        gets float64 norms, not float32 ones widened)."""
        if x.dtype == self.centres.dtype:
            return self.centres, self.half_sq
        centres = self.centres.to(x.dtype)
        return centres, half_sq_norms(centres)

    def _sums(self, x, delta, scale, weighted):
        """Per block of rows: (i, xb, S, W, m), W = Σ p c (None unless `weighted`)."""
        centres, half_sq = self._cast(x)
        per_entry = 3 if weighted else 2
        blocks = _softmax_blocks(x, centres, delta, self.budget_bytes, scale, half_sq, per_entry)
        for i, xb, chunks in blocks:
            w = None
            for c, p, rescale, m_run in chunks:
                m = m_run  # the running row maximum after this chunk
                if rescale is None:
                    s = p.sum(1, keepdim=True)
                    w = p @ c if weighted else None
                else:
                    s.mul_(rescale).add_(p.sum(1, keepdim=True))
                    if weighted:
                        w.mul_(rescale).addmm_(p, c)
            yield i, xb, s, w, m

    def mean(self, x: torch.Tensor, delta: float, scale: float = 1.0) -> torch.Tensor:
        """Σ_μ w_μ s c_μ for each row of x, w = softmax_μ(−‖x − s c_μ‖²/(2Δ))."""
        out = torch.empty_like(x)
        for i, xb, s, w, _ in self._sums(x, delta, scale, weighted=True):
            out[i : i + xb.shape[0]] = w.div_(s).mul_(scale)
        return out

    def log_partition(self, x: torch.Tensor, delta: float, scale: float = 1.0) -> torch.Tensor:
        """log Σ_μ exp(−‖x − s c_μ‖²/(2Δ)) per row of x, in the dtype of x (float64 for f^e)."""
        out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
        inv = 1 / delta
        for i, xb, s, _, m in self._sums(x, delta, scale, weighted=False):
            out[i : i + xb.shape[0]] = (m + torch.log(s))[:, 0] - 0.5 * (xb * xb).sum(1) * inv
        return out


@functools.cache
def _onednn_linear():
    """torch's oneDNN fp32 matrix product with a fused bias, where it works, else None.

    On CPUs whose AVX-512 units MKL does not use (AMD), MKL's sgemm (torch.matmul) runs AVX2
    kernels at about half the machine's peak; oneDNN, which torch also ships, picks its kernels
    from the instruction set and runs near peak. It is the op that torch's own compiler emits
    for linear layers, but not a public API: it is probed once on a small product against
    addmm, and the kernels fall back to addmm where it is missing or disagrees."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    g = torch.Generator().manual_seed(0)
    x, c, b = (torch.randn(s, generator=g) for s in ((5, 70), (33, 70), (33,)))
    try:
        got = op(x, c, b, "none", [], "")
    except (RuntimeError, NotImplementedError):
        return None
    ok = got.shape == (5, 33) and torch.allclose(got, torch.addmm(b, x, c.T), rtol=1e-5, atol=1e-4)
    return op if ok else None


def _product_fn(x):
    """(xb, c, bias, out, alpha) → alpha·xb·cᵀ + bias in the dtype of x: oneDNN for float32 on
    the CPU at full float32 precision (torch.get_float32_matmul_precision() == 'highest', the
    default), with xb scaled first; else one addmm into the reused block `out`."""
    op = None
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.enabled
        and torch.get_float32_matmul_precision() == "highest"
    ):
        op = _onednn_linear()
    if op is None:
        return lambda xb, c, bias, out, alpha=1.0: torch.addmm(bias, xb, c.T, alpha=alpha, out=out)

    def product(xb, c, bias, out, alpha=1.0):
        return op(xb if alpha == 1.0 else xb * alpha, c, bias, "none", [], "")

    return product


def _top_candidates(aff, kc):
    """(values, columns) of the kc largest entries of each row of `aff` (rows × m).

    The columns are cut into g strided groups (column ≡ r mod m/g). The kc largest entries of
    a row lie in the kc groups with the largest maxima (a group holding one of them has a
    maximum at least as large, and fewer than kc groups can rank above it), so one max over the
    groups, a top-k over m/g group maxima and one over the kc·g members of the chosen groups
    give the same values as a top-k over all m, at the cost of about one pass over the block."""
    rows, m = aff.shape
    g = CANDIDATE_GROUPS
    while g > 1 and (m % g or m // g < 4 * kc):
        g //= 2
    if g == 1:
        return aff.topk(kc, dim=1)
    groups = m // g
    _, top = aff.view(rows, g, groups).amax(1).topk(kc, dim=1)
    offsets = groups * torch.arange(g, device=aff.device)
    members = (top[:, None, :] + offsets[:, None]).reshape(rows, g * kc)
    val, pos = aff.gather(1, members).topk(kc, dim=1)
    return val, members.gather(1, pos)


def nearest(
    x: torch.Tensor,
    centres: torch.Tensor,
    k: int = 2,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    refine: int = 4,
    scale: float = 1.0,
    half_sq: torch.Tensor | None = None,
):
    """Exact k nearest of the scaled centres s c_μ (s = `scale` > 0) to each row of x:
    (distances (batch, k) unsquared, float64; indices).

    Candidates come from the expanded form in the input dtype (top k + `refine` per row of the
    affinity x·c − (s/2)‖c‖², which orders the centres as −‖x − s c‖² does, kept across chunks);
    their distances to s c are then recomputed in float64 by direct differences and re-sorted,
    so ties and round-off of the expansion cannot swap the order. `half_sq` = ½‖c_μ‖² may be
    passed precomputed (it does not depend on s). Per block of rows: one matrix product with a
    fused bias per chunk of centres, a grouped top-k (`_top_candidates`) and a merge with the
    running candidates; then the refinement, in cache-sized sub-blocks of rows, gathering only
    the candidates' rows of the centres."""
    if not scale > 0:
        raise ValueError(f"nearest: scale must be > 0, got {scale}")
    x, centres = x.contiguous(), centres.contiguous()
    batch, d = x.shape
    n = centres.shape[0]
    k = min(k, n)
    kc = min(n, k + refine)
    if half_sq is None:
        half_sq = half_sq_norms(centres)
    bias = half_sq.to(x.dtype) * (-scale)
    affinity = _product_fn(x)
    bs, cs = block_sizes(batch, n, budget_bytes, x.element_size(), 2, x.device.type)
    block = torch.empty(min(bs, batch) * min(cs, n), dtype=x.dtype, device=x.device)
    # float64 gathered rows (plus their float32 copy) per refinement sub-block
    rows_cap = max(1, budget_bytes // (12 * kc * d))
    if x.device.type == "cpu":
        rows_cap = min(rows_cap, max(1, REFINE_ENTRIES // (kc * d)))
    dist = torch.empty(batch, k, dtype=torch.float64, device=x.device)
    index = torch.empty(batch, k, dtype=torch.long, device=x.device)
    for i in range(0, batch, bs):
        xb = x[i : i + bs]
        b = xb.shape[0]
        for j in range(0, n, cs):
            c = centres[j : j + cs]
            out = block[: b * c.shape[0]].view(b, c.shape[0])
            val, idx = _top_candidates(affinity(xb, c, bias[j : j + cs], out), min(kc, len(c)))
            if j == 0:
                best_val, best_idx = val, idx
            else:
                best_val = torch.cat([best_val, val], 1)
                best_val, keep = best_val.topk(min(kc, best_val.shape[1]), dim=1)
                best_idx = torch.cat([best_idx, idx + j], 1).gather(1, keep)
        d_exact = torch.empty(b, kc, dtype=torch.float64, device=x.device)
        for r in range(0, b, rows_cap):
            diff = centres[best_idx[r : r + rows_cap]].to(torch.float64)  # (rows, kc, d)
            if scale != 1.0:
                diff.mul_(scale)
            diff.sub_(xb[r : r + rows_cap, None, :])
            torch.linalg.vector_norm(diff, dim=-1, out=d_exact[r : r + rows_cap])
        d_exact, order = d_exact.sort(dim=1, stable=True)
        dist[i : i + b] = d_exact[:, :k]
        index[i : i + b] = best_idx.gather(1, order)[:, :k]
    return dist, index
