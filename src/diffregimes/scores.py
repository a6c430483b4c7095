"""Score functions s(x, t) = ∇ log P_t(x) of the OU process (SCIENCE.md §2).

A score is any callable ``score(x, t) -> tensor`` with x of shape (batch, d) and t a float OU
time; samplers only ever call that. Population scores know the law exactly; the empirical score
is that of the training set itself, the exact minimiser of the score-matching loss on finite
data, which memorises.
"""

from __future__ import annotations

import math

import torch

from .neighbours import DEFAULT_BUDGET_BYTES, SoftmaxKernel
from .process import blurred_variance, delta
from .samplers import normal_noise

LOG_2PI = math.log(2 * math.pi)


class GMMScore:
    """Two-cluster mixture P_0 = ½N(m, σ²I) + ½N(−m, σ²I) (the paper's §"Gaussian mixture").

    With Γ_t = Δ_t + σ² e^{−2t}: P_t = ½N(m e^{−t}, Γ_t I) + ½N(−m e^{−t}, Γ_t I) and
    s(x, t) = [−x + m e^{−t} tanh(e^{−t} m·x / Γ_t)] / Γ_t."""

    def __init__(self, m: torch.Tensor, sigma: float):
        self.m = m
        self.sigma = float(sigma)

    def gamma(self, t: float) -> float:
        return blurred_variance(t, self.sigma)

    def _field(self, x, t):
        return math.exp(-t) * (x @ self.m) / self.gamma(t)  # e^{−t} m·x / Γ_t

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        g = self.gamma(t)
        # one (batch, d) pass for the rank-one term, one for −x, one for 1/Γ_t
        pull = torch.tanh(self._field(x, t)) * math.exp(-t)
        return torch.outer(pull, self.m).sub_(x).div_(g)

    def euler_maruyama_step(self, x, t, t_next, generator, last):
        """One Euler–Maruyama step of the reverse SDE with this score, fused: the drift
        x + 2s is affine in x plus a rank-one term, so with h = t − t_next
        x' = (1 + h − 2h/Γ_t) x + (2h e^{−t}/Γ_t) tanh(e^{−t} m·x/Γ_t) m + √(2h) ξ
        takes three passes over the batch instead of seven (the step is memory-bound at large
        d). The noise is the same draw as `samplers.euler_maruyama`'s."""
        h, g, c = t - t_next, self.gamma(t), math.exp(-t)
        pull = torch.tanh(self._field(x, t)) * (2 * h * c / g)
        if last:
            out = x * (1 + h - 2 * h / g)
        else:
            out = normal_noise(x, generator, math.sqrt(2 * h))
            out.add_(x, alpha=1 + h - 2 * h / g)
        return out.addr_(pull, self.m.to(x.dtype))

    def class_posterior(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """p_+(x) = ½[1 + tanh(e^{−t} m·x / Γ_t)]."""
        return 0.5 * (1 + torch.tanh(self._field(x, t)))

    def log_density(self, x: torch.Tensor, t: float) -> torch.Tensor:
        g, d = self.gamma(t), x.shape[1]
        c = self.m * math.exp(-t)
        quad = ((x * x).sum(1) + (c * c).sum()) / (2 * g)
        # log ½(e^{u} + e^{−u}) = logcosh(u), u = x·c/Γ
        u = (x @ c) / g
        logcosh = u.abs() + torch.log1p(torch.exp(-2 * u.abs())) - math.log(2)
        return -quad + logcosh - 0.5 * d * (LOG_2PI + math.log(g))


class GaussianScore:
    """N(μ, C): s(x, t) = −(e^{−2t} C + Δ_t I)^{−1} (x − μ e^{−t}), through C's eigenbasis."""

    def __init__(self, mean: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor):
        self.mean, self.eigvals, self.eigvecs = mean, eigvals, eigvecs

    @classmethod
    def from_covariance(cls, mean: torch.Tensor, cov: torch.Tensor) -> GaussianScore:
        lam, vec = torch.linalg.eigh(cov)
        return cls(mean, lam.clamp_min(0), vec)

    def _variances(self, t):
        return math.exp(-2 * t) * self.eigvals + delta(float(t))

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        y = (x - self.mean * math.exp(-t)) @ self.eigvecs
        return -(y / self._variances(t)) @ self.eigvecs.T

    def log_density(self, x: torch.Tensor, t: float) -> torch.Tensor:
        v = self._variances(t)
        y = (x - self.mean * math.exp(-t)) @ self.eigvecs
        return -0.5 * ((y * y / v).sum(1) + torch.log(v).sum() + x.shape[1] * LOG_2PI)


class EmpiricalScore:
    """Score of P_t^e(x) = (1/n) Σ_μ N(x; a^μ e^{−t}, Δ_t I), the paper's eq. (3):

    s^e(x, t) = (Σ_μ w_μ a^μ e^{−t} − x)/Δ_t, w = softmax_μ(−‖x − a^μ e^{−t}‖²/(2Δ_t)).

    With `blur` = σ_s > 0 it is the smoothed empirical score (SCIENCE.md §7): the exact score of
    the training set blurred by N(0, σ_s² I), P_t = (1/n) Σ_μ N(a^μ e^{−t}, Γ_t I) with
    Γ_t = Δ_t + σ_s² e^{−2t} in place of Δ_t (σ_s = 0: the empirical score).

    Chunked over n and over the batch by `neighbours.SoftmaxKernel`, so memory stays within
    `budget_bytes` whatever n is, and the softmax never overflows at small Δ_t."""

    def __init__(
        self, train: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES, blur: float = 0.0
    ):
        self.train = train
        self.budget_bytes = budget_bytes
        self.blur = float(blur)
        self.kernel = SoftmaxKernel(train, budget_bytes)  # holds ½‖a^μ‖², reused at every t

    def variance(self, t: float) -> float:
        """Γ_t = Δ_t + σ_s² e^{−2t}: the variance of each blurred training point at time t."""
        return blurred_variance(t, self.blur)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        var = self.variance(t)
        mean = self.kernel.mean(x, var, math.exp(-t))  # in the dtype of x, as log_density
        return (mean - x) / var

    def log_density(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """log P_t^e(x), in the dtype of x (pass float64 for the excess entropy)."""
        var, n, d = self.variance(t), self.train.shape[0], x.shape[1]
        lse = self.kernel.log_partition(x, var, math.exp(-t))
        return lse - math.log(n) - 0.5 * d * (LOG_2PI + math.log(var))


class LocalScore:
    """The local (LS) patch score of Kamb & Ganguli (ICML 2025), SCIENCE.md §7, for images.

    Each pixel's clean value is the posterior mean, over the training images, of that pixel
    given only the P×P patch around it (zero padding at the border; all channels), the
    patches compared at the same position (position-locked, no equivariance):
    x̂₀(l) = Σ_μ w_μ(l) a^μ(l), w(l) = softmax_μ(−‖x_P(l) − a^μ_P(l) e^{−t}‖²/(2Δ_t)), and
    s(x, t) = (e^{−t} x̂₀ − x)/Δ_t (Tweedie). A patch covering the whole image from every pixel
    (P ≥ 2·side − 1) is the empirical score. Memory: (positions × queries × training images)
    logits and the unfolded training patches in blocks of queries and of training images
    within `budget_bytes` (online softmax); the training images themselves are kept once.

    `equivariant` (ELS): the patch of a pixel is compared with the training patches at every
    position, not only its own (the chunked `SoftmaxKernel.mean` over all n·side² training patches,
    kept unfolded: n·d·P² floats); each call costs side² times the LS one."""

    def __init__(
        self,
        train: torch.Tensor,
        shape,
        patch: int,
        budget_bytes=DEFAULT_BUDGET_BYTES,
        equivariant: bool = False,
    ):
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"the local score's patch must be odd and ≥ 1, got {patch}")
        self.shape, self.patch, self.budget_bytes = (
            tuple(int(s) for s in shape),
            patch,
            budget_bytes,
        )
        self.equivariant = equivariant
        c, side, _ = self.shape
        n = train.shape[0]
        self.images = train.reshape(n, c, side, side)
        self.centre = self.images.reshape(n, c, side * side).permute(2, 0, 1).contiguous()
        if equivariant:  # every training patch at every position: n·d·P² floats, kept
            flat = self._patches(self.images)  # (L, n, C·P²)
            self.flat = flat.reshape(-1, flat.shape[-1])
            self.kernel = SoftmaxKernel(self.flat, budget_bytes)
            # a pixel's value is the centre of the posterior-mean patch (channel-major order)
            self.centre_index = [ch * patch * patch + patch * patch // 2 for ch in range(c)]

    def _patches(self, images):
        """(positions L, images, C·P²): the zero-padded patch around every pixel."""
        out = torch.nn.functional.unfold(images, self.patch, padding=self.patch // 2)
        return out.permute(2, 0, 1)

    def denoised(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x̂₀ = E[x₀ pixel | its patch of x_t], flattened like x."""
        c, side, _ = self.shape
        dt, scale = delta(float(t)), math.exp(-t)
        if self.equivariant:
            return self._denoised_equivariant(x, dt, scale)
        centre = self.centre.to(x.dtype)
        positions, n, _ = centre.shape
        k = c * self.patch**2
        # a block of logits is positions × rows × cols floats (and two temporaries like it);
        # the training patches are unfolded per block of cols images (never all n·d·P² at once)
        cap = max(1, self.budget_bytes // (3 * x.element_size() * positions))
        cols = min(n, cap, max(1, self.budget_bytes // (3 * x.element_size() * positions * k)))
        rows = max(1, cap // cols)
        batch = x.shape[0]
        # online softmax over blocks of training images, each unfolded once per call:
        # running maximum m, normaliser and weighted sum per (position, query)
        m = torch.full((positions, batch, 1), -math.inf, dtype=x.dtype, device=x.device)
        total = torch.zeros_like(m)
        acc = torch.zeros(positions, batch, c, dtype=x.dtype, device=x.device)
        queries = [
            (i, self._patches(x[i : i + rows].reshape(-1, c, side, side)))
            for i in range(0, batch, rows)
        ]
        for j in range(0, n, cols):
            patches = self._patches(self.images[j : j + cols].to(x.dtype))  # (L, cols, K)
            bias = (0.5 * (patches * patches).sum(-1) * (-(scale**2) / dt))[:, None, :]
            for i, xp in queries:
                # −‖x − s a‖²/(2Δ) up to the per-row −‖x‖²/(2Δ), which cancels in the softmax
                logits = torch.baddbmm(bias, xp, patches.transpose(1, 2), alpha=scale / dt)
                rows_i = slice(i, i + xp.shape[1])
                m_old = m[:, rows_i]
                m_new = torch.maximum(m_old, logits.amax(-1, keepdim=True))
                p = logits.sub_(m_new).exp_()  # in place: the block is the cost
                r = torch.exp(m_old - m_new)
                total[:, rows_i] = total[:, rows_i] * r + p.sum(-1, keepdim=True)
                acc[:, rows_i] = acc[:, rows_i] * r + p @ centre[:, j : j + cols]
                m[:, rows_i] = m_new
        out = acc / total
        return out.permute(1, 2, 0).reshape(x.shape[0], -1)  # (B, C, L) → flattened C, side, side

    def _denoised_equivariant(self, x, dt, scale):
        c, side, _ = self.shape
        positions, k = side * side, self.flat.shape[1]
        queries = self._patches(x.reshape(-1, c, side, side)).transpose(0, 1).reshape(-1, k)
        mean = self.kernel.mean(queries, dt, scale)  # e^{−t} Σ w a_P
        hat = mean[:, self.centre_index] / scale  # (B·L, C)
        return hat.reshape(x.shape[0], positions, c).transpose(1, 2).reshape(x.shape[0], -1)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return (math.exp(-t) * self.denoised(x, t) - x) / delta(float(t))
