"""Backward samplers as pure functions over any score (SCIENCE.md §1).

Every sampler is a step function ``step(score, x, t, t_next, generator, state, last)`` that maps
the state at OU time t to t_next < t and returns ``(x_next, state)``; `state` carries what a
multistep method remembers. `sample` runs one over a descending grid and saves the states at
chosen indices; `clone` restarts copies of saved states with independent noise (the paper's
cloning protocol for speciation). The noise of the last grid step is dropped (pitfall 1) unless
``noisy_last=True``: a DDPM grid ends at t_1, and Ho et al.'s step t_2 → t_1 is noisy while their
final step t_1 → 0 outputs its mean, which is exactly Tweedie's x̂₀ = `denoised` at t_1; a caller
on a DDPM grid therefore keeps the last step's noise and takes `denoised` of the end state.

In OU time the score relates to the DDPM noise prediction by ε̂ = −√Δ_t s and to the
denoised estimate by x̂₀ = (x + Δ_t s) e^{t} (Tweedie's formula).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable

import torch

from .process import delta

Score = Callable[[torch.Tensor, float], torch.Tensor]


def normal_noise(x: torch.Tensor, generator, std: float = 1.0) -> torch.Tensor:
    """N(0, std²) noise of x's shape, dtype and device from `generator`: a torch generator
    (the same draw as torch.randn · std) or `RowStreams` (block by block). Every stochastic
    step draws through here, the fused ones of a score too (scores.GMMScore)."""
    if isinstance(generator, RowStreams):
        return generator.normal_like(x, std)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return out.normal_(0.0, std, generator=generator)


class RowStreams:
    """The noise of a growing batch whose blocks of rows each draw from a generator of their
    own: block i, rows[i] rows, from generators[i]; a batch holds a prefix of the blocks (the
    ones joined so far). A block's draws then do not depend on which blocks share its batch, so
    how `clone_branches` groups branch times into waves (a memory matter) never changes a
    clone. Has a generator's get_state/set_state, for the replay of a non-finite state."""

    def __init__(self, generators, rows):
        self.generators, self.rows = list(generators), [int(r) for r in rows]

    def normal_like(self, x: torch.Tensor, std: float = 1.0) -> torch.Tensor:
        """N(0, std²) of x's shape, dtype and device, block by block."""
        blocks, total = [], 0
        for g, r in zip(self.generators, self.rows, strict=True):
            if total == x.shape[0]:
                break
            blocks.append(normal_noise(x[total : total + r], g, std))
            total += r
        if total != x.shape[0]:
            raise ValueError(f"a batch of {x.shape[0]} rows is no prefix of the blocks {self.rows}")
        return torch.cat(blocks)

    def get_state(self):
        return [g.get_state() for g in self.generators]

    def set_state(self, states):
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s)


def branch_generators(generator: torch.Generator | None, keys) -> dict:
    """One generator per branch time, seeded from `generator` (on its device) in the order of
    `keys`: the streams of `clone_branches`."""
    keys = sorted(keys)
    device = "cpu" if generator is None else generator.device
    seeds = torch.randint(2**62, (len(keys),), generator=generator, device=device).tolist()
    return {
        k: torch.Generator(device=device).manual_seed(s) for k, s in zip(keys, seeds, strict=True)
    }


def denoised(score: Score, x: torch.Tensor, t: float) -> torch.Tensor:
    """Tweedie's denoised estimate x̂₀ = E[x₀ | x_t = x] = (x + Δ_t s(x, t)) e^{t}.

    At the last time t_1 of a DDPM grid this is Ho et al.'s final step x_1 → x_0 (the mean of
    eq. (7) with ᾱ_0 = 1, output without noise)."""
    return (x + delta(t) * score(x, t)) * math.exp(t)


def euler_maruyama(score, x, t, t_next, generator, state, last):
    """Euler–Maruyama on the reverse SDE −dx = [x + 2 s(x, t)] dt + dB (the paper's eq. 2):

    x_{t−h} = x_t + h [x_t + 2 s(x_t, t)] + √(2h) ξ."""
    fused = getattr(score, "euler_maruyama_step", None)
    if fused is not None:  # a score that fuses the step (scores.GMMScore)
        return fused(x, t, t_next, generator, last), state
    h = t - t_next
    # In place on one new tensor: a step at large (batch, d) is memory-bound, and each
    # temporary is a pass over the batch.
    x_next = torch.add(x, score(x, t), alpha=2 * h).add_(x, alpha=h)
    if not last:
        x_next.add_(normal_noise(x, generator), alpha=math.sqrt(2 * h))
    return x_next, state


def _ddpm_mean(score, x, t, t_next):
    """The posterior mean of q(x_{t'} | x_t, x̂₀) and the step's β = 1 − ᾱ/ᾱ'."""
    d_t, d_next = delta(t), delta(t_next)
    beta = -math.expm1(-2 * (t - t_next))
    x0 = denoised(score, x, t)
    mean = math.exp(-t_next) * beta / d_t * x0 + math.exp(-(t - t_next)) * d_next / d_t * x
    return mean, beta, d_t, d_next


def ddpm_ancestral(score, x, t, t_next, generator, state, last):
    """Ancestral sampling of Ho, Jain & Abbeel 2020 (Algorithm 2) with their σ_t² = β_t
    (§3.2), the authors' choice: the mean of the posterior q(x_{t'} | x_t, x̂₀) of eqs. (6)–(7)
    with ᾱ = e^{−2t}, ᾱ' = e^{−2t'} and the step's β = 1 − ᾱ/ᾱ':

    mean = √ᾱ' β/(1 − ᾱ) x̂₀ + √(ᾱ/ᾱ') (1 − ᾱ')/(1 − ᾱ) x_t
         = (x_t − β/√(1 − ᾱ) ε̂)/√(1 − β),  var = β."""
    mean, beta, _, _ = _ddpm_mean(score, x, t, t_next)
    if last:
        return mean, state
    return mean + math.sqrt(beta) * normal_noise(x, generator), state


def ddpm_posterior(score, x, t, t_next, generator, state, last):
    """Ancestral sampling of Ho, Jain & Abbeel 2020 with the posterior variance σ_t² = β̃_t
    (§3.2, eq. 7): the same mean as `ddpm_ancestral`, and

    var = β̃ = β (1 − ᾱ')/(1 − ᾱ),  β = 1 − ᾱ/ᾱ', ᾱ = e^{−2t}, ᾱ' = e^{−2t'}.

    β̃ < β shrinks low-variance directions (SCIENCE.md pitfall 6): for N(0, 0.1²) with its exact
    score on the 1000-step linear schedule, Var(x̂₀) comes out 7 % small (+1.5 % with β)."""
    mean, beta, d_t, d_next = _ddpm_mean(score, x, t, t_next)
    if last:
        return mean, state
    return mean + math.sqrt(beta * d_next / d_t) * normal_noise(x, generator), state


def ddim(score, x, t, t_next, generator, state, last):
    """Deterministic DDIM, η = 0 (Song, Meng & Ermon 2021, eq. 12):

    x_{t'} = √ᾱ' x̂₀ + √(1 − ᾱ') ε̂, with ε̂ = −√Δ_t s(x, t)."""
    s = score(x, t)
    x0 = (x + delta(t) * s) * math.exp(t)
    eps = -math.sqrt(delta(t)) * s
    return math.exp(-t_next) * x0 + math.sqrt(delta(t_next)) * eps, state


def heun(score, x, t, t_next, generator, state, last):
    """Heun's second-order method on the probability-flow ODE −dx = [x + s(x, t)] dt
    (Song et al. 2021, eq. 13, in OU form; Karras et al. 2022, Algorithm 1)."""
    h = t - t_next
    f = x + score(x, t)
    x_pred = x + h * f
    return x + 0.5 * h * (f + x_pred + score(x_pred, t_next)), state


def dpm_solver_2m(score, x, t, t_next, generator, state, last):
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv 2211.01095), Algorithm 2, data prediction.

    With α_t = e^{−t}, σ_t = √Δ_t, λ = log(α/σ) and h = λ' − λ:
    x' = (σ'/σ) x − α' (e^{−h} − 1) D, D = x̂₀ on the first step, else
    D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_prev with r = h_prev/h."""
    sig, sig_next = math.sqrt(delta(t)), math.sqrt(delta(t_next))
    lam, lam_next = -t - math.log(sig), -t_next - math.log(sig_next)
    h = lam_next - lam
    x0 = denoised(score, x, t)
    if state is None:
        dd = x0
    else:
        x0_prev, h_prev = state
        r = h_prev / h
        dd = (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)
    x_next = (sig_next / sig) * x - math.exp(-t_next) * math.expm1(-h) * dd
    return x_next, (x0, h)


SAMPLERS = {
    "euler_maruyama": euler_maruyama,
    "ddpm": ddpm_ancestral,
    "ddpm_posterior": ddpm_posterior,
    "ddim": ddim,
    "heun": heun,
    "dpm_solver_2m": dpm_solver_2m,
}
STOCHASTIC = {"euler_maruyama", "ddpm", "ddpm_posterior"}


def prior_sample(batch: int, d: int, generator=None, dtype=torch.float32, device="cpu"):
    """x_T ~ N(0, I), the stationary law of the OU process."""
    return torch.randn(batch, d, generator=generator, dtype=dtype, device=device)


def sample(
    score: Score,
    x: torch.Tensor,
    times,
    sampler: str = "euler_maruyama",
    generator: torch.Generator | None = None,
    save_idx=None,
    callback: Callable[[int], None] | None = None,
    check_every: int | None = None,
    noisy_last: bool = False,
    observe: Callable[[int, torch.Tensor], None] | None = None,
    join: dict[int, torch.Tensor] | None = None,
):
    """Integrate from x at times[0] down the descending grid `times` to times[-1].

    With `join`, the rows join[k] are appended to the batch when it reaches grid index k
    (before the step from times[k]): one growing batch for runs that start at other times
    (the clones of every branch time, `clone_branches`). Only for samplers without state.

    Returns the final state and, if `save_idx` is given, a float32 CPU tensor
    (len(save_idx), batch, d) of the states at those grid indices. With `observe`, the states
    at `save_idx` go to `observe(index, state)` instead (nothing is kept here): the caller
    keeps what it needs, or branches clones from it, while the run waits.

    The last step adds no noise (pitfall 1) unless `noisy_last`: on a DDPM grid, whose last
    time t_1 is one DDPM step above 0, Ho et al.'s step t_2 → t_1 is noisy and their final step
    is x̂₀, so such callers pass ``noisy_last=True`` and take `denoised` of the end state.

    A NaN or inf in the state (from the score or the step) stops the run with
    FloatingPointError naming the first step where it appeared and its times. The state is
    tested every `check_every` steps (default 8 on the CPU, 32 on a GPU, where a test waits for
    the device), at every saved index and at the end, by one float64 sum (finite exactly when
    every entry is); a failed test replays the steps since the last finite state, from the same
    generator state (taken after `observe`, which may draw from it), to find the first bad one.
    The test costs < 1 % of a sampling step on the CPU."""
    step = SAMPLERS[sampler]
    times = [float(t) for t in times]
    join = {int(k): v for k, v in (join or {}).items()}
    if join and sampler not in STOCHASTIC:
        raise ValueError(f"rows can join only a run without state {sorted(STOCHASTIC)}")
    saved, where = [], set() if save_idx is None else {int(i) for i in save_idx}
    if check_every is None:
        check_every = 8 if x.device.type == "cpu" else 32
    state = None

    def keep(k, x):
        if observe is None:
            saved.append(x.float().cpu())
        else:
            observe(k, x)

    if 0 in where:
        keep(0, x)
    finite = (0, x, state, _rng_state(generator))  # the last state known to be finite
    for k in range(len(times) - 1):
        last = k == len(times) - 2
        if k in join:
            x = torch.cat([x, join[k]])
        x, state = step(score, x, times[k], times[k + 1], generator, state, last and not noisy_last)
        if (k + 1) % check_every == 0 or last or k + 1 in where:
            if not _is_finite(x):
                raise _locate(score, sampler, times, finite, generator, k + 1, noisy_last, join)
            if k + 1 in where:
                keep(k + 1, x)
            finite = (k + 1, x, state, _rng_state(generator))
        if callback is not None:
            callback(k + 1)
    if len(times) - 1 in join:  # rows that join at the end have no step left
        x = torch.cat([x, join[len(times) - 1]])
    if observe is not None:
        return x, None
    traj = torch.stack(saved) if saved else None
    return x, traj


def _is_finite(x: torch.Tensor) -> bool:
    """Every entry finite: a float64 sum of float32 values cannot overflow, and NaN or ±inf in
    any entry makes it NaN or ±inf. One reduction, no boolean tensor."""
    return math.isfinite(float(x.sum(dtype=torch.float64)))


def _rng_state(generator):
    return None if generator is None else generator.get_state()


class NonFiniteState(FloatingPointError):
    """NaN or inf in a sampler's state: the message names the step and its times; `row` is
    the first row of the batch that is not finite (None where the replay stayed finite)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def _locate(score, sampler, times, finite, generator, upto, noisy_last=False, join=None):
    """Replay the steps after the last finite state to the step where NaN/inf first appears,
    drawing the same noise as `sample` did (the last step's only if `noisy_last`), with the
    same rows joining; returns a NonFiniteState naming the step and the first bad row."""
    k0, x, state, rng = finite
    if rng is not None:
        generator.set_state(rng)
    for k in range(k0, upto):
        last = k == len(times) - 2 and not noisy_last
        if join and k in join:
            x = torch.cat([x, join[k]])
        x, state = SAMPLERS[sampler](score, x, times[k], times[k + 1], generator, state, last)
        if not _is_finite(x):
            row = int(torch.nonzero(~torch.isfinite(x).all(1))[0, 0])
            return NonFiniteState(
                f"sampler {sampler!r} produced NaN/inf at step {k + 1} of {len(times) - 1} "
                f"(t = {times[k]:.6g} → {times[k + 1]:.6g})",
                row,
            )
    return NonFiniteState(  # the replay stayed finite (a score that is not reproducible)
        f"sampler {sampler!r} produced NaN/inf between steps {k0 + 1} and {upto} of "
        f"{len(times) - 1} (t = {times[k0]:.6g} → {times[upto]:.6g})"
    )


def clone(
    score: Score,
    start: torch.Tensor,
    times,
    start_index: int,
    sampler: str = "euler_maruyama",
    generator: torch.Generator | None = None,
    copies: int = 2,
    callback=None,
    noisy_last: bool = False,
):
    """Cloning (the paper's §"Speciation"): copies of each state `start` (pairs, d) taken at
    times[start_index] continue to times[-1] with independent noise.

    Returns (copies, pairs, d). A deterministic sampler would give identical copies, so
    callers must pass a stochastic one (see `STOCHASTIC`). `noisy_last` as in `sample`."""
    if sampler not in STOCHASTIC:
        raise ValueError(
            f"cloning needs a stochastic sampler ({sorted(STOCHASTIC)}), not {sampler}"
        )
    pairs = start.shape[0]
    x = start.repeat(copies, 1)
    end, _ = sample(
        score,
        x,
        times[start_index:],
        sampler,
        generator,
        callback=callback,
        noisy_last=noisy_last,
    )
    return end.reshape(copies, pairs, -1)


def clone_branches(
    score: Score,
    starts: dict[int, torch.Tensor],
    times,
    sampler: str = "euler_maruyama",
    generator: torch.Generator | None = None,
    copies: int = 2,
    callback=None,
    noisy_last: bool = False,
    max_rows: int | None = None,
):
    """The clones of every branch time as one growing batch: `starts[k]` (pairs, d), the
    states at grid index k, continue as `copies` copies each to times[-1], the copies of a
    later branch time joining the batch when it gets there (`sample`'s `join`). The same
    integration steps as `clone` per branch time, in far fewer and larger score calls.

    Every branch time draws its noise from its own generator (`branch_generators`, seeded
    from `generator`; `RowStreams`), so a clone is the `clone` run from its start with its
    branch's generator, to the round-off of a batched score, whatever shares its batch.

    Branch times go in waves of consecutive ones whose rows sum to at most `max_rows` (at
    least one branch time a wave; None: one wave): the waves bound memory and change no
    clone. Yields (k, ends (copies, pairs, d)) as each
    wave ends, so a caller holds one wave's ends at a time. A NaN or
    inf raises NonFiniteState whose message ends with the branch time of the first bad row.
    `callback(m)` after each step: m, the branch times that step advanced."""
    if sampler not in STOCHASTIC:
        raise ValueError(
            f"cloning needs a stochastic sampler ({sorted(STOCHASTIC)}), not {sampler}"
        )
    times = [float(t) for t in times]
    sizes = {k: copies * starts[k].shape[0] for k in sorted(starts)}  # a branch's rows
    streams = branch_generators(generator, sizes)
    waves, rows = [], 0
    for k, size in sizes.items():
        if not waves or (max_rows is not None and rows + size > max_rows):
            waves.append([])
            rows = 0
        waves[-1].append(k)
        rows += size
    for wave in waves:
        k0 = wave[0]
        # the step to grid index j advances the branches joined at indices < j
        ticks = None if callback is None else functools.partial(_ticks, callback, wave, k0)
        first, *rest = (starts[k].repeat(copies, 1) for k in wave)
        join = {k - k0: x for k, x in zip(wave[1:], rest, strict=True)}
        try:
            end, _ = sample(
                score,
                first,
                times[k0:],
                sampler,
                RowStreams([streams[k] for k in wave], [sizes[k] for k in wave]),
                callback=ticks,
                noisy_last=noisy_last,
                join=join,
            )
        except NonFiniteState as err:
            if err.row is None:
                raise
            edges = torch.tensor([sizes[k] for k in wave]).cumsum(0)
            k = wave[int(torch.searchsorted(edges, err.row, right=True))]
            raise NonFiniteState(f"{err} in the clones branched at t = {times[k]:.6g}") from err
        for k, rows_k in zip(wave, end.split([sizes[k] for k in wave]), strict=True):
            yield k, rows_k.reshape(copies, starts[k].shape[0], -1)


def _ticks(callback, wave, k0, j):
    """Report the branch times advanced by the clones' step to grid index k0 + j."""
    callback(bisect.bisect_left(wave, k0 + j))
